"""The patch transaction: plan -> save originals -> journal pending -> replace -> journal applied.

Every step is ordered so that a crash at any point leaves either the untouched target or a journal that
`status` reports as interrupted and `revert` (or the next `patch`) repairs.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .diskio import atomic_symlink, atomic_write, check_writable, drop_bytecode, sha256_bytes, sha256_file
from .errors import StateError
from .journal import (
    APPLIED,
    PENDING,
    FileEntry,
    Journal,
    check_real_folders,
    original_problem,
    originals_dir,
    read_original,
    remove_state,
    saved_original,
    stray_originals,
)
from .lock import dir_lock
from .state import DAMAGED, DRIFTED, Status, load_journal, orphans, outside_package, status, temporaries
from .target import InstalledTarget, changed_since_install, record_hashes

if TYPE_CHECKING:  # planning pulls in libcst: `porter status` and `revert` never need it
    from .plan import Plan
    from .rules import Rule

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# Called at each named step of a transaction: "originals-saved", "journal-pending", "wrote N/M", "applied";
# "revert-pending", "restored N/M", "restored-all". Fault-injection tests set it (tests/fault_runner.py kills or
# pauses the process at a step); porter itself never does.
step_hook: Callable[[str], None] = _quiet


@dataclass
class Outcome:
    action: str  # applied | repatched | already-patched | nothing-to-change | reverted | nothing-to-revert
    plan: Plan | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _clear_strays(installed: InstalledTarget) -> None:
    """Remove a state folder without a journal, but only when it holds nothing the installed files lack."""
    differing = orphans(installed)
    if differing:
        raise StateError(
            f"{installed.state_dir} holds saved originals but no journal, and the installed files differ from "
            f"them: " + ", ".join(f"{p} ({s})" for p, s in sorted(differing.items())) + "; nothing was changed",
            hint=f"`porter revert {installed.name}` restores those originals (checked against the package's RECORD)")
    remove_state(installed.state_dir, installed.site_packages)


def _clear_temporaries(installed: InstalledTarget, progress: Progress) -> None:
    """Remove the temporary files of a write that was killed (under the lock, so none is in use)."""
    for path in temporaries(installed):
        path.unlink(missing_ok=True)
        progress(f"removed {path.relative_to(installed.site_packages)}, left by an interrupted write")


def apply_patch(installed: InstalledTarget, rules: Sequence[Rule], only: Sequence[str] = (),
                progress: Progress = _quiet, need_plan: bool = False, force: bool = False,
                accept_modified: bool = False) -> Outcome:
    """Patch ``installed`` with ``rules``; ``need_plan`` asks for the plan even when nothing is to be done;
    ``force`` lets ``only`` replace a patch made with other rules; ``accept_modified`` patches files that differ
    from what pip installed."""
    from .plan import make_plan

    with dir_lock(installed.package_dir, on_wait=progress):
        journal = load_journal(installed)
        notes: list[str] = []
        _clear_temporaries(installed, progress)
        if journal is None and installed.state_dir.exists():
            _clear_strays(installed)  # originals of a patch that stopped before its journal
        if journal is not None:
            done = _over_earlier_patch(installed, journal, rules, only, progress, need_plan, force, notes)
            if done is not None:
                return done
        if not accept_modified and not installed.target.generic:
            _refuse_modified(installed, rules, only)
        plan = make_plan(installed, rules, only)
        if not accept_modified and installed.target.generic:  # its files are known once it is planned
            _refuse_changed(installed, {f.path for f in plan.changed})
        if not plan.changed:
            return Outcome("nothing-to-change", plan, notes=notes)
        _write(installed, plan, progress)
        return Outcome("repatched" if notes else "applied", plan, [f.path for f in plan.changed], notes)


def _over_earlier_patch(installed: InstalledTarget, journal: Journal, rules: Sequence[Rule], only: Sequence[str],
                        progress: Progress, need_plan: bool, force: bool, notes: list[str]) -> Outcome | None:
    """A target with a journal: the Outcome when it already holds this patch; else the earlier patch is restored
    (an interrupted one, or one made with other rules: each noted in ``notes``) and None lets the patch go on.
    Refuses a damaged or drifted patch, and ``--only`` replacing a fuller one without ``force``."""
    from .plan import make_plan, select_rules
    from .rules import fingerprint

    current = status(installed)
    if current.state == DAMAGED:
        lost = {p: s for p, s in current.files.items() if "original" in s and s != "original"}
        raise StateError(f"{installed.name} was patched, but saved originals are "
                         + ", ".join(f"{p} ({s.removeprefix('original ')})" for p, s in sorted(lost.items()))
                         + "; nothing was changed",
                         hint=f"`porter revert {installed.name}` says what it can restore")
    # restoring is the first write of a repair or re-patch: the files must be writable before it
    writable = [installed.path(e.path) for e in journal.files] + [originals_dir(installed.state_dir)]
    if journal.status == PENDING:
        progress("a previous patch was interrupted: restoring the originals first")
        check_writable(writable)
        _restore(installed, journal, force=False, progress=progress)
        notes.append("repaired an interrupted patch")
        return None
    if current.state == DRIFTED:
        _refuse_drifted(installed, journal, current)
    chosen, _ = select_rules(installed, rules, only)
    if only and sorted(r.id for r in chosen) != sorted(journal.rules) and not force:
        raise StateError(
            f"{installed.name} is patched with {len(journal.rules)} rule(s); --only would replace that "
            f"patch with {len(chosen)}: {', '.join(r.id for r in chosen)}",
            hint=f"add --force to do so, or `porter revert {installed.name}` first")
    if not need_plan and journal.rules_fingerprint == fingerprint(chosen):
        return Outcome("already-patched", None, [e.path for e in journal.files])
    wanted = make_plan(installed, rules, only, read=read_original(installed, journal))
    if _same_patch(wanted, journal):
        return Outcome("already-patched", wanted, [e.path for e in journal.files])
    progress("the rules changed since the last patch: reverting, then patching again")
    check_writable(writable + [installed.path(f.path) for f in wanted.changed])
    _restore(installed, journal, force=False, progress=progress)
    notes.append("reverted the previous patch (rules changed)")
    return None


def _refuse_drifted(installed: InstalledTarget, journal: Journal, current: Status) -> None:
    """A patched target whose files changed since (by hand, or an upgrade) is never patched over."""
    bad = {p: s for p, s in current.files.items() if s != "patched"}
    upgraded = journal.version != installed.version
    raise StateError(
        f"{installed.name} was patched, but files changed since: "
        + ", ".join(f"{p} ({s})" for p, s in sorted(bad.items()))
        + (f" (it was {journal.version} then, it is {installed.version} now)" if upgraded else ""),
        hint=(f"the saved originals are {journal.version}'s: remove {installed.state_dir}, then "
              f"patch {installed.version} afresh" if upgraded else
              f"`porter revert {installed.name} --force` puts the saved originals back, or "
              + _pristine(installed, journal.version) + f" and remove {installed.state_dir}"))


def _refuse_modified(installed: InstalledTarget, rules: Sequence[Rule], only: Sequence[str]) -> None:
    from .plan import select_rules

    chosen, _ = select_rules(installed, rules, only)
    _refuse_changed(installed, {rel for rule in chosen for rel in rule.files_for(installed.version)})


def _refuse_changed(installed: InstalledTarget, paths: set[str]) -> None:
    changed = changed_since_install(installed, paths) if installed.target.kind != "folder" else []
    if changed:
        raise StateError(
            f"{installed.target.distribution} {installed.version}: files changed since install (they differ from the "
            f"sha256 in its RECORD): {', '.join(changed)}; nothing was changed",
            hint=f"reinstall the pristine files (pip install --force-reinstall --no-deps "
                 f"{installed.target.distribution}=={installed.version}), or patch them as they are with "
                 f"--accept-modified")


def _pristine(installed: InstalledTarget, version: str) -> str:
    """How a user gets the files back without porter: a folder from its version control, a package from pip."""
    if installed.target.kind == "folder":
        return "restore the files from version control"
    return f"reinstall {installed.target.distribution}=={version}"


def _same_patch(plan: Plan, journal: Journal) -> bool:
    planned = {f.path: sha256_bytes(f.after.encode("utf-8")) for f in plan.changed}
    recorded = {e.path: e.patched_sha256 for e in journal.files}
    return planned == recorded and sorted(r.id for r in plan.rules) == sorted(journal.rules)


def _write(installed: InstalledTarget, plan: Plan, progress: Progress) -> None:
    state_dir = installed.state_dir
    # 0. every file still as planned, before anything is written
    originals = _still_as_planned(installed, plan)
    journal = _journal_for(installed, plan, originals)
    check_writable([installed.path(f.path) for f in plan.changed] + [originals_dir(state_dir) / "x"])
    # 1. originals: until the journal exists nothing refers to them; a failure here removes them again
    #    (a crash leaves them unreferenced copies of the installed files, which the next patch or revert clears).
    from .generic import gitignore_to_make, write_gitignore

    try:
        for rel, data in originals.items():
            check_real_folders(state_dir, originals_dir(state_dir) / rel)  # never written through a planted link
            atomic_write(originals_dir(state_dir) / rel, data)
        step_hook("originals-saved")
        # 2. the journal, marked pending: from here on a crash is "interrupted" and revert knows every file, and
        #    what it will make beside the state (a folder's .gitignore, written now), which revert alone removes
        journal.made = gitignore_to_make(installed)
        journal.save(state_dir)
        step_hook("journal-pending")
        if journal.made:
            write_gitignore(installed)  # a folder's state: kept out of git
    except OSError as exc:
        remove_state(state_dir, installed.site_packages, journal.made)
        raise StateError(f"could not save the originals ({exc.strerror or exc}: {exc.filename}); nothing was changed",
                         hint="free the space or fix the permissions, then run it again") from None
    except BaseException:
        remove_state(state_dir, installed.site_packages, journal.made)
        raise
    _replace_files(installed, plan, journal, originals, progress)


def _replace_files(installed: InstalledTarget, plan: Plan, journal: Journal, originals: dict[str, bytes],
                   progress: Progress) -> None:
    """Steps 3 and 4 of a patch: each file replaced atomically (a failure rolls every one back), then the journal
    marked applied."""
    state_dir = installed.state_dir
    # 3. one atomic replace per file: each file is always either its original or its patched self.
    try:
        for n, f in enumerate(plan.changed, 1):
            disk = installed.path(f.path)
            atomic_write(disk, f.after.encode("utf-8"))
            drop_bytecode(disk)
            progress(f"patched {n}/{len(plan.changed)} {f.path}")
            step_hook(f"wrote {n}/{len(plan.changed)}")
    except OSError as exc:
        _roll_back(installed, journal, originals, exc, failed=f.path)
    # 4. done.
    journal.status = APPLIED
    try:
        journal.save(state_dir)
    except OSError as exc:  # every file is patched, the journal still says pending: "interrupted", and repairable
        raise StateError(f"could not mark the patch done in {Journal.path_in(state_dir)} ({exc.strerror or exc}): "
                         "the patch is interrupted", hint=f"free the space, then `porter revert {installed.name}` "
                                                          f"or `porter patch {installed.name}` again") from None
    step_hook("applied")


def _still_as_planned(installed: InstalledTarget, plan: Plan) -> dict[str, bytes]:
    """Each changed file's bytes on disk, which must still be the text that was planned."""
    originals = {}
    for f in plan.changed:
        disk = installed.path(f.path)
        try:
            originals[f.path] = disk.read_bytes()
        except OSError as exc:
            raise StateError(f"{disk} changed while porter was planning ({exc.strerror}); nothing was written",
                             hint="run it again") from None
        if originals[f.path] != f.before.encode("utf-8"):
            raise StateError(f"{disk} changed while porter was planning; nothing was written", hint="run it again")
    return originals


