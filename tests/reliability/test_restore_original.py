"""`porter restore-original`: files changed after install come back from the release's wheel, each checked against
RECORD first; on the toylib fixture (a wheel built here) and on a copy of the real SAT (its wheel from pip)."""
import json
import zipfile

import pytest

from porter.testing import run_porter, tree_digest

RECIPE_FILES = ["sat/model/official/chatglm_model.py", "sat/model/official/glm130B_model.py",
                "sat/model/position_embedding/rotary_embeddings.py"]


def build_wheel(site, dest, edits=None):
    """A toylib wheel made of the installed files (and ``edits``), named as pip expects."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / "toylib-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in sorted(site.rglob("*")):
            rel = path.relative_to(site).as_posix()
            if path.is_file() and (rel.startswith("toylib/") or rel.startswith("toylib-1.0.dist-info/")):
                archive.writestr(rel, (edits or {}).get(rel, path.read_bytes()))
        archive.writestr("toylib-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: porter-tests\n"
                                                       "Root-Is-Purelib: true\nTag: py3-none-any\n")
    return wheel


def test_changed_and_missing_files_come_back_from_the_wheel(toylib_site, porter_env, tmp_path):
    pristine = tree_digest(toylib_site / "toylib")
    wheel = build_wheel(toylib_site, tmp_path / "wheels")
    (toylib_site / "toylib" / "dist.py").write_text("BACKEND = 'hccl'  # the old recipe's copy\n")
    (toylib_site / "toylib" / "timer.py").unlink()
    r = run_porter("restore-original", "toylib", "--dry-run", env=porter_env, site_packages=toylib_site)
    assert r.returncode == 0 and "2 file(s) differ from toylib's RECORD" in r.stdout
    assert "toylib/dist.py" in r.stdout and "changed" in r.stdout and "missing" in r.stdout
    r = run_porter("restore-original", "toylib", "--wheel", str(wheel), env=porter_env, site_packages=toylib_site)
    assert r.returncode == 0, r.stderr
    assert "restored 2 file(s) from the release's wheel" in r.stdout
    assert tree_digest(toylib_site / "toylib") == pristine
    r = run_porter("status", "toylib", "--json", env=porter_env, site_packages=toylib_site)
    assert json.loads(r.stdout)[0]["changed_since_install"] == []


def test_a_wheel_of_another_release_is_refused_before_writing(toylib_site, porter_env, tmp_path):
    other = build_wheel(toylib_site, tmp_path / "wheels", {"toylib/dist.py": b"BACKEND = 'nccl'  # 2.0\n"})
    (toylib_site / "toylib" / "dist.py").write_text("BACKEND = 'hccl'\n")
    edited = tree_digest(toylib_site / "toylib")
    r = run_porter("restore-original", "toylib", "--wheel", str(other), env=porter_env, site_packages=toylib_site)
    assert r.returncode == 4 and "toylib/dist.py do(es) not match the sha256 in toylib's RECORD" in r.stderr
    assert tree_digest(toylib_site / "toylib") == edited


def test_a_patched_install_is_refused(toylib_site, porter_env, tmp_path):
    wheel = build_wheel(toylib_site, tmp_path / "wheels")
    assert run_porter("patch", "toylib", env=porter_env, site_packages=toylib_site).returncode == 0
    r = run_porter("restore-original", "toylib", "--wheel", str(wheel), env=porter_env, site_packages=toylib_site)
    assert r.returncode == 4 and "toylib is patched" in r.stderr and "porter revert toylib" in r.stderr


def test_pip_downloads_the_wheel_when_none_is_named(toylib_site, porter_env, tmp_path):
    pristine = tree_digest(toylib_site / "toylib")
    wheels = tmp_path / "index"
    build_wheel(toylib_site, wheels)
    (toylib_site / "toylib" / "dist.py").write_text("BACKEND = 'hccl'\n")
    env = {**porter_env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}  # a local index: no network needed
    r = run_porter("restore-original", "toylib", env=env, site_packages=toylib_site)
    assert r.returncode == 0, r.stderr
    assert "downloading toylib==1.0 with pip" in r.stderr and tree_digest(toylib_site / "toylib") == pristine
    r = run_porter("restore-original", "toylib", env={**env, "PIP_FIND_LINKS": str(tmp_path / "empty")},
                   site_packages=toylib_site)
    assert r.returncode == 0 and "nothing to restore" in r.stdout  # all restored already: pip is not asked


@pytest.mark.slow
def test_the_old_recipes_three_files_are_undone_on_a_copy_of_the_real_sat(sat_site, sat_pristine):
    for rel in RECIPE_FILES:
        path = sat_site / rel
        path.write_text("import torch_npu  # copied from the Ascend recipe\n" + path.read_text())
    r = run_porter("restore-original", "sat", env={}, site_packages=sat_site, timeout=300)
    assert r.returncode == 0, r.stderr  # the wheel comes from pip (its cache, or the package index)
    assert "restored 3 file(s)" in r.stdout
    assert tree_digest(sat_site / "sat") == tree_digest(sat_pristine / "sat")
