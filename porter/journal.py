"""The journal: what a patch changed, written before the first file is touched.

Layout, beside the target's package in site-packages::

    .porter-state/<target>/journal.json  this record
(the inter-process lock is an flock on the package directory itself, so no lock file exists)
    .porter-state/<target>/originals/... byte-exact copies of every file before patching
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from . import __version__
from .diskio import atomic_write, read_source, sha256_bytes, sha256_file
from .errors import StateError

if TYPE_CHECKING:
    from .target import InstalledTarget

FORMAT = 1
MAX_JOURNAL_BYTES = 64 << 20  # a journal lists a package's files: far below this
JournalStatus = Literal["pending", "applied"]
PENDING: JournalStatus = "pending"  # originals saved, files being replaced: a crash here is "interrupted"
APPLIED: JournalStatus = "applied"


@dataclass
class FileEntry:
    path: str  # relative to site-packages
    original_sha256: str
    patched_sha256: str
    mode: int
    rules: list[str]
    symlink: str | None = None  # the link's text when the installed path was a symlink: revert makes it again


_SHA256 = re.compile(r"[0-9a-f]{64}")
# field -> (types it may hold, whether it may be left out); a journal is untrusted input (a hand edit, a bug,
# another tool's half-written file): every field is checked before anything is read from it
_ENTRY_FIELDS = {"path": (str, False), "original_sha256": (str, False), "patched_sha256": (str, False),
                 "mode": (int, False), "rules": (list, False), "symlink": ((str, type(None)), True)}
_JOURNAL_FIELDS = {"target": (str, False), "distribution": (str, False), "version": (str, False),
                   "status": (str, False), "rules": (list, False), "files": (list, False),
                   "rules_fingerprint": (str, True), "porter_version": (str, True), "created": (str, True),
                   "format": (int, False), "kind": (str, True), "made": (list, True)}
KINDS = ("plugin", "distribution", "folder")  # porter.target's kinds: who made the patch
GITIGNORE_MADE = ".porter-state/.gitignore"  # relative to the target's root (porter.target.STATE_DIR_NAME)
MADE = (GITIGNORE_MADE,)  # all a journal's `made` may name


def _check_fields(obj, fields: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is {type(obj).__name__}, not an object")
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    for name, (types, optional) in fields.items():
        if name not in obj:
            if not optional:
                raise ValueError(f"{where} lacks {name!r}")
            continue
        value = obj[name]
        if not isinstance(value, types) or isinstance(value, bool):  # bool is an int to isinstance
            raise ValueError(f"{where}.{name} is {type(value).__name__} {value!r:.40}")


def _check_list_of_str(value: list, where: str) -> None:
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} holds a value that is not a string")


def check_rel_path(rel: str, where: str) -> None:
    """A journaled path: relative, '/'-separated, no '..' or '.' part, nothing a file system treats specially."""
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in parts)
            or re.match(r"^[A-Za-z]:", rel)):
        raise ValueError(f"{where} is {rel!r}: not a plain relative path inside the package")


def validate(raw) -> None:
    """Raise ValueError naming the first field of ``raw`` (a parsed journal) that is missing, unknown, of the wrong
    type or out of range."""
    _check_fields(raw, _JOURNAL_FIELDS, "journal")
    if raw["format"] != FORMAT:
        raise ValueError(f"journal format {raw['format']} is not {FORMAT}")
    if raw.get("kind", "plugin") not in KINDS:
        raise ValueError(f"journal.kind is {raw['kind']!r}, not one of {', '.join(KINDS)}")
    if raw["status"] not in (PENDING, APPLIED):
        raise ValueError(f"journal.status is {raw['status']!r}, not {PENDING!r} or {APPLIED!r}")
    _check_list_of_str(raw["rules"], "journal.rules")
    _check_list_of_str(raw.get("made", []), "journal.made")
    strange = [m for m in raw.get("made", []) if m not in MADE]
    if strange:
        raise ValueError(f"journal.made names {strange[0]!r}: porter makes nothing there")
    seen = set()
    for n, entry in enumerate(raw["files"]):
        where = f"journal.files[{n}]"
        _check_fields(entry, _ENTRY_FIELDS, where)
        check_rel_path(entry["path"], f"{where}.path")
        if entry["path"] in seen:
            raise ValueError(f"{where}.path {entry['path']!r} is listed twice")
        seen.add(entry["path"])
        for name in ("original_sha256", "patched_sha256"):
            if not _SHA256.fullmatch(entry[name]):
                raise ValueError(f"{where}.{name} is not a sha256 in hex")
        if not 0 <= entry["mode"] <= 0o7777:
            raise ValueError(f"{where}.mode {entry['mode']} is not a file mode")
        _check_list_of_str(entry["rules"], f"{where}.rules")
        if entry.get("symlink") is not None and ("\0" in entry["symlink"] or not entry["symlink"]):
            raise ValueError(f"{where}.symlink is not a link target")


@dataclass
class Journal:
    target: str
    distribution: str
    version: str
    status: JournalStatus
    rules: list[str]
    files: list[FileEntry]
    rules_fingerprint: str = ""  # porter.rules.fingerprint of the rules that made this patch
    porter_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format: int = FORMAT
    # what made the patch: a plugin's target (journals written before this field are plugins'), a distribution by
    # its pip name, or a folder; `porter status` reads a distribution's journal as one only when it says so
    kind: str = "plugin"
    # what this patch made beside its state, under the target's root (a folder's `.porter-state/.gitignore`): revert
    # removes these and nothing else of the kind, so a user's own file of the same name and text stays
    made: list[str] = field(default_factory=list)

    # -- storage -------------------------------------------------------------------------------------

    @staticmethod
    def path_in(state_dir: Path) -> Path:
        return Path(state_dir) / "journal.json"

    @classmethod
    def load(cls, state_dir: Path) -> Journal | None:
        """The journal in ``state_dir``, every field checked (:func:`validate`), or None where there is none."""
        path = cls.path_in(state_dir)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            if path.is_symlink() or not path.is_file():
                raise ValueError("not a regular file")
            if path.stat().st_size > MAX_JOURNAL_BYTES:
                raise ValueError(f"over {MAX_JOURNAL_BYTES} bytes")
            raw = json.loads(path.read_bytes().decode("utf-8"))
            if isinstance(raw, dict) and raw.get("format") != FORMAT and isinstance(raw.get("format"), int):
                raise StateError(f"{path}: journal format {raw.get('format')} is not {FORMAT}",
                                 hint="use the porter version that wrote it to revert")
            validate(raw)
        except (ValueError, RecursionError, OSError) as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise StateError(f"{path}: unreadable journal ({exc})",
                             hint=f"`porter revert {state_dir.name} --force` restores the saved originals in the "
                                  "originals/ folder beside it (porter status shows them)") from None
        raw["files"] = [FileEntry(**f) for f in raw["files"]]
        return cls(**raw)

    def save(self, state_dir: Path) -> None:
        data = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        atomic_write(self.path_in(state_dir), data.encode())

    # -- what the files on disk say --------------------------------------------------------------------

    def file_states(self, site_packages: Path) -> dict[str, str]:
        """Each file's state on disk: 'original', 'patched', 'missing' or 'drifted'."""
        states = {}
        for entry in self.files:
            path = Path(site_packages) / entry.path
            digest = None if path.is_dir() else sha256_file(path)
            if path.is_dir():
                states[entry.path] = "drifted"  # replaced by a folder
            elif digest is None:
                states[entry.path] = "missing"
            elif digest == entry.patched_sha256:
                states[entry.path] = "patched"
            elif digest == entry.original_sha256:
                states[entry.path] = "original"
            else:
                states[entry.path] = "drifted"
        return states