def _journal_for(installed: InstalledTarget, plan: Plan, originals: dict[str, bytes]) -> Journal:
    """The pending journal of this patch: each file's two hashes, mode, rules and link text."""
    from .rules import fingerprint

    entries = [FileEntry(path=f.path, original_sha256=sha256_bytes(originals[f.path]),
                         patched_sha256=sha256_bytes(f.after.encode("utf-8")),
                         mode=installed.path(f.path).stat().st_mode & 0o7777, rules=f.rule_ids,
                         symlink=_link_text(installed.path(f.path))) for f in plan.changed]
    outside = [why for e in entries if (why := outside_package(installed, e.path))]
    if outside:
        raise StateError("; ".join(outside) + "; nothing was changed",
                         hint="a rule may only change files of its target's package")
    return Journal(target=installed.name, distribution=installed.target.distribution,
                   version=installed.version, status=PENDING, rules=[r.id for r in plan.rules], files=entries,
                   rules_fingerprint=fingerprint(plan.rules), kind=installed.target.kind)


def _link_text(path: Path) -> str | None:
    """The symlink's own text (its target as written), or None for a regular file: a patch replaces the link with
    a patched file (what it points at is someone else's file, maybe outside the package) and revert makes the
    link again."""
    return os.readlink(path) if path.is_symlink() else None


