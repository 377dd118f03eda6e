"""Census: a write that fails with each errno a user's machine gives (disk full, file size limit, permission
denied, a folder that is a file), at each stage of a patch and a revert. Injected in this interpreter by making
porter's atomic write raise at the chosen stage; the real-disk versions (a full disk, RLIMIT_FSIZE, chattr +i)
are in test_faults.py. Each must end in one line naming the path, exit 4 (the target's files) or 8 (a path the
user named), and a target that is as it was, or `interrupted` and repaired by the next `porter revert`."""
from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from census import Case, assert_refused, cli, ids

from porter import diskio, journal, patcher
from porter.testing import tree_digest

ERRNOS = {"ENOSPC": errno.ENOSPC, "EFBIG": errno.EFBIG, "EACCES": errno.EACCES, "ENOTDIR": errno.ENOTDIR}


def failing_write(code: int, when):
    """atomic_write that raises OSError(code) for the writes ``when(path, nth)`` picks (nth counts from 1)."""
    real = diskio.atomic_write
    seen = {"n": 0}

    def write(path, data, mode=None):
        seen["n"] += 1
        if when(str(path), seen["n"]):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, data, mode)
    return write


def under_originals(path, _n):
    return "/originals/" in path


STAGES = {
    # stage: (command, where the write fails, exit code, words, the target afterwards)
    "originals": ("patch", under_originals, 4, "could not save the originals", "pristine"),
    "replace": ("patch", "second", 4, "the files already written were put back", "pristine"),
    "revert": ("revert", "second", 4, "the revert is interrupted", "interrupted"),
}

def _kind(name: str) -> str:
    return "permissions" if name == "EACCES" else "disk"


ROWS = [(Case(f"{_kind(name)}/{stage}-{name}", _kind(name), f"{os.strerror(code)} ({name}) while {what}: exit 4 "
              f"naming the path; {after}"), stage, code)
        for stage, what, after in (
            ("originals", "saving the originals", "nothing changed, no state left"),
            ("replace", "replacing the 2nd file", "the 1st put back, no state left"),
            ("revert", "restoring the 2nd file", "interrupted, and the next revert restores every byte"))
        for name, code in ERRNOS.items()]


@pytest.fixture
def patched_site(tmp_path, porter_env):
    from fixture_plugin import TOYLIB_FILES

    from porter.testing import make_distribution

    site = make_distribution(tmp_path / "site", "toylib", "1.0", TOYLIB_FILES)
    return site, tree_digest(site / "toylib")


@pytest.mark.parametrize("case,stage,code", ROWS, ids=ids(ROWS))
def test_a_failing_write_at_any_stage(case, stage, code, patched_site, porter_env, monkeypatch):
    site, pristine = patched_site
    where = ("--site-packages", str(site))
    command, when, exit_code, words, after = STAGES[stage]
    if command == "revert":
        assert cli("patch", "toylib", *where, env=porter_env).returncode == 0
    counter = {"n": 0}

    def second(path, _n):
        if "/.porter-state/" in path:
            return False
        counter["n"] += 1
        return counter["n"] == 2

    write = failing_write(code, second if when == "second" else when)
    for module in (patcher, journal):
        monkeypatch.setattr(module, "atomic_write", write)
    r = cli(command, "toylib", *where, env=porter_env)
    assert_refused(r, exit_code, words, os.strerror(code))
    monkeypatch.undo()
    state = json.loads(cli("status", "toylib", "--json", *where, env=porter_env).stdout)[0]["state"]
    if after == "pristine":
        assert tree_digest(site / "toylib") == pristine and state == "clean"
        assert not (site / ".porter-state").exists()
    else:
        assert state == "interrupted"
        assert cli("revert", "toylib", *where, env=porter_env).returncode == 0
        assert tree_digest(site / "toylib") == pristine


JOURNAL_ROWS = [(Case(f"disk/journal-applied-{name}", "disk", f"{os.strerror(code)} ({name}) writing the journal's "
                      "'applied': exit 4, interrupted, and revert restores"), code)
                for name, code in (("ENOSPC", errno.ENOSPC), ("EFBIG", errno.EFBIG))]


