"""The patch transaction: plan -> save originals -> journal pending -> replace -> journal applied.

Every step is ordered so that a crash at any point leaves either the untouched target or a journal that
`status` reports as interrupted and `revert` (or the next `patch`) repairs.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .diskio import atomic_write, drop_bytecode, sha256_bytes, sha256_file
from .errors import StateError
from .journal import APPLIED, PENDING, FileEntry, Journal, originals_dir, remove_state, saved_original
from .lock import dir_lock, is_locked
from .plan import Plan, make_plan, read_source, select_rules
from .rules import Rule, fingerprint
from .target import InstalledTarget

Progress = Callable[[str], None]

# Test-only: seconds to sleep between two file replacements, so a test can kill a patch or revert mid-write.
TEST_DELAY_ENV = "PORTER_TEST_WRITE_DELAY"

CLEAN, PATCHED, DRIFTED, INTERRUPTED, IN_PROGRESS = "clean", "patched", "drifted", "interrupted", "in-progress"


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Outcome:
    action: str  # applied | repatched | already-patched | nothing-to-change | reverted | nothing-to-revert
    plan: Plan | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Status:
    target: str
    version: str
    state: str
    files: dict[str, str]  # path -> original | patched | drifted | missing
    journal: Journal | None

    def to_json(self) -> dict:
        return {"target": self.target, "version": self.version, "state": self.state, "files": self.files,
                "rules": self.journal.rules if self.journal else [],
                "patched_at": self.journal.created if self.journal else None}


def read_original(installed: InstalledTarget, journal: Journal | None) -> Callable[[str], str]:
    """A source reader for planning that prefers saved originals, so a patched target re-plans from scratch."""
    saved = {e.path: e for e in journal.files} if journal else {}

    def read(rel: str) -> str:
        if rel in saved:
            return saved_original(installed.state_dir, saved[rel]).decode("utf-8")
        return read_source(installed.path(rel))

    return read


def status(installed: InstalledTarget) -> Status:
    journal = Journal.load(installed.state_dir)
    if journal is None:
        return Status(installed.name, installed.version, CLEAN, {}, None)
    files = journal.file_states(installed.site_packages)
    if journal.status == PENDING:
        state = IN_PROGRESS if is_locked(installed.package_dir) else INTERRUPTED
    elif all(s == "patched" for s in files.values()) and journal.version == installed.version:
        state = PATCHED
    else:
        state = DRIFTED
    return Status(installed.name, installed.version, state, files, journal)


def apply_patch(installed: InstalledTarget, rules: Sequence[Rule], only: Sequence[str] = (),
                progress: Progress = _quiet, need_plan: bool = False) -> Outcome:
    """Patch ``installed`` with ``rules``; ``need_plan`` asks for the plan even when nothing is to be done."""
    with dir_lock(installed.package_dir, on_wait=progress):
        journal = Journal.load(installed.state_dir)
        notes = []
        if journal is None and installed.state_dir.exists():
            remove_state(installed.state_dir)  # originals of a patch that stopped before its journal
        if journal is not None:
            if journal.status == PENDING:
                progress("a previous patch was interrupted: restoring the originals first")
                _restore(installed, journal, force=False, progress=progress)
                notes.append("repaired an interrupted patch")
            else:
                current = status(installed)
                if current.state == DRIFTED:
                    bad = {p: s for p, s in current.files.items() if s != "patched"}
                    raise StateError(
                        f"{installed.name} was patched, but files changed since: "
                        + ", ".join(f"{p} ({s})" for p, s in sorted(bad.items())),
                        hint=f"`porter revert {installed.name} --force` puts the saved originals back, "
                             f"or reinstall {installed.target.distribution} and remove {installed.state_dir}")
                chosen, _ = select_rules(installed, rules, only)
                if not need_plan and journal.rules_fingerprint == fingerprint(chosen):
                    return Outcome("already-patched", None, [e.path for e in journal.files])
                wanted = make_plan(installed, rules, only, read=read_original(installed, journal))
                if _same_patch(wanted, journal):
                    return Outcome("already-patched", wanted, [e.path for e in journal.files])
                progress("the rules changed since the last patch: reverting, then patching again")
                _restore(installed, journal, force=False, progress=progress)
                notes.append("reverted the previous patch (rules changed)")
        plan = make_plan(installed, rules, only)
        if not plan.changed:
            return Outcome("nothing-to-change", plan, notes=notes)
        _write(installed, plan, progress)
        return Outcome("repatched" if notes else "applied", plan, [f.path for f in plan.changed], notes)


def _same_patch(plan: Plan, journal: Journal) -> bool:
    planned = {f.path: sha256_bytes(f.after.encode("utf-8")) for f in plan.changed}
    recorded = {e.path: e.patched_sha256 for e in journal.files}
    return planned == recorded and sorted(r.id for r in plan.rules) == sorted(journal.rules)


def _write(installed: InstalledTarget, plan: Plan, progress: Progress) -> None:
    state_dir = installed.state_dir
    # 0. every file still as planned, before anything is written
    originals = {}
    for f in plan.changed:
        disk = installed.path(f.path)
        originals[f.path] = disk.read_bytes()
        if originals[f.path].decode("utf-8") != f.before:
            raise StateError(f"{disk} changed while porter was planning; nothing was written", hint="run it again")
    entries = [FileEntry(path=f.path, original_sha256=sha256_bytes(originals[f.path]),
                         patched_sha256=sha256_bytes(f.after.encode("utf-8")),
                         mode=installed.path(f.path).stat().st_mode & 0o7777, rules=f.rule_ids) for f in plan.changed]
    journal = Journal(target=installed.name, distribution=installed.target.distribution,
                      version=installed.version, status=PENDING, rules=[r.id for r in plan.rules], files=entries,
                      rules_fingerprint=fingerprint(plan.rules))
    # 1. originals: until the journal exists nothing refers to them; a failure here removes them again
    #    (a crash leaves them unreferenced, and the next patch or revert clears them).
    try:
        for rel, data in originals.items():
            atomic_write(originals_dir(state_dir) / rel, data)
        # 2. the journal, marked pending: from here on a crash is "interrupted" and revert knows every file.
        journal.save(state_dir)
    except BaseException:
        remove_state(state_dir)
        raise
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    # 3. one atomic replace per file: each file is always either its original or its patched self.
    for n, f in enumerate(plan.changed, 1):
        if delay and n > 1:
            time.sleep(delay)
        disk = installed.path(f.path)
        atomic_write(disk, f.after.encode("utf-8"))
        drop_bytecode(disk)
        progress(f"patched {n}/{len(plan.changed)} {f.path}")
    # 4. done.
    journal.status = APPLIED
    journal.save(state_dir)


def revert(installed: InstalledTarget, force: bool = False, progress: Progress = _quiet) -> Outcome:
    with dir_lock(installed.package_dir, on_wait=progress):
        journal = Journal.load(installed.state_dir)
        if journal is None:
            if installed.state_dir.exists():  # originals saved by a patch that stopped before its journal
                remove_state(installed.state_dir)
            return Outcome("nothing-to-revert")
        files = _restore(installed, journal, force=force, progress=progress)
        return Outcome("reverted", files=files)


def _restore(installed: InstalledTarget, journal: Journal, force: bool, progress: Progress) -> list[str]:
    """Put every journaled file back to its original bytes, check the hashes, then drop the state."""
    states = journal.file_states(installed.site_packages)
    if journal.status != PENDING:
        # Mark the journal pending first: a crash half-way through the restore is then "interrupted"
        # (each file original or patched), which the next revert or patch repairs, not "drifted".
        checked = {p: s for p, s in states.items() if s in ("drifted", "missing")}
        if not checked or force:
            journal.status = PENDING
            journal.save(installed.state_dir)
    foreign = {p: s for p, s in states.items() if s in ("drifted", "missing")}
    if foreign and not force:
        raise StateError(
            "refusing to revert: these files match neither their original nor their patched version: "
            + ", ".join(f"{p} ({s})" for p, s in sorted(foreign.items())),
            hint="they were edited by hand, or the package was reinstalled or upgraded; "
                 "--force restores the saved originals over them")
    restored = []
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    for entry in journal.files:
        if states[entry.path] == "original":
            continue
        if delay and restored:
            time.sleep(delay)
        disk = installed.path(entry.path)
        atomic_write(disk, saved_original(installed.state_dir, entry), mode=entry.mode)
        drop_bytecode(disk)
        restored.append(entry.path)
        progress(f"restored {entry.path}")
    wrong = [e.path for e in journal.files if sha256_file(installed.path(e.path)) != e.original_sha256]
    if wrong:
        raise StateError(f"after restoring, these files still differ from their originals: {', '.join(wrong)}",
                         hint=f"the journal and originals are kept in {installed.state_dir}")
    remove_state(installed.state_dir)
    return restored
