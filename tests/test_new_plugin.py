"""`porter new-plugin`: the scaffolded packages install with `pip install -e`, register through the entry-point
group, and pass their own tests at once; the model recipe runs, the target rule patches and reverts."""
import subprocess
import sys

import pytest
import throwaway_env

from porter.scaffold import scaffold
from porter.testing import make_distribution, tree_digest


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Both scaffolds installed editable, as `pip install -e` installs them, into a throwaway environment that
    sees this one's packages: nothing is installed into the test's own environment."""
    root = tmp_path_factory.mktemp("plugins")
    made = {kind: scaffold(name, kind, root) for kind, name in (("target", "mylib"), ("model", "tiny-net"))}
    bin_dir = throwaway_env.make(root / "venv")
    r = subprocess.run([str(bin_dir / "pip"), "install", "-q", "-e", str(made["target"]), "-e", str(made["model"])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return bin_dir / "python", made


def porter_in(python, *args, **kw):
    return subprocess.run([str(python), "-m", "porter.cli", *map(str, args)], capture_output=True, text=True, **kw)


def test_both_register_through_the_entry_point_group(plugin_env):
    python, _ = plugin_env
    out = porter_in(python, "plugins").stdout
    assert "entry point of porter-mylib" in out and "rules: mylib.device.synchronize" in out
    assert "entry point of porter-tiny-net" in out and "recipes: tiny-net.train" in out


@pytest.mark.parametrize("kind", ["target", "model"])
def test_the_generated_tests_pass_as_generated(plugin_env, kind):
    python, made = plugin_env
    r = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=made[kind],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


def test_the_model_recipe_trains_two_steps(plugin_env):
    python, _ = plugin_env
    r = porter_in(python, "run", "tiny-net", "train", "--steps", "2", env={**__import__("os").environ,
                                                                             "PORTER_DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [line for line in r.stdout.splitlines() if line.startswith("step ")]
    assert "step 2: loss" in r.stdout


def test_the_target_rule_patches_a_fixture_package_and_reverts_byte_for_byte(plugin_env, tmp_path):
    python, _ = plugin_env
    site = make_distribution(tmp_path / "site-packages", "mylib", "1.2", {
        "mylib/__init__.py": "", "mylib/timers.py": "import torch as th\n\ndef wait():\n    th.cuda.synchronize()\n"})
    before = tree_digest(site)
    assert porter_in(python, "patch", "mylib", "--site-packages", site).returncode == 0
    assert "porter_device.synchronize()" in (site / "mylib" / "timers.py").read_text()
    assert porter_in(python, "revert", "--site-packages", site).returncode == 0
    assert tree_digest(site) == before


def test_bad_names_and_taken_folders_are_refused_and_nothing_is_left_behind(tmp_path):
    r = subprocess.run([sys.executable, "-m", "porter.cli", "new-plugin", "My Lib", "--kind", "target", "--dir",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "'My Lib': a plugin name is lower-case" in r.stderr
    scaffold("mylib", "target", tmp_path)
    r = subprocess.run([sys.executable, "-m", "porter.cli", "new-plugin", "mylib", "--kind", "model", "--dir",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "already exists; nothing written" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["porter-mylib"]  # no staging folder left


def test_a_failed_write_leaves_no_half_written_package(tmp_path, monkeypatch):
    import porter.scaffold as s

    real = s.Template.substitute
    calls = {"n": 0}

    def fail_midway(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError("disk full")
        return real(self, *a, **kw)

    monkeypatch.setattr(s.Template, "substitute", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        scaffold("mylib", "target", tmp_path)
    assert list(tmp_path.iterdir()) == []