def _put_back(installed: InstalledTarget, entry: FileEntry, data: bytes) -> None:
    """Restore one journaled file: its original bytes, or the symlink it was (when the link leads back to them)."""
    disk = installed.path(entry.path)
    if entry.symlink is not None:
        atomic_symlink(disk, entry.symlink)
        if sha256_file(disk) == entry.original_sha256:
            drop_bytecode(disk)
            return
        # the link's target changed or went away since the patch: the bytes are what the user had
    atomic_write(disk, data, mode=entry.mode)
    drop_bytecode(disk)


def _roll_back(installed: InstalledTarget, journal: Journal, originals: dict[str, bytes], exc: OSError,
               failed: str) -> None:
    """A write failed half-way (disk full, a file made immutable meanwhile): put back every file that is not its
    original any more (a replace can fail after its rename, so what was written is read from the disk), check
    every hash, and only then drop the saved originals."""
    try:
        for entry in journal.files:
            disk = installed.path(entry.path)
            if sha256_file(disk) != entry.original_sha256 or (entry.symlink is not None and not disk.is_symlink()):
                _put_back(installed, entry, originals[entry.path])
        wrong = [e.path for e in journal.files if sha256_file(installed.path(e.path)) != e.original_sha256]
    except OSError as again:
        wrong = [f"{again.filename or failed} ({again.strerror or again})"]
    if wrong:
        raise StateError(f"could not write {installed.path(failed)} ({exc.strerror or exc}), and putting back the "
                         f"files already written failed too ({', '.join(wrong)}): the patch is interrupted",
                         hint=f"free the space or fix the permissions, then `porter revert {installed.name}`") from None
    remove_state(installed.state_dir, installed.site_packages, journal.made)
    raise StateError(f"could not write {installed.path(failed)} ({exc.strerror or exc}); the files already written "
                     f"were put back, so nothing is changed",
                     hint="free the space or fix the permissions, then run it again") from None


