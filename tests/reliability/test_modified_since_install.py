"""Installs that were changed after pip installed them (by hand, or by the old Ascend recipe's copied files) are
found by comparing each file with the sha256 in the distribution's RECORD; patch refuses them unless told."""
import json

from porter.testing import run_porter, tree_digest

# The three files the Ascend ModelZoo recipe tells users to copy over the installed SAT.
RECIPE_FILES = ["sat/model/official/chatglm_model.py", "sat/model/official/glm130B_model.py",
                "sat/model/position_embedding/rotary_embeddings.py"]


def test_a_hand_edited_file_is_named_and_patch_needs_accept_modified(toylib_site, porter_env):
    dist = toylib_site / "toylib" / "dist.py"
    dist.write_text(dist.read_text() + "# tuned by hand\n")
    edited = tree_digest(toylib_site / "toylib")
    r = run_porter("status", "toylib", "--json", env=porter_env, site_packages=toylib_site)
    status = json.loads(r.stdout)[0]
    assert status["state"] == "clean" and status["changed_since_install"] == ["toylib/dist.py"]
    r = run_porter("patch", "toylib", env=porter_env, site_packages=toylib_site)
    assert r.returncode == 4
    assert "files changed since install (they differ from the sha256 in its RECORD): toylib/dist.py" in r.stderr
    assert "--accept-modified" in r.stderr and tree_digest(toylib_site / "toylib") == edited
    r = run_porter("patch", "toylib", "--accept-modified", env=porter_env, site_packages=toylib_site)
    assert r.returncode == 0, r.stderr
    assert run_porter("revert", "toylib", env=porter_env, site_packages=toylib_site).returncode == 0
    assert tree_digest(toylib_site / "toylib") == edited  # revert restores the file as it was, edits included


def test_the_old_recipes_copied_files_are_reported_by_name(sat_site):
    for rel in RECIPE_FILES:  # a stand-in for the recipe's copies: the same files, changed
        path = sat_site / rel
        path.write_text("import torch_npu  # copied from the Ascend recipe\n" + path.read_text())
    before = tree_digest(sat_site / "sat")
    r = run_porter("status", "sat", env={}, site_packages=sat_site)
    assert r.returncode == 0 and "changed since install (differ from sat's RECORD): " + ", ".join(sorted(RECIPE_FILES)) in r.stdout
    r = run_porter("patch", "sat", env={}, site_packages=sat_site, timeout=300)
    assert r.returncode == 4, r.stderr
    assert "files changed since install" in r.stderr
    assert all(rel in r.stderr for rel in RECIPE_FILES)
    assert tree_digest(sat_site / "sat") == before and not (sat_site / ".porter-state").exists()
