"""The patch transaction on the toylib fixture: plan, apply, journal, status, revert, crashes, races."""
import json
import os
import signal
import subprocess
import sys

import pytest

from porter.journal import Journal
from porter.testing import refresh_record, run_porter, tree_digest

FAULT_RUNNER = os.path.join(os.path.dirname(__file__), "fault_runner.py")

PATCHED_DIST = "BACKEND = 'gloo'  # the default every rank uses\n"


def porter(site, *args, env, **kw):
    return run_porter(*args, env=env, site_packages=site, **kw)


def test_patch_then_revert_restores_every_byte(toylib_site, porter_env):
    before = tree_digest(toylib_site / "toylib")
    r = porter(toylib_site, "patch", "toylib", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert (toylib_site / "toylib/dist.py").read_text() == PATCHED_DIST
    assert '"min_loss_scale": 1' in (toylib_site / "toylib/config.json").read_text()
    assert tree_digest(toylib_site / "toylib") != before
    journal = Journal.load(toylib_site / ".porter-state/toylib")
    assert journal.status == "applied" and sorted(e.path for e in journal.files) == [
        "toylib/config.json", "toylib/dist.py", "toylib/timer.py"]
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site / "toylib") == before
    assert not (toylib_site / ".porter-state").exists()  # nothing left behind in site-packages


def test_patch_twice_is_patch_once(toylib_site, porter_env):
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 0
    once = tree_digest(toylib_site / "toylib")
    journal_once = (toylib_site / ".porter-state/toylib/journal.json").read_text()
    r = porter(toylib_site, "patch", "toylib", env=porter_env)
    assert r.returncode == 0 and "already patched" in r.stdout
    assert tree_digest(toylib_site / "toylib") == once
    assert (toylib_site / ".porter-state/toylib/journal.json").read_text() == journal_once


def test_dry_run_writes_nothing_and_reports(toylib_site, porter_env, tmp_path):
    before = tree_digest(toylib_site)
    report = tmp_path / "plan.json"
    r = porter(toylib_site, "patch", "toylib", "--dry-run", "--report", str(report), env=porter_env)
    assert r.returncode == 0, r.stderr
    assert "-BACKEND = 'nccl'" in r.stdout and "+BACKEND = 'gloo'" in r.stdout
    assert "toylib.backend" in r.stdout  # the per-rule table
    data = json.loads(report.read_text())
    assert data["rules"] == {"toylib.backend": 1, "toylib.config": 1, "toylib.sync": 1}
    assert {m["path"] for m in data["matches"]} == {"toylib/dist.py", "toylib/timer.py", "toylib/config.json"}
    assert tree_digest(toylib_site) == before  # report went elsewhere; nothing under site-packages


def test_a_csv_report_is_the_change_list_in_msfmktransplts_columns(toylib_site, porter_env, tmp_path):
    """`--report x.csv`: one row per change, the same changes as the JSON report's matches, in the columns of
    msFmkTransplt's change_list.csv."""
    import csv

    before = tree_digest(toylib_site)
    for name in ("plan.json", "plan.csv"):
        r = porter(toylib_site, "patch", "toylib", "--dry-run", "--report", str(tmp_path / name), env=porter_env)
        assert r.returncode == 0, r.stderr
    rows = list(csv.reader((tmp_path / "plan.csv").open(newline="")))
    assert rows[0] == ["File", "Start Line", "End Line", "Operation Type", "Message"]
    matches = json.loads((tmp_path / "plan.json").read_text())["matches"]
    assert len(rows) - 1 == len(matches) >= 3
    assert sorted(rows[1:]) == sorted([m["path"], str(m["lines"][0]), str(m["lines"][1]), m["rule"], m["message"]]
                                      for m in matches)
    assert tree_digest(toylib_site) == before