def revert(installed: InstalledTarget, force: bool = False, progress: Progress = _quiet) -> Outcome:
    with dir_lock(installed.package_dir, on_wait=progress):
        try:
            journal = load_journal(installed)
        except StateError:
            if not force:
                raise
            # an unreadable journal: what is on disk is all there is; restore every saved original that differs
            progress(f"{Journal.path_in(installed.state_dir)} is unreadable: restoring from the saved originals")
            files = _restore_orphans(installed, sorted(orphans(installed, ignore_journal=True)), force, progress)
            return Outcome("reverted", files=files, notes=["restored from the saved originals (unreadable journal)"])
        leftovers = temporaries(installed)
        _clear_temporaries(installed, progress)
        if journal is None:
            differing = orphans(installed)
            if differing:
                files = _restore_orphans(installed, sorted(differing), force, progress)
                return Outcome("reverted", files=files, notes=["restored from saved originals that had no journal"])
            if installed.state_dir.exists():  # strays of a patch that stopped before its journal: copies only
                remove_state(installed.state_dir, installed.site_packages)
            if leftovers:
                return Outcome("reverted", notes=[f"removed {len(leftovers)} temporary file(s) of an interrupted write"])
            return Outcome("nothing-to-revert")
        files = _restore(installed, journal, force=force, progress=progress)
        return Outcome("reverted", files=files)


