"""Writing other people's files safely: hashes, atomic replace, stale bytecode."""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir(part: str) -> Path:
    """``part``'s folder under porter's cache: $PORTER_CACHE, default ~/.cache/porter."""
    return Path(os.environ.get("PORTER_CACHE", Path.home() / ".cache" / "porter")) / part


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


NOT_REGULAR = "not-a-regular-file"  # equals no sha256


def sha256_file(path: Path) -> str | None:
    """The file's sha256, None if it is missing, or :data:`NOT_REGULAR` for a folder, FIFO, device or socket
    (what a symlink leads to included): those are never opened, so a link to /dev/zero cannot hang a read."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return NOT_REGULAR
        return sha256_bytes(Path(path).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None


def regular_file_problem(path: Path | str, what: str = "file") -> str | None:
    """Why ``path`` is not a regular file porter may open (None if it is): missing, a folder, a FIFO, device or
    socket (an open of a FIFO waits for a writer, a read of /dev/zero never ends), or the system's reason. Read with
    stat only: nothing is opened. ``what`` names the expected kind in the answer ("a folder, not an image")."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:  # a component that is a file, a name too long, a loop of links
        return f"cannot read ({exc.strerror or exc})"
    except ValueError:  # an embedded NUL: no file can have that name
        return "not a valid file name"
    if stat.S_ISDIR(mode):
        return f"a folder, not {what}"
    if not stat.S_ISREG(mode):
        return "not a regular file (a device, FIFO or socket)"
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old file or the new, never half.

    The temporary file lives in the same folder (rename is only atomic within one file system), is fsynced
    before the rename, and the folder is fsynced after it. The old file's permissions are kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".porter-tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_symlink(path: Path, text: str) -> None:
    """Replace ``path`` with a symlink whose text is ``text``, atomically (a new link, then a rename over it)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()[:8]}.porter-tmp"
    os.symlink(text, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


_FS_IOC_GETFLAGS = 0x80086601  # Linux: _IOR('f', 1, long)
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _inode_flags(path: Path) -> int:
    """The file's chattr flags (0 where the file system or platform has none)."""
    import array
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        return buf[0]
    except OSError:
        return 0
    finally:
        os.close(fd)


def replace_problem(path: Path) -> str | None:
    """Why :func:`atomic_write` could not replace ``path`` (or create it), or None if nothing stands in the way.

    Checked before a transaction's first write: an immutable or append-only file (chattr +i / +a), a folder
    that is immutable, on a read-only file system or not writable by this user.
    """
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():  # a file where a folder must be (the path lies under it)
        return f"{folder} is not a folder"
    if path.exists() and _inode_flags(path) & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        return f"{path} is immutable or append-only (chattr +i/+a)"
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f"{folder} is on a read-only file system"
    if _inode_flags(folder) & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        return f"{folder} is immutable or append-only (chattr +i/+a)"
    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):  # read too: the folder is fsynced after a replace
        return f"{folder} is not writable by this user"
    return None


def check_writable(paths) -> None:
    """Refuse, before a transaction's first write, when any of ``paths`` cannot be replaced (see
    :func:`replace_problem`), naming each."""
    from .errors import StateError

    problems = [p for p in map(replace_problem, paths) if p]
    if problems:
        raise StateError("cannot write: " + "; ".join(dict.fromkeys(problems)) + "; nothing was changed",
                         hint="make those files and folders writable, then run it again")


def drop_bytecode(path: Path) -> list[Path]:
    """Remove ``__pycache__`` entries compiled from ``path``.

    Python checks a .pyc against the source's mtime and size; a rewrite within the same second and of the
    same size would be missed, so porter never relies on that check.
    """
    path = Path(path)
    cache = path.parent / "__pycache__"
    removed = []
    if cache.is_dir():
        for pyc in cache.glob(f"{glob.escape(path.stem)}.*.pyc"):  # a name holding * or ? matches itself only
            pyc.unlink(missing_ok=True)
            removed.append(pyc)
    return removed


def read_source(path: Path) -> str:
    """A file's text exactly as stored: no newline translation, so CRLF files are planned and hashed alike."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        from .errors import PlanError

        raise PlanError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def hash_files(h, files, root: Path | None = None) -> None:
    """Feed ``h`` each file's name (relative to ``root``, else as given), size and bytes, in sorted order: the one
    way porter hashes a set of files (its engine, the plugins' sources, the rules' code, a target's files). A file
    that cannot be read adds its name and the reason, so the hash still changes with it."""
    for path in sorted(Path(p) for p in files):
        name = path.relative_to(root) if root is not None else path
        try:
            data = path.read_bytes()
            h.update(os.fsencode(str(name)) + b"\0" + str(len(data)).encode() + b"\0" + data)
        except OSError as exc:
            h.update(os.fsencode(str(name)) + f"\0unreadable: {exc.errno}\0".encode())


@functools.cache
def engine_digest() -> str:
    """porter's own sources and libcst's version: besides the rules and the files, what shapes every plan (a git
    checkout changes without a version bump). Reads no module it hashes, so the import hook can use it."""
    from importlib.metadata import version

    from . import __version__

    h = hashlib.sha256(f"{__version__}\0{version('libcst')}\0".encode())
    hash_files(h, Path(__file__).parent.rglob("*.py"), Path(__file__).parent)
    return h.hexdigest()