def test_only_applies_the_named_rules(toylib_site, porter_env):
    r = porter(toylib_site, "patch", "toylib", "--only", "toylib.backend", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert (toylib_site / "toylib/dist.py").read_text() == PATCHED_DIST
    assert "cuda_synchronize()\n" in (toylib_site / "toylib/timer.py").read_text()
    # Asking for all rules now re-plans: revert, then apply the full set.
    r = porter(toylib_site, "patch", "toylib", env=porter_env)
    assert r.returncode == 0 and "re-patched 3 file(s)" in r.stdout, r.stdout + r.stderr
    journal = Journal.load(toylib_site / ".porter-state/toylib")
    assert journal.rules == ["toylib.backend", "toylib.config", "toylib.sync"]
    orig = {e.path: e.original_sha256 for e in journal.files}
    import textwrap

    from fixture_plugin import TOYLIB_FILES

    from porter.diskio import sha256_bytes
    assert orig["toylib/dist.py"] == sha256_bytes(textwrap.dedent(TOYLIB_FILES["toylib/dist.py"]).lstrip("\n").encode())


def test_only_with_an_unknown_rule_is_an_error(toylib_site, porter_env):
    r = porter(toylib_site, "patch", "toylib", "--only", "toylib.nope", env=porter_env)
    assert r.returncode == 6 and "toylib.nope" in r.stderr


def test_required_rule_no_longer_matching_aborts_and_touches_nothing(toylib_site, porter_env):
    # Simulate an upstream release that changed the default.
    (toylib_site / "toylib/dist.py").write_text("BACKEND = 'mpi'\n")
    refresh_record(toylib_site, "toylib")
    before = tree_digest(toylib_site)
    r = porter(toylib_site, "patch", "toylib", env=porter_env)
    assert r.returncode == 3
    assert "required rule toylib.backend matched nothing in toylib/dist.py" in r.stderr
    assert tree_digest(toylib_site) == before
    assert not (toylib_site / ".porter-state/toylib").exists()


def test_unsupported_version_is_refused(tmp_path, porter_env):
    from fixture_plugin import TOYLIB_FILES

    from porter.testing import make_distribution

    site = make_distribution(tmp_path / "sp", "toylib", "2.0", TOYLIB_FILES)
    r = porter(site, "patch", "toylib", env=porter_env)
    assert r.returncode == 3 and "toylib 2.0 is outside the versions" in r.stderr


def test_status_reports_clean_patched_drifted(toylib_site, porter_env):
    def state():
        r = porter(toylib_site, "status", "toylib", "--json", env=porter_env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)[0]

    assert state()["state"] == "clean"
    porter(toylib_site, "patch", "toylib", env=porter_env)
    assert state()["state"] == "patched"
    with open(toylib_site / "toylib/timer.py", "a") as fh:
        fh.write("# a hand edit\n")
    s = state()
    assert s["state"] == "drifted" and s["files"]["toylib/timer.py"] == "drifted"


def test_revert_refuses_drifted_files_unless_forced(toylib_site, porter_env):
    pristine = tree_digest(toylib_site / "toylib")
    porter(toylib_site, "patch", "toylib", env=porter_env)
    with open(toylib_site / "toylib/timer.py", "a") as fh:
        fh.write("# a hand edit\n")
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4 and "toylib/timer.py (drifted)" in r.stderr
    assert "a hand edit" in (toylib_site / "toylib/timer.py").read_text()  # nothing restored
    assert (toylib_site / "toylib/dist.py").read_text() == PATCHED_DIST
    # patching again refuses too: the drift must be resolved first
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 4
    r = porter(toylib_site, "revert", "toylib", "--force", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site / "toylib") == pristine


def test_reinstall_or_upgrade_after_patch_is_drift_and_revert_still_works(toylib_site, porter_env):
    porter(toylib_site, "patch", "toylib", env=porter_env)
    # a reinstall puts an original file back
    (toylib_site / "toylib/dist.py").write_text("BACKEND = 'nccl'  # the default every rank uses\n")
    s = json.loads(porter(toylib_site, "status", "toylib", "--json", env=porter_env).stdout)[0]
    assert s["files"]["toylib/dist.py"] == "original" and s["state"] == "drifted"
    # then an upgrade past the versions the rules support: status and revert must still answer
    info = toylib_site / "toylib-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toylib\nVersion: 2.0\n")
    info.rename(toylib_site / "toylib-2.0.dist-info")
    (toylib_site / "toylib/timer.py").write_text("# toylib 2.0\n")
    r = porter(toylib_site, "status", "toylib", "--json", env=porter_env)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["version"] == "2.0"
    assert json.loads(r.stdout)[0]["state"] == "drifted"
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4 and "toylib/timer.py (drifted)" in r.stderr
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 3  # unsupported: not patched
    assert porter(toylib_site, "revert", "toylib", "--force", env=porter_env).returncode == 0
    assert (toylib_site / "toylib/timer.py").read_text().startswith("import time")