@pytest.mark.parametrize("case,code", JOURNAL_ROWS, ids=ids(JOURNAL_ROWS))
def test_a_journal_that_cannot_be_marked_done(case, code, patched_site, porter_env, monkeypatch):
    site, pristine = patched_site
    where = ("--site-packages", str(site))
    real = journal.Journal.save

    def save(self, state_dir):
        if self.status == journal.APPLIED:
            raise OSError(code, os.strerror(code), str(journal.Journal.path_in(state_dir)))
        return real(self, state_dir)

    monkeypatch.setattr(journal.Journal, "save", save)
    assert_refused(cli("patch", "toylib", *where, env=porter_env), 4, "could not mark the patch done", "porter revert")
    monkeypatch.undo()
    assert json.loads(cli("status", "toylib", "--json", *where, env=porter_env).stdout)[0]["state"] == "interrupted"
    assert cli("revert", "toylib", *where, env=porter_env).returncode == 0
    assert tree_digest(site / "toylib") == pristine


def test_a_state_folder_that_is_a_file(patched_site, porter_env):
    """`.porter-state` is a file of the user's: patch refuses naming it (exit 4), the file keeps its bytes."""
    site, pristine = patched_site
    (site / ".porter-state").write_text("mine\n")
    r = cli("patch", "toylib", "--site-packages", str(site), env=porter_env)
    assert_refused(r, 4, ".porter-state")
    assert (site / ".porter-state").read_text() == "mine\n" and tree_digest(site / "toylib") == pristine
    shutil.rmtree(site / "toylib" / "__pycache__", ignore_errors=True)


REPORT_ROWS = [(Case(f"disk/report-{name}", "disk", f"{os.strerror(code)} ({name}) writing --report: exit 8 naming "
                     "the report"), code) for name, code in (("ENOSPC", errno.ENOSPC), ("EACCES", errno.EACCES))]


@pytest.mark.parametrize("case,code", REPORT_ROWS, ids=ids(REPORT_ROWS))
def test_a_report_that_cannot_be_written(case, code, patched_site, porter_env, monkeypatch, tmp_path):
    from porter import outputs

    site, _ = patched_site
    monkeypatch.setattr(outputs, "atomic_write", failing_write(code, lambda p, n: p.endswith("r.json")))
    r = cli("patch", "toylib", "--dry-run", "--report", str(tmp_path / "r.json"), "--site-packages", str(site),
            env=porter_env)
    assert_refused(r, 8, "--report", "r.json", os.strerror(code))


# (case, command run first, what is made immutable, the command refused, words)
IMMUTABLE_ROWS = [
    (Case("permissions/immutable-file-before-patch", "permissions", "a package file made immutable (chattr +i): "
          "patch refuses (4) naming it before the first write"), None, "toylib/timer.py", "patch", "timer.py"),
    (Case("permissions/immutable-package-folder", "permissions", "the package folder made immutable: patch refuses "
          "(4) naming it before the first write"), None, "toylib", "patch", "immutable"),
    (Case("permissions/immutable-state-folder-before-revert", "permissions", "the saved originals' folder made "
          "immutable after a patch: revert refuses (4) before the first write, still patched"), "patch",
     ".porter-state/toylib/originals/toylib", "revert", "immutable"),
    (Case("permissions/immutable-file-before-revert", "permissions", "a patched file made immutable: revert refuses "
          "(4) naming it, still patched"), "patch", "toylib/dist.py", "revert", "dist.py"),
]


@pytest.mark.parametrize("case,first,locked,command,words", IMMUTABLE_ROWS, ids=ids(IMMUTABLE_ROWS))
def test_an_immutable_path_is_refused_before_the_first_write(case, first, locked, command, words, patched_site,
                                                             porter_env, immutable):
    site, _ = patched_site
    where = ("--site-packages", str(site))
    if first:
        assert cli(first, "toylib", *where, env=porter_env).returncode == 0
    before = tree_digest(site)
    immutable(site / locked)
    assert_refused(cli(command, "toylib", *where, env=porter_env), 4, words)
    assert tree_digest(site) == before


CASES = [row[0] for row in ROWS + JOURNAL_ROWS + REPORT_ROWS + IMMUTABLE_ROWS] + [
    Case("disk/state-folder-is-a-file", "disk", "`.porter-state` is a file of the user's: patch refuses (4) naming "
         "it, the file and the package keep their bytes")]
