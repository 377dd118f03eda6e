"""Census: paths the user asks porter to write (`--save`, `--report`) and porter's own output (stdout closed or
full). Each is refused with exit 8 (2 for a usage error) before anything is written, patched or launched, and a
folder porter did not make keeps every byte."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from census import Case, assert_refused, cli, ids

from porter.outputs import MARKER, claim_run_folder, clear_run_outputs
from porter.testing import tree_digest


@pytest.fixture
def user_folder(tmp_path):
    """A folder of the user's own: a file, a subfolder, a hidden file."""
    root = tmp_path / "work"
    (root / "src").mkdir(parents=True)
    (root / "notes.txt").write_text("mine\n")
    (root / "src" / "model.py").write_text("x = 1\n")
    (root / ".env").write_text("KEY=1\n")
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "dotonly").mkdir()
    (tmp_path / "dotonly" / ".hidden").write_text("mine\n")
    return root


DEMO = ("run", "visualglm", "demo", "--save")
TRAIN = ("run", "visualglm", "train", "--device", "cpu", "--dry-run", "--save")

# (case, argv after the command with {work} and {tmp}, exit code, words)
SAVE_ROWS = [
    (Case("paths/demo-save-user-folder", "paths", "demo --save naming a folder of the user's files: refused (8) "
          "before the encoder, the patch or any write; it was deleted whole"), DEMO + ("{work}",), 8,
     "holds files porter did not write"),
    (Case("paths/demo-save-a-file", "paths", "demo --save naming a file: refused (8)"), DEMO + ("{tmp}/a-file",), 8,
     "a file, not a folder"),
    (Case("paths/demo-save-under-a-file", "paths", "demo --save under a file: refused (8)"),
     DEMO + ("{tmp}/a-file/run",), 8, "is not a folder"),
    (Case("paths/demo-save-hidden-file-only", "paths", "demo --save naming a folder holding only a dotfile: refused"),
     DEMO + ("{tmp}/dotonly",), 8, "holds files porter did not write (.hidden)"),
    (Case("paths/train-save-user-folder", "paths", "train --save naming a folder of the user's files: refused (8) "
          "in the parent, before launch"), TRAIN + ("{work}",), 8, "holds files porter did not write"),
    (Case("paths/train-save-a-file", "paths", "train --save naming a file: refused (8)"), TRAIN + ("{tmp}/a-file",),
     8, "a file, not a folder"),
    (Case("paths/train-save-under-a-file", "paths", "train --save under a file: refused (8), not a DeepSpeed "
          "traceback"), TRAIN + ("{tmp}/a-file/run",), 8, "is not a folder"),
]


@pytest.mark.parametrize("case,argv,code,words", SAVE_ROWS, ids=ids(SAVE_ROWS))
def test_a_run_folder_porter_may_not_use_is_refused_first(case, argv, code, words, user_folder, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("PORTER_DEVICE", "cpu")
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "empty-cache"))  # the demo must refuse before building one
    before = tree_digest(tmp_path)
    r = cli(*(a.format(work=user_folder, tmp=tmp_path) for a in argv))
    assert_refused(r, code, words)
    assert tree_digest(tmp_path) == before
    assert not (tmp_path / "empty-cache").exists()


def test_a_read_only_run_folder_is_refused(tmp_path, immutable, monkeypatch):
    monkeypatch.setenv("PORTER_DEVICE", "cpu")
    parent = tmp_path / "locked"
    parent.mkdir()
    immutable(parent)
    assert_refused(cli(*TRAIN, str(parent / "run")), 8, "cannot be written", "immutable")


def test_an_earlier_run_is_cleared_of_run_files_only(tmp_path):
    run = claim_run_folder(tmp_path / "run", "--save")
    (run / "checkpoints" / "visualglm-1" / "1").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "deepspeed_config.rank0.json").write_text("{}")
    (run / "my-notes.txt").write_text("kept\n")
    removed = {p.name for p in clear_run_outputs(run)}
    assert removed == {"checkpoints", "metrics.jsonl", "deepspeed_config.rank0.json"}
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "my-notes.txt"]
    assert_refused(cli(*DEMO, str(tmp_path)), 8, "holds files porter did not write")  # the parent is not a run


REPORT = ("patch", "toylib", "--report")
REPORT_ROWS = [
    (Case("paths/report-a-folder", "paths", "patch --report naming a folder: refused (8) before patching (it "
          "patched every file, then failed)"), REPORT + ("{tmp}",), 8, "a folder, not a file"),
    (Case("paths/report-under-a-file", "paths", "patch --report under a file: refused (8) before patching"),
     REPORT + ("{tmp}/a-file/r.json",), 8, "is not a folder"),
    (Case("paths/report-missing-folder", "paths", "patch --report in a folder that does not exist: refused (8)"),
     REPORT + ("{tmp}/nowhere/r.json",), 8, "does not exist"),
    (Case("paths/report-dry-run-a-folder", "paths", "patch --dry-run --report naming a folder: refused (8)"),
     REPORT + ("{tmp}", "--dry-run"), 8, "a folder, not a file"),
    (Case("cli/verify-with-dry-run", "cli", "patch --verify --dry-run: a usage error (2), not a silently ignored "
          "--verify"), ("patch", "toylib", "--verify", "--dry-run"), 2, "--verify proves a patch on disk"),
]


