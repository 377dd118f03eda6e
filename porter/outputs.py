"""Paths the user asks porter to write: a run folder (`--save`), a report file (`--report`).

Checked before the first write, the first weight read or the launch; an error names the path and the reason
(exit 8, :class:`porter.errors.OutputError`). A run folder is porter's only when porter made it or found it
empty: it then holds :data:`MARKER`. A folder that holds anything else is refused, and no run folder is ever
removed wholesale: :func:`clear_run_outputs` deletes only the names a run writes.
"""
from __future__ import annotations

import errno
import json
from datetime import datetime, timezone
from pathlib import Path

from .diskio import atomic_write, replace_problem
from .errors import OutputError

MARKER = ".porter-run"
# What a porter run writes in its folder (porter.metrics, the recipes, SAT's training_main under them): the only
# names clear_run_outputs removes
RUN_OUTPUTS = ("checkpoints", "runs", "metrics.jsonl", "summary.json", "loss.png", "sampling.json",
               "demo_score.json", "deepspeed_config.rank*.json")


def check_run_folder(path: Path, flag: str) -> None:
    """Refuse, without writing anything, a run folder porter may not use: a file, a folder holding anything but
    a previous porter run (or nothing), or one that cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: a file, not a folder", hint="name a new or empty folder for the run")
    if path.is_dir():
        if not (path / MARKER).is_file():
            try:
                held = sorted(p.name for p in path.iterdir())
            except OSError as exc:
                raise OutputError(f"{flag} {path}: cannot read the folder ({exc.strerror})") from None
            if held:
                shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
                raise OutputError(f"{flag} {path}: the folder holds files porter did not write ({shown})",
                                  hint="name a new or empty folder, or the folder of an earlier porter run")
        problem = replace_problem(path / MARKER)
    else:
        problem = replace_problem(path)
    if problem:
        raise OutputError(f"{flag} {path}: cannot be written ({problem})")


def claim_run_folder(path: Path, flag: str) -> Path:
    """Create (or adopt, when empty) the run folder and mark it as porter's; returns it."""
    check_run_folder(path, flag)
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not (path / MARKER).is_file():
            note = {"made_by": "porter", "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            atomic_write(path / MARKER, (json.dumps(note) + "\n").encode())
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot be written ({exc.strerror or exc})") from None
    return path


def clear_run_outputs(path: Path) -> list[Path]:
    """Remove what an earlier run wrote in a porter run folder (only :data:`RUN_OUTPUTS`; a file of the user's is
    kept); returns what was removed."""
    import shutil

    path = Path(path)
    if not (path / MARKER).is_file():
        raise OutputError(f"{path}: not a porter run folder (no {MARKER}); nothing was removed")
    removed = []
    for pattern in RUN_OUTPUTS:
        for found in sorted(path.glob(pattern)):
            if found.is_dir() and not found.is_symlink():
                shutil.rmtree(found)
            else:
                found.unlink()
            removed.append(found)
    return removed


def check_output_folder(path: Path, flag: str) -> None:
    """Refuse, without writing anything, a folder porter is to write files into (it removes nothing there): a
    file, a path under a file, a read-only or immutable place."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: a file, not a folder", hint="name a folder")
    problem = replace_problem(path / "x")
    if problem:
        raise OutputError(f"{flag} {path}: cannot be written ({problem})")


def check_output_file(path: Path, flag: str) -> None:
    """Refuse, without writing anything, a file path porter cannot write: a folder, a path under a file, a folder
    that does not exist, one that is read-only or immutable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: a folder, not a file", hint="name a file")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise OutputError(f"{flag} {path}: {path.parent} {what}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{flag} {path}: not a regular file", hint="name a file")
    problem = replace_problem(path)
    if problem:
        raise OutputError(f"{flag} {path}: cannot be written ({problem})")


def write_output(path: Path, data: bytes, flag: str) -> None:
    """Write a file the user asked for, atomically; any failure is one line naming it (exit 8)."""
    try:
        atomic_write(Path(path), data)
    except OSError as exc:
        why = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise OutputError(f"{flag} {path}: cannot be written ({why})") from None