def originals_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "originals"


def saved_original(state_dir: Path, entry: FileEntry) -> bytes:
    """The saved original of ``entry``, checked against the hash recorded before the patch."""
    path = originals_dir(state_dir) / entry.path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"saved original {path} is missing; cannot restore {entry.path}") from None
    if sha256_bytes(data) != entry.original_sha256:
        raise StateError(f"saved original {path} does not match its recorded sha256; cannot restore {entry.path}")
    return data


def original_problem(state_dir: Path, entry: FileEntry) -> str | None:
    """Why the saved original of ``entry`` cannot be restored ('missing', 'altered'), or None if it can."""
    digest = sha256_file(originals_dir(state_dir) / entry.path)
    if digest is None:
        return "missing"
    return None if digest == entry.original_sha256 else "altered"


def check_real_folders(state_dir: Path, inner: Path | None = None) -> None:
    """Refuse a state folder reached through a symbolic link: `.porter-state`, the target's folder, `originals/`
    and every folder between it and ``inner``. Through a link, "the saved originals" could be the installed files
    themselves (or anyone's), and clearing them would delete those."""
    state_dir = Path(state_dir)
    chain = [state_dir.parent, state_dir, originals_dir(state_dir)]
    if inner is not None:
        chain += [p for p in reversed(Path(inner).parents) if originals_dir(state_dir) in p.parents]
    links = [str(p) for p in chain if p.is_symlink()]
    if not links and originals_dir(state_dir).is_dir():  # a link planted anywhere below originals/ too
        for folder, dirs, _files in os.walk(originals_dir(state_dir)):
            links += [str(Path(folder) / d) for d in dirs if (Path(folder) / d).is_symlink()]
    if links:
        raise StateError(f"{links[0]} is a symbolic link; porter keeps its journal and saved originals only in "
                         "real folders, and touches nothing through it", hint="remove the link (porter made none)")


