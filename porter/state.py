"""What a target's patch is now: its journal read as untrusted input, saved originals without one, temporary files
of a killed write, and the seven states `porter status` reports. Reading only: the transaction that changes them
is porter.patcher."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .diskio import sha256_file
from .errors import StateError
from .journal import (
    PENDING,
    Journal,
    check_real_folders,
    leftover_temporaries,
    original_problem,
    originals_dir,
    stray_originals,
)
from .lock import is_locked
from .target import InstalledTarget, changed_since_install

PatchState = Literal["clean", "patched", "drifted", "interrupted", "in-progress", "orphaned", "damaged"]
CLEAN: PatchState = "clean"
PATCHED: PatchState = "patched"
DRIFTED: PatchState = "drifted"
INTERRUPTED: PatchState = "interrupted"
IN_PROGRESS: PatchState = "in-progress"
# saved originals with no journal, and installed files that differ from them (the journal was deleted)
ORPHANED: PatchState = "orphaned"
# the journal is there, but a saved original it needs is missing or altered: revert cannot restore that file
DAMAGED: PatchState = "damaged"


@dataclass
class Status:
    target: str
    version: str
    state: PatchState
    files: dict[str, str]  # path -> original | patched | drifted | missing
    journal: Journal | None
    changed_since_install: list[str] = field(default_factory=list)  # unpatched files that differ from RECORD

    def to_json(self) -> dict:
        return {"target": self.target, "version": self.version, "state": self.state, "files": self.files,
                "rules": self.journal.rules if self.journal else [],
                "patched_at": self.journal.created if self.journal else None,
                "changed_since_install": self.changed_since_install}


def orphans(installed: InstalledTarget, ignore_journal: bool = False) -> dict[str, str]:
    """Saved originals without a journal that the installed file no longer equals: 'differs' or 'missing'.

    Those that equal it are only copies (a patch killed before its journal) and are left out."""
    if Journal.path_in(installed.state_dir).exists() and not ignore_journal:
        return {}
    found = {}
    for rel in stray_originals(installed.state_dir):
        disk = installed.path(rel)
        now = None if disk.is_dir() else sha256_file(disk)
        saved = sha256_file(originals_dir(installed.state_dir) / rel)
        if now != saved:
            found[rel] = "missing" if now is None else "differs"
    return found


def load_journal(installed: InstalledTarget) -> Journal | None:
    """The target's journal, every field checked, and every path it names inside the target's package: a journal
    is untrusted input, and revert writes where it points."""
    check_real_folders(installed.state_dir)
    journal = Journal.load(installed.state_dir)
    if journal is not None:
        for entry in journal.files:
            problem = outside_package(installed, entry.path)
            if problem:
                raise StateError(f"{Journal.path_in(installed.state_dir)}: unreadable journal ({problem})",
                                 hint=f"`porter revert {installed.name} --force` restores the saved originals in the "
                                      "originals/ folder beside it (porter status shows them)")
    return journal


def outside_package(installed: InstalledTarget, rel: str) -> str | None:
    """Why ``rel`` (relative to site-packages) is not a file of the target's package, or None if it is. The file
    itself may be a symlink (porter replaces the link, never what it points at); its folders may not lead out."""
    parts = rel.split("/")
    where = f"the package {installed.target.package}/" if installed.target.kind == "plugin" else \
        f"{installed.root}" if installed.target.kind == "folder" else \
        f"{installed.target.distribution}'s files ({', '.join(installed.tops)})"
    if not installed.owns(rel):
        return f"{rel!r} is outside {where}"
    # the folder the file's folders must stay within: the package; for a folder or distribution its top folder
    top = (installed.root / parts[0]).resolve() if len(parts) > 1 else installed.root.resolve()
    parent = installed.path(rel).parent.resolve()
    if parent != top and top not in parent.parents:
        return f"{rel!r} lies in a folder that leads outside {where}"
    return None


def temporaries(installed: InstalledTarget) -> list[Path]:
    """atomic_write's temporary files that a killed porter left in the package or the state folder (for a
    distribution or folder: in the folders of its files)."""
    if installed.target.kind == "plugin":
        return leftover_temporaries(installed.package_dir) + leftover_temporaries(installed.state_dir)
    from .generic import temporaries as next_to_files

    return next_to_files(installed) + leftover_temporaries(installed.state_dir)


def status(installed: InstalledTarget) -> Status:
    try:
        journal = load_journal(installed)
    except StateError as exc:  # shown, not raised: `porter status` is how a user finds out what to do
        files = {Journal.path_in(installed.state_dir).name: exc.message.split(": ", 1)[-1]}
        files.update({rel: "saved original" for rel in stray_originals(installed.state_dir)})
        return Status(installed.name, installed.version, DAMAGED, files, None)
    leftovers = {str(p.relative_to(installed.site_packages)): "temporary file of an interrupted write"
                 for p in temporaries(installed)}
    if journal is None:
        left = {p: f"orphaned original ({s})" for p, s in orphans(installed).items()}
        try:
            changed = [] if left else changed_since_install(installed)
        except StateError as exc:  # a damaged RECORD: shown, as status shows every other problem; patch refuses
            changed = [exc.message]
        state = ORPHANED if left else CLEAN
        if leftovers and state == CLEAN:
            state = IN_PROGRESS if is_locked(installed.package_dir) else INTERRUPTED
        return Status(installed.name, installed.version, state, {**left, **leftovers}, None, changed)
    files = journal.file_states(installed.site_packages)
    lost = {e.path: f"original {problem}" for e in journal.files
            if files[e.path] != "original" and (problem := original_problem(installed.state_dir, e))}
    listed = {e.path for e in journal.files}
    lost.update({rel: "saved original the journal does not list" for rel in stray_originals(installed.state_dir)
                 if rel not in listed})
    if (journal.status == PENDING or leftovers) and is_locked(installed.package_dir):
        state = IN_PROGRESS  # another porter is writing: its temporary files are in use
    elif lost:
        state, files = DAMAGED, {**files, **lost}
    elif journal.status == PENDING or leftovers:
        state = INTERRUPTED
    elif all(s == "patched" for s in files.values()) and journal.version == installed.version:
        state = PATCHED
    else:
        state = DRIFTED
    return Status(installed.name, installed.version, state, {**files, **leftovers}, journal)
