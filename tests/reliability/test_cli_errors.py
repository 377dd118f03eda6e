"""patch / status / revert with input a user gets wrong: one line, the documented exit code, nothing changed."""
import json

import pytest

from porter.testing import run_porter, tree_digest


def porter(site, *args, env, **kw):
    return run_porter(*args, env=env, site_packages=site, **kw)


@pytest.mark.parametrize("command", ["status", "revert", "patch toylib", "verify toylib", "scan toylib"])
@pytest.mark.parametrize("where", ["missing", "a-file"])
def test_a_bad_site_packages_is_exit_6_for_every_command(tmp_path, porter_env, command, where):
    path = tmp_path / where
    if where == "a-file":
        path.write_text("x")
    r = run_porter(*command.split(), "--site-packages", str(path), env=porter_env)
    assert r.returncode == 6, r.stderr
    assert f"--site-packages {path}: no such directory" in r.stderr and "Traceback" not in r.stderr


def test_only_with_no_rule_is_a_usage_error(toylib_site, porter_env):
    before = tree_digest(toylib_site)
    for only in ("", " , "):
        r = porter(toylib_site, "patch", "toylib", "--only", only, env=porter_env)
        assert r.returncode == 2 and "--only names no rule" in r.stderr
    assert tree_digest(toylib_site) == before


def test_only_does_not_silently_swap_a_full_patch(toylib_site, porter_env):
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 0
    patched = tree_digest(toylib_site / "toylib")
    r = porter(toylib_site, "patch", "toylib", "--only", "toylib.backend", env=porter_env)
    assert r.returncode == 4
    assert "toylib is patched with 3 rule(s); --only would replace that patch with 1: toylib.backend" in r.stderr
    assert tree_digest(toylib_site / "toylib") == patched
    r = porter(toylib_site, "patch", "toylib", "--only", "toylib.backend", "--force", env=porter_env)
    assert r.returncode == 0, r.stderr
    journal = json.loads((toylib_site / ".porter-state/toylib/journal.json").read_text())
    assert journal["rules"] == ["toylib.backend"]


def test_a_journal_of_a_target_no_plugin_registers_is_said(toylib_site, porter_env):
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 0
    without_plugin = {"PORTER_PLUGINS": ""}
    r = porter(toylib_site, "status", env=without_plugin)
    assert r.returncode == 0 and "toylib: unknown" in r.stdout and "no loaded plugin registers that target" in r.stdout
    r = porter(toylib_site, "revert", env=without_plugin)
    assert r.returncode == 4 and "not reverted:" in r.stderr and "enable its plugin" in r.stderr
    r = porter(toylib_site, "revert", "toylib", env=without_plugin)
    assert r.returncode == 6 and "holds a patch of 'toylib', but no loaded plugin registers that target" in r.stderr
    assert (toylib_site / ".porter-state/toylib/journal.json").is_file()


def test_a_syntax_error_in_a_target_file_names_its_real_line(toylib_site, porter_env):
    timer = toylib_site / "toylib" / "timer.py"
    lines = timer.read_text().splitlines()
    lines[5] = "def device_synchronize(:"
    timer.write_text("\n".join(lines) + "\n")
    r = porter(toylib_site, "patch", "toylib", "--dry-run", env=porter_env)
    assert r.returncode == 3
    assert "toylib/timer.py:6: cannot parse (invalid syntax)" in r.stderr, r.stderr
    assert not (toylib_site / ".porter-state").exists()


def test_patch_report_without_dry_run_patches_and_help_says_so(toylib_site, porter_env, tmp_path):
    def help_text(*command):  # argparse wraps lines: compare words
        return " ".join(run_porter(*command, "--help", env=porter_env).stdout.split())

    assert "it patches too unless --dry-run is given" in help_text("patch")
    for command, verb in (("status", "read"), ("revert", "revert"), ("verify", "verify"), ("scan", "scan")):
        assert f"{verb} the copy installed in DIR (a site-packages folder)" in help_text(command)
    r = porter(toylib_site, "patch", "toylib", "--report", str(tmp_path / "plan.json"), env=porter_env)
    assert r.returncode == 0 and json.loads((tmp_path / "plan.json").read_text())["rules"]
    assert (toylib_site / ".porter-state/toylib/journal.json").is_file()  # --report alone patched