def stray_originals(state_dir: Path) -> list[str]:
    """Saved originals (paths relative to site-packages) in a state folder, whatever the journal says: regular
    files in real folders (a link, to a file or a folder, is never one of porter's)."""
    root = originals_dir(state_dir)
    if not root.is_dir() or root.is_symlink() or Path(state_dir).is_symlink() or Path(state_dir).parent.is_symlink():
        return []
    found = []
    for folder, _dirs, files in os.walk(root):  # os.walk does not descend into links to folders
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink() and path.is_file() and not name.endswith(".porter-tmp"):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def unequal_originals(state_dir: Path, site_packages: Path) -> list[str]:
    """Saved originals on disk (the set in the folder, whatever a journal lists) that the installed file does not
    equal: while any exists, the state folder holds the only copy of a user's file."""
    root = originals_dir(state_dir)
    return [rel for rel in stray_originals(state_dir)
            if (Path(site_packages) / rel).is_dir() or sha256_file(Path(site_packages) / rel) != sha256_file(root / rel)]


def remove_state(state_dir: Path, site_packages: Path, made: Sequence[str] = ()) -> None:
    """Delete what porter wrote in the state folder: the journal first (a crash half-way leaves 'clean', not a
    broken journal), then the saved originals and porter's temporary files, then the folders they emptied.

    Refuses while any saved original on disk differs from the installed file: those are the only copies, and the
    set on disk is what counts, not the journal's list (a shortened list must not take the rest with it). A file
    porter did not write is left where it is, with its folders; of what sits beside the state, only what the journal
    says this patch ``made``."""
    state_dir = Path(state_dir)
    check_real_folders(state_dir)
    left = unequal_originals(state_dir, site_packages)
    if left:
        raise StateError(f"{state_dir} still holds the only copy of " + ", ".join(left)
                         + " (the installed file differs); it was kept",
                         hint=f"`porter status` names the state; `porter revert {state_dir.name} --force` restores them")
    journal = Journal.path_in(state_dir)
    root = originals_dir(state_dir)
    ours = [*(root / rel for rel in stray_originals(state_dir)), *leftover_temporaries(state_dir)]
    try:
        if journal.is_file() or journal.is_symlink():
            journal.unlink()
        for path in ours:
            path.unlink(missing_ok=True)
    except OSError as exc:  # the files are restored; what is left are copies of them, which the next run clears
        raise StateError(f"the installed files are as they were, but {exc.filename} could not be removed "
                         f"({exc.strerror or exc})", hint=f"fix the permissions of {state_dir}, then run "
                                                          f"`porter revert {state_dir.name}` again to clear it") from None
    for folder in sorted((p for p in state_dir.rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True) + [state_dir]:
        try:
            folder.rmdir()  # only once empty: anything porter did not write keeps its folder
        except OSError:
            pass
    if GITIGNORE_MADE in made:
        _remove_gitignore(state_dir.parent)
    try:
        state_dir.parent.rmdir()
    except OSError:
        pass


def _remove_gitignore(folder: Path) -> None:
    """The .gitignore a folder target's state sits beside (porter.generic.write_gitignore), which the journal says
    porter made: once it is all that is left there, and only while it is porter's text, byte for byte."""
    from .generic import GITIGNORE

    ignore = folder / ".gitignore"
    try:
        if ignore.is_symlink() or not ignore.is_file() or [p.name for p in folder.iterdir()] != [".gitignore"]:
            return
        if ignore.read_bytes() == GITIGNORE.encode():
            ignore.unlink()
    except OSError:
        pass


TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.porter-tmp$")  # diskio.atomic_write's names


def leftover_temporaries(folder: Path) -> list[Path]:
    """Temporary files that :func:`porter.diskio.atomic_write` left under ``folder`` when it was killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [Path(root) / f for f in files if f.endswith(".porter-tmp") and TEMPORARY.match(f)]
    return sorted(found)


def read_original(installed: InstalledTarget, journal: Journal | None) -> Callable[[str], str]:
    """A source reader that prefers the journal's saved originals, so a patched target re-plans (and is scanned,
    and verified) from the files as they were installed."""
    saved = {e.path: e for e in journal.files} if journal else {}

    def read(rel: str) -> str:
        if rel in saved:
            return saved_original(installed.state_dir, saved[rel]).decode("utf-8")
        return read_source(installed.path(rel))

    return read


def journal_kind(path: Path) -> str | None:
    """The ``kind`` a journal file says, without checking the rest (None when it cannot be read): how `porter status`
    with no name tells a patched distribution's state from a disabled plugin's."""
    from .target import NotRegular, read_regular

    try:  # a regular file only, and never past the limit: a journal linked to /dev/zero must not be read at all
        raw = json.loads(read_regular(path, MAX_JOURNAL_BYTES, follow=False).decode("utf-8"))
    except (OSError, ValueError, NotRegular, RecursionError):
        return None
    return raw.get("kind", "plugin") if isinstance(raw, dict) else None