def _restore_orphans(installed: InstalledTarget, paths: list[str], force: bool, progress: Progress) -> list[str]:
    """Put back saved originals that lost their journal, each vouched for by the package's RECORD."""
    _refuse_outside(installed, paths)
    record = record_hashes(installed)
    saved = {p: (originals_dir(installed.state_dir) / p).read_bytes() for p in paths}
    unvouched = [p for p in paths if record.get(p) != sha256_bytes(saved[p])]
    if unvouched and not force:
        raise StateError(
            f"{installed.state_dir} holds saved originals but no journal, and the package's RECORD does not vouch "
            f"for these: {', '.join(unvouched)}; nothing was changed",
            hint="--force restores them anyway; or " + _pristine(installed, installed.version)
                 + f" and remove {installed.state_dir}")
    _refuse_folders(installed, paths)
    check_writable([installed.path(p) for p in paths])
    for rel in paths:
        disk = installed.path(rel)
        atomic_write(disk, saved[rel])
        drop_bytecode(disk)
        progress(f"restored {rel} (from a saved original without a journal)")
    wrong = [p for p in paths if sha256_file(installed.path(p)) != sha256_bytes(saved[p])]
    if wrong:
        raise StateError(f"after restoring, these files still differ from their originals: {', '.join(wrong)}")
    remove_state(installed.state_dir, installed.site_packages)
    return paths


def _restore(installed: InstalledTarget, journal: Journal, force: bool, progress: Progress) -> list[str]:
    """Put every journaled file back to its original bytes, check the hashes, then drop the state. Everything
    that could refuse is checked before the first write."""
    states = journal.file_states(installed.site_packages)
    _refuse_lost_originals(installed, journal, states)
    extra = _unlisted_originals(installed, journal, force)
    # the saved originals are removed at the end: their folders must allow it too, or the revert ends half-way
    check_writable([installed.path(e.path) for e in journal.files if states[e.path] != "original"]
                   + [installed.path(rel) for rel in extra]
                   + [originals_dir(installed.state_dir) / rel for rel in stray_originals(installed.state_dir)])
    if force:  # without --force a file turned folder is "drifted", which _mark_reverting refuses
        _refuse_folders(installed, [e.path for e in journal.files])
    _mark_reverting(installed, journal, states, force)
    todo = [e for e in journal.files if states[e.path] != "original"]
    restored = _put_all_back(installed, todo, extra, progress)
    wrong = [e.path for e in journal.files if sha256_file(installed.path(e.path)) != e.original_sha256]
    if wrong:
        raise StateError(f"after restoring, these files still differ from their originals: {', '.join(wrong)}",
                         hint=f"the journal and originals are kept in {installed.state_dir}")
    step_hook("restored-all")
    remove_state(installed.state_dir, installed.site_packages, journal.made)
    return restored


def _refuse_lost_originals(installed: InstalledTarget, journal: Journal, states: dict[str, str]) -> None:
    """Every saved original a revert needs (its file is not already original) must be there and intact."""
    lost = {e.path: why for e in journal.files
            if states[e.path] != "original" and (why := original_problem(installed.state_dir, e))}
    if lost:
        raise StateError(
            "cannot revert: saved originals are " + ", ".join(f"{p} ({why})" for p, why in sorted(lost.items()))
            + f" in {originals_dir(installed.state_dir)}; nothing was changed",
            hint=_pristine(installed, journal.version) + f" to get pristine files, then remove {installed.state_dir}")


