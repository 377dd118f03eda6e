"""`porter restore-original`: put back the files pip installed, from the release's own wheel.

For an install that was changed after pip put it there (hand edits, or the old Ascend recipe's copied SAT
files): every file of the target's package whose bytes differ from the sha256 in the distribution's RECORD
(or that is missing) is replaced by the wheel's copy, and each copy must itself match RECORD before the first
write. The wheel is a file the user names, or `pip download --no-deps DIST==VERSION`.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .diskio import atomic_write, check_writable, drop_bytecode, sha256_bytes, sha256_file
from .errors import EXIT_NOT_FOUND, InputError, PorterError, StateError
from .lock import dir_lock
from .target import InstalledTarget, record_differences, record_hashes

Progress = Callable[[str], None]


def download_wheel(installed: InstalledTarget, dest: Path, progress: Progress) -> Path:
    spec = f"{installed.target.distribution}=={installed.version}"
    progress(f"downloading {spec} with pip")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                        "--dest", str(dest), spec], capture_output=True, text=True, timeout=600)
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise PorterError(f"pip could not download the wheel of {spec} ({last})",
                          hint="download it where the index is reachable and pass --wheel FILE",
                          exit_code=EXIT_NOT_FOUND)
    return wheels[0]


def restore_original(installed: InstalledTarget, wheel: Path | None = None, dry_run: bool = False,
                     progress: Progress = lambda _msg: None) -> dict[str, str]:
    """Restore every changed or missing file of ``installed`` from the release's wheel; returns what it restored."""
    from .state import CLEAN, status

    with dir_lock(installed.package_dir, on_wait=progress):
        state = status(installed).state
        if state != CLEAN:
            raise StateError(f"{installed.name} is {state}: restore-original works on an unpatched install",
                             hint=f"`porter revert {installed.name}` first")
        todo = record_differences(installed)
        if not todo or dry_run:
            return todo
        record = record_hashes(installed)
        with tempfile.TemporaryDirectory(prefix="porter-wheel-") as tmp:
            wheel = Path(wheel) if wheel else download_wheel(installed, Path(tmp), progress)
            try:
                with zipfile.ZipFile(wheel) as archive:
                    members = set(archive.namelist())
                    absent = [rel for rel in todo if rel not in members]
                    if absent:
                        raise StateError(f"{wheel} does not hold {', '.join(absent)}; nothing was changed",
                                         hint=f"use the wheel of {installed.target.distribution} {installed.version}")
                    data = {rel: archive.read(rel) for rel in todo}
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                # the user's file (a wheel is an input file, exit 7); pip not finding one is 6, above
                raise InputError(f"--wheel {wheel}: not a readable wheel ({exc})") from None
        wrong = [rel for rel in todo if sha256_bytes(data[rel]) != record[rel]]
        if wrong:
            raise StateError(f"{wheel}: {', '.join(wrong)} do(es) not match the sha256 in "
                             f"{installed.target.distribution}'s RECORD; nothing was changed",
                             hint=f"use the wheel of {installed.target.distribution} {installed.version}")
        check_writable([installed.path(rel) for rel in todo])
        try:
            for rel in todo:
                atomic_write(installed.path(rel), data[rel])
                drop_bytecode(installed.path(rel))
                progress(f"restored {rel} ({todo[rel]})")
        except OSError as exc:
            raise StateError(f"could not write {exc.filename or installed.path(rel)} ({exc.strerror or exc}); the "
                             "files before it were restored", hint="free the space or fix the permissions, then run "
                                                                   "it again: it restores what still differs") from None
        still = [rel for rel in todo if sha256_file(installed.path(rel)) != record[rel]]
        if still:
            raise StateError(f"after restoring, these still differ from RECORD: {', '.join(still)}")
        return todo