@pytest.mark.parametrize("case,argv,code,words", REPORT_ROWS, ids=ids(REPORT_ROWS))
def test_a_report_path_is_checked_before_the_patch(case, argv, code, words, toylib_site, porter_env, tmp_path):
    (tmp_path / "a-file").write_text("x")
    before = tree_digest(toylib_site)
    r = cli(*(a.format(tmp=tmp_path) for a in argv), "--site-packages", str(toylib_site), env=porter_env)
    assert_refused(r, code, words)
    assert tree_digest(toylib_site) == before


def test_a_report_into_an_immutable_folder_is_refused_before_the_patch(toylib_site, porter_env, tmp_path, immutable):
    folder = tmp_path / "reports"
    folder.mkdir()
    immutable(folder)
    before = tree_digest(toylib_site)
    r = cli(*REPORT, str(folder / "r.json"), "--site-packages", str(toylib_site), env=porter_env)
    assert_refused(r, 8, "immutable")
    assert tree_digest(toylib_site) == before


def porter_exe(*args, stdout, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "porter.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


STDOUT_ROWS = [
    (Case("cli/stdout-closed", "cli", "`porter rules sat >&-`: exit 8 with one line (a traceback before)"),
     "closed", 8, "standard output is closed"),
    (Case("cli/stdout-full", "cli", "`porter rules sat > /dev/full`: exit 8 with one line, not 0 with the output "
          "lost"), "full", 8, "cannot write standard output"),
]


@pytest.mark.parametrize("case,how,code,words", STDOUT_ROWS, ids=ids(STDOUT_ROWS))
def test_an_unwritable_stdout_is_said(case, how, code, words):
    if how == "full":
        with open("/dev/full", "w") as full:
            r = porter_exe("rules", "sat", stdout=full)
    else:  # as a shell runs `porter rules sat >&-`: the process starts with no file descriptor 1
        import os
        import shlex

        r = subprocess.run(["bash", "-c", f"exec {shlex.quote(sys.executable)} -m porter.cli rules sat >&-"],
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ), timeout=120)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr and r.stderr.count("error:") == 1


def test_sigint_during_a_patch_says_how_to_repair(toylib_site, porter_env):
    """Ctrl-C after the first file of a patch was written: exit 130, and the line says what to run."""
    import os
    import signal

    runner = Path(__file__).parent.parent / "fault_runner.py"
    proc = subprocess.Popen([sys.executable, str(runner), "--pause-at", "wrote 1/3", "--", "patch", "toylib",
                             "--site-packages", str(toylib_site)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **porter_env})
    seen = ""
    while "paused at" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + err
    assert "porter revert` repairs an interrupted patch" in err and "Traceback" not in err
    status = cli("status", "toylib", "--json", "--site-packages", str(toylib_site), env=porter_env)
    assert json.loads(status.stdout)[0]["state"] == "interrupted"


WHEEL_ROWS = [
    (Case("cli/restore-original-wheel-garbage", "cli", "restore-original --wheel naming a file of random bytes: an "
          "unusable input file (7, it was 6), nothing written"), lambda p: p.write_bytes(b"\x00garbage" * 50),
     "not a readable wheel"),
    (Case("cli/restore-original-wheel-missing", "cli", "restore-original --wheel naming no file: 7"),
     lambda p: None, "not a readable wheel"),
    (Case("cli/restore-original-wheel-a-folder", "cli", "restore-original --wheel naming a folder: 7"),
     lambda p: p.mkdir(), "not a readable wheel"),
]


@pytest.mark.parametrize("case,make,words", WHEEL_ROWS, ids=ids(WHEEL_ROWS))
def test_an_unusable_wheel_is_an_input_error(case, make, words, toylib_site, porter_env, tmp_path):
    dist = toylib_site / "toylib" / "dist.py"
    dist.write_text(dist.read_text() + "# a hand edit\n")
    make(tmp_path / "toylib-1.0-py3-none-any.whl")
    before = tree_digest(toylib_site)
    r = cli("restore-original", "toylib", "--wheel", str(tmp_path / "toylib-1.0-py3-none-any.whl"),
            "--site-packages", str(toylib_site), env=porter_env)
    assert_refused(r, 7, words)
    assert tree_digest(toylib_site) == before


CASES = [row[0] for row in SAVE_ROWS + REPORT_ROWS + STDOUT_ROWS + WHEEL_ROWS] + [
    Case("paths/save-immutable-parent", "paths", "train --save inside an immutable folder: refused (8) before launch"),
    Case("paths/report-immutable-folder", "paths", "patch --report into an immutable folder: refused (8) before "
         "patching"),
    Case("paths/clear-keeps-user-files", "paths", "an earlier porter run's folder: only the files a run writes are "
         "removed, the user's file and the marker stay"),
    Case("signals/sigint-mid-patch", "signals", "SIGINT after the first file of a patch: exit 130 and a line that "
         "says `porter revert` repairs it; status says interrupted"),
]