def _unlisted_originals(installed: InstalledTarget, journal: Journal, force: bool) -> list[str]:
    """Saved originals the journal does not list (a shortened list) whose files differ from them. They are the only
    copies of those files, so the set on disk decides what a revert must put back, and only --force does it
    without the journal's word."""
    listed = {e.path for e in journal.files}
    extra = [rel for rel in stray_originals(installed.state_dir) if rel not in listed]
    if extra and not force:
        raise StateError(
            f"the journal lists {len(listed)} file(s), but {originals_dir(installed.state_dir)} also holds saved "
            f"originals of {', '.join(extra)}: the journal was shortened or damaged; nothing was changed",
            hint=f"`porter revert {installed.name} --force` restores the journal's files and those too, from the "
                 "saved originals")
    _refuse_outside(installed, extra)
    saved = originals_dir(installed.state_dir)
    return [rel for rel in extra if sha256_file(installed.path(rel)) != sha256_file(saved / rel)]


def _refuse_outside(installed: InstalledTarget, paths: list[str]) -> None:
    """Saved originals whose paths lead outside the target's package are never restored (a planted state)."""
    outside = [why for rel in paths if (why := outside_package(installed, rel))]
    if outside:
        raise StateError(f"{originals_dir(installed.state_dir)} holds files porter would not restore: "
                         + "; ".join(outside) + "; nothing was changed",
                         hint=f"remove them from {installed.state_dir} by hand if they are not yours")


def _refuse_folders(installed: InstalledTarget, paths: list[str]) -> None:
    """A file a revert would write where a folder now stands is refused before any write."""
    folders = [p for p in paths if installed.path(p).is_dir()]
    if folders:
        raise StateError(f"cannot restore files over folders: {', '.join(folders)}; nothing was changed",
                         hint="remove them, then revert again")


def _mark_reverting(installed: InstalledTarget, journal: Journal, states: dict[str, str], force: bool) -> None:
    """Mark the journal pending before the first write, so a crash half-way is "interrupted" (each file original
    or patched), which the next revert or patch repairs, not "drifted"; refuse files that match neither hash."""
    foreign = {p: s for p, s in states.items() if s in ("drifted", "missing")}
    if journal.status != PENDING and (not foreign or force):
        journal.status = PENDING
        journal.save(installed.state_dir)
        step_hook("revert-pending")
    if foreign and not force:
        raise StateError(
            "refusing to revert: these files match neither their original nor their patched version: "
            + ", ".join(f"{p} ({s})" for p, s in sorted(foreign.items())),
            hint="they were edited by hand, or the package was reinstalled or upgraded; "
                 "--force restores the saved originals over them")


def _put_all_back(installed: InstalledTarget, todo: list[FileEntry], extra: list[str], progress: Progress
                  ) -> list[str]:
    """The writes of a revert: each journaled file, then each unlisted saved original, atomically."""
    restored = []
    try:
        for n, entry in enumerate(todo, 1):
            _put_back(installed, entry, saved_original(installed.state_dir, entry))
            restored.append(entry.path)
            progress(f"restored {entry.path}")
            step_hook(f"restored {n}/{len(todo)}")
        for rel in extra:
            disk = installed.path(rel)
            atomic_write(disk, (originals_dir(installed.state_dir) / rel).read_bytes())
            drop_bytecode(disk)
            restored.append(rel)
            progress(f"restored {rel} (a saved original the journal did not list)")
    except OSError as exc:
        raise StateError(f"could not restore {exc.filename or installed.package_dir} ({exc.strerror or exc}); the "
                         "revert is interrupted: every file is its original or its patched self",
                         hint=f"free the space or fix the permissions, then `porter revert {installed.name}` "
                              "again") from None
    return restored
