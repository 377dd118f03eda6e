"""Saved originals are never lost: a deleted journal, a deleted or altered original, strays of a crash, a file
replaced by a folder. Each case through the CLI, as a user meets it, on the toylib fixture (whose RECORD holds
sha256 hashes as pip writes them)."""
import json
import shutil

from porter.testing import run_porter, tree_digest


def porter(site, *args, env, **kw):
    return run_porter(*args, env=env, site_packages=site, **kw)


def patched(site, env):
    pristine = tree_digest(site / "toylib")
    r = porter(site, "patch", "toylib", env=env)
    assert r.returncode == 0, r.stderr
    return pristine, site / ".porter-state" / "toylib"


def status_of(site, env):
    r = porter(site, "status", "toylib", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


def test_a_deleted_journal_is_reported_and_revert_restores_from_the_originals(toylib_site, porter_env):
    pristine, state = patched(toylib_site, porter_env)
    (state / "journal.json").unlink()
    originals = tree_digest(state / "originals")

    s = status_of(toylib_site, porter_env)
    assert s["state"] == "orphaned"
    assert s["files"] == {f"toylib/{f}": "orphaned original (differs)" for f in ("config.json", "dist.py", "timer.py")}

    r = porter(toylib_site, "patch", "toylib", env=porter_env)  # must not delete the only copies
    assert r.returncode == 4 and "holds saved originals but no journal" in r.stderr and "porter revert toylib" in r.stderr
    assert tree_digest(state / "originals") == originals

    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert "restored 3 file(s); restored from saved originals that had no journal" in r.stdout
    assert tree_digest(toylib_site / "toylib") == pristine
    assert not state.exists()


def test_originals_the_record_does_not_vouch_for_need_force(toylib_site, porter_env):
    pristine, state = patched(toylib_site, porter_env)
    (state / "journal.json").unlink()
    record = next(toylib_site.glob("toylib-*.dist-info")) / "RECORD"
    record.write_text(record.read_text().replace("toylib/dist.py,sha256=", "toylib/dist.py,sha256=X"))
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4 and "RECORD does not vouch for these: toylib/dist.py" in r.stderr
    assert (state / "originals" / "toylib" / "dist.py").is_file()
    assert tree_digest(toylib_site / "toylib") != pristine  # nothing was written
    r = porter(toylib_site, "revert", "toylib", "--force", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site / "toylib") == pristine


def test_strays_of_a_crash_before_the_journal_are_only_copies_and_are_cleared(toylib_site, porter_env):
    pristine = tree_digest(toylib_site / "toylib")
    stray = toylib_site / ".porter-state" / "toylib" / "originals" / "toylib"
    stray.mkdir(parents=True)
    shutil.copy(toylib_site / "toylib" / "dist.py", stray / "dist.py")  # the same bytes as installed
    assert status_of(toylib_site, porter_env)["state"] == "clean"
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 0 and "nothing to revert" in r.stdout
    assert not (toylib_site / ".porter-state").exists()
    assert tree_digest(toylib_site / "toylib") == pristine


def test_a_deleted_original_is_reported_and_revert_refuses_before_writing(toylib_site, porter_env):
    _, state = patched(toylib_site, porter_env)
    (state / "originals" / "toylib" / "timer.py").unlink()
    s = status_of(toylib_site, porter_env)
    assert s["state"] == "damaged" and s["files"]["toylib/timer.py"] == "original missing"
    before = tree_digest(toylib_site / "toylib")
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4
    assert "cannot revert: saved originals are toylib/timer.py (missing)" in r.stderr and "nothing was changed" in r.stderr
    assert tree_digest(toylib_site / "toylib") == before  # not two files restored and then a stop
    assert json.loads((state / "journal.json").read_text())["status"] == "applied"
    r = porter(toylib_site, "patch", "toylib", env=porter_env)  # not "already patched"
    assert r.returncode == 4 and "saved originals are toylib/timer.py (missing)" in r.stderr


def test_an_altered_original_is_damaged_too(toylib_site, porter_env):
    _, state = patched(toylib_site, porter_env)
    (state / "originals" / "toylib" / "dist.py").write_text("BACKEND = 'edited'\n")
    assert status_of(toylib_site, porter_env)["files"]["toylib/dist.py"] == "original altered"
    r = porter(toylib_site, "revert", "toylib", "--force", env=porter_env)  # --force cannot invent the bytes
    assert r.returncode == 4 and "toylib/dist.py (altered)" in r.stderr


def test_a_patched_file_replaced_by_a_folder_is_drift_not_a_crash(toylib_site, porter_env):
    patched(toylib_site, porter_env)
    (toylib_site / "toylib" / "dist.py").unlink()
    (toylib_site / "toylib" / "dist.py").mkdir()
    s = status_of(toylib_site, porter_env)
    assert s["state"] == "drifted" and s["files"]["toylib/dist.py"] == "drifted"
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4 and "toylib/dist.py (drifted)" in r.stderr and "Traceback" not in r.stderr
    r = porter(toylib_site, "revert", "toylib", "--force", env=porter_env)
    assert r.returncode == 4 and "cannot restore files over folders: toylib/dist.py" in r.stderr
