"""The journal: what a patch changed, written before the first file is touched.

Layout, beside the target's package in site-packages::

    .porter-state/<target>/journal.json  this record
(the inter-process lock is an flock on the package directory itself, so no lock file exists)
    .porter-state/<target>/originals/... byte-exact copies of every file before patching
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
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

    # -- storage -------------------------------------------------------------------------------------

    @staticmethod
    def path_in(state_dir: Path) -> Path:
        return Path(state_dir) / "journal.json"

    @classmethod
    def load(cls, state_dir: Path) -> Journal | None:
        path = cls.path_in(state_dir)
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise StateError(f"{path}: journal format {raw.get('format')} is not {FORMAT}",
                                 hint="use the porter version that wrote it to revert")
            raw["files"] = [FileEntry(**f) for f in raw["files"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(f"{path}: unreadable journal ({exc})",
                             hint="the saved originals are in the originals/ folder beside it") from None

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


def stray_originals(state_dir: Path) -> list[str]:
    """Saved originals (paths relative to site-packages) in a state folder, whatever the journal says."""
    root = originals_dir(state_dir)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith(".porter-tmp"))


def remove_state(state_dir: Path) -> None:
    """Drop the journal first, so a crash half-way through leaves 'clean' and not a broken journal."""
    state_dir = Path(state_dir)
    Journal.path_in(state_dir).unlink(missing_ok=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    try:
        state_dir.parent.rmdir()  # the shared .porter-state folder, once no target has state in it
    except OSError:
        pass


def read_original(installed: InstalledTarget, journal: Journal | None) -> Callable[[str], str]:
    """A source reader that prefers the journal's saved originals, so a patched target re-plans (and is scanned,
    and verified) from the files as they were installed."""
    saved = {e.path: e for e in journal.files} if journal else {}

    def read(rel: str) -> str:
        if rel in saved:
            return saved_original(installed.state_dir, saved[rel]).decode("utf-8")
        return read_source(installed.path(rel))

    return read