def test_revert_of_a_clean_target_is_a_no_op(toylib_site, porter_env):
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 0 and "nothing to revert" in r.stdout


def test_stale_bytecode_is_dropped(toylib_site, porter_env):
    import compileall

    compileall.compile_dir(str(toylib_site / "toylib"), quiet=1)
    assert list((toylib_site / "toylib/__pycache__").glob("dist.*.pyc"))
    porter(toylib_site, "patch", "toylib", env=porter_env)
    assert not list((toylib_site / "toylib/__pycache__").glob("dist.*.pyc"))
    assert list((toylib_site / "toylib/__pycache__").glob("__init__.*.pyc"))  # untouched files keep theirs


def test_sigkill_mid_write_is_interrupted_and_revert_repairs(toylib_site, porter_env):
    pristine = tree_digest(toylib_site / "toylib")
    env = {**os.environ, **porter_env}
    proc = subprocess.Popen([sys.executable, FAULT_RUNNER, "--pause-at", "wrote 1/3", "--", "patch", "toylib",
                             "--site-packages", str(toylib_site)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert line.startswith("patched 1/3"), line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    # one file replaced, two not: a torn state that only the journal can explain
    assert tree_digest(toylib_site / "toylib") != pristine
    r = porter(toylib_site, "status", "toylib", "--json", env=porter_env)
    s = json.loads(r.stdout)[0]
    assert s["state"] == "interrupted"
    assert sorted(s["files"].values()) == ["original", "original", "patched"]
    r = porter(toylib_site, "status", "toylib", env=porter_env)
    assert "interrupted" in r.stdout and "porter revert toylib" in r.stdout
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site / "toylib") == pristine
    assert json.loads(porter(toylib_site, "status", "toylib", "--json", env=porter_env).stdout)[0]["state"] == "clean"


def test_sigkill_then_patch_again_repairs_and_completes(toylib_site, porter_env):
    env = {**os.environ, **porter_env}
    proc = subprocess.Popen([sys.executable, FAULT_RUNNER, "--pause-at", "wrote 1/3", "--", "patch", "toylib",
                             "--site-packages", str(toylib_site)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr.readline().startswith("patched 1/3")
    proc.kill()
    proc.wait(timeout=10)
    r = porter(toylib_site, "patch", "toylib", env=porter_env)
    assert r.returncode == 0 and "repaired an interrupted patch" in r.stderr, r.stderr
    journal = Journal.load(toylib_site / ".porter-state/toylib")
    assert journal.status == "applied"
    from porter.diskio import sha256_file
    assert all(sha256_file(toylib_site / e.path) == e.patched_sha256 for e in journal.files)


def test_eight_concurrent_patches_apply_once(toylib_site, porter_env):
    env = {**os.environ, **porter_env}
    cmd = [sys.executable, "-m", "porter.cli", "patch", "toylib", "--site-packages", str(toylib_site)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1] for o in outs]
    applied = [o for o in outs if "patched 3 file(s)" in o[0]]
    already = [o for o in outs if "already patched" in o[0]]
    assert len(applied) == 1 and len(already) == 7
    assert sum(o[1].count("patched 1/3") for o in outs) == 1  # the files were written by one process only
    journal = Journal.load(toylib_site / ".porter-state/toylib")
    from porter.diskio import sha256_file
    assert journal.status == "applied"
    assert all(sha256_file(toylib_site / e.path) == e.patched_sha256 for e in journal.files)
    # the saved originals are the pristine files, not a second patch's input
    assert (toylib_site / ".porter-state/toylib/originals/toylib/dist.py").read_text().startswith("BACKEND = 'nccl'")


def test_an_upgraded_rule_re_patches_and_an_unchanged_one_does_not(toylib_site, tmp_path):
    import shutil
    from pathlib import Path

    plugin = tmp_path / "upgradable_plugin.py"
    shutil.copy(Path(__file__).with_name("fixture_plugin.py"), plugin)
    env = {"PORTER_PLUGINS": str(plugin)}
    assert porter(toylib_site, "patch", "toylib", env=env).returncode == 0
    journal = Journal.load(toylib_site / ".porter-state/toylib")
    assert journal.rules_fingerprint
    r = porter(toylib_site, "patch", "toylib", env=env)
    assert "already patched" in r.stdout
    # the plugin is upgraded: its backend rule now writes 'mpi'
    plugin.write_text(plugin.read_text().replace('replace_string("nccl", "gloo")', 'replace_string("nccl", "mpi")'))
    r = porter(toylib_site, "patch", "toylib", env=env)
    assert r.returncode == 0 and "re-patched" in r.stdout, r.stdout + r.stderr
    assert (toylib_site / "toylib/dist.py").read_text().startswith("BACKEND = 'mpi'")
    assert Journal.load(toylib_site / ".porter-state/toylib").rules_fingerprint != journal.rules_fingerprint


def test_sigkill_mid_revert_is_interrupted_and_revert_finishes(toylib_site, porter_env):
    pristine = tree_digest(toylib_site / "toylib")
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 0
    env = {**os.environ, **porter_env}
    proc = subprocess.Popen([sys.executable, FAULT_RUNNER, "--pause-at", "restored 1/3", "--", "revert", "toylib",
                             "--site-packages", str(toylib_site)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stderr.readline().startswith("restored ")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    s = json.loads(porter(toylib_site, "status", "toylib", "--json", env=porter_env).stdout)[0]
    assert s["state"] == "interrupted" and sorted(s["files"].values()) == ["original", "patched", "patched"]
    assert porter(toylib_site, "revert", "toylib", env=porter_env).returncode == 0
    assert tree_digest(toylib_site / "toylib") == pristine


def test_a_file_changed_during_planning_writes_no_state(toylib_site, porter_env):
    from fixture_plugin import RULES, TOYLIB

    from porter import patcher
    from porter.errors import StateError
    from porter.plan import make_plan
    from porter.target import locate

    installed = locate(TOYLIB, toylib_site)
    plan = make_plan(installed, RULES)
    (toylib_site / "toylib/timer.py").write_text("# changed by someone else\n")  # not the first file planned
    with pytest.raises(StateError, match="changed while porter was planning; nothing was written"):
        patcher._write(installed, plan, lambda _m: None)
    assert not (toylib_site / ".porter-state").exists()
    assert (toylib_site / "toylib/dist.py").read_text().startswith("BACKEND = 'nccl'")


def test_crlf_files_round_trip(toylib_site, porter_env):
    path = toylib_site / "toylib/dist.py"
    path.write_bytes(b"BACKEND = 'nccl'\r\nOTHER = 1\r\n")
    refresh_record(toylib_site, "toylib")  # installed this way, not edited since
    before = path.read_bytes()
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 0
    assert path.read_bytes() == b"BACKEND = 'gloo'\r\nOTHER = 1\r\n"
    assert porter(toylib_site, "revert", "toylib", env=porter_env).returncode == 0
    assert path.read_bytes() == before


def test_only_and_skip_take_dotted_prefixes_and_say_what_they_chose(toylib_site, porter_env):
    import json

    r = porter(toylib_site, "patch", "toylib", "--dry-run", "--json", "--only", "toylib", "--skip", "toylib.backend",
               env=porter_env)
    assert r.returncode == 0, r.stderr
    ran = sorted(json.loads(r.stdout)["rules"])
    assert "toylib.backend" not in ran and ran and all(rid.startswith("toylib.") for rid in ran)
    assert "--only toylib: " in r.stderr  # a prefix says which rules it selected
    r = porter(toylib_site, "patch", "toylib", "--dry-run", "--skip", "toylib", env=porter_env)
    assert r.returncode == 6 and "leave no rule" in r.stderr
