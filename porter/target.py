"""Targets: installed libraries porter may patch, and where they live on disk."""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .errors import NotFoundError, PlanError, StateError

STATE_DIR_NAME = ".porter-state"
FOLDER_STATE_NAME = "_folder"  # a folder target's state: FOLDER/.porter-state/_folder/ (no distribution's name)

# What a target is: one a plugin registered (its rules name its files), an installed distribution by its pip name,
# or a project folder (both: every Python file, rules for any code; porter.generic)
PLUGIN, DISTRIBUTION, FOLDER = "plugin", "distribution", "folder"


@dataclass(frozen=True)
class Target:
    """A library porter knows how to patch, as a plugin describes it."""

    name: str  # what users type: `porter patch sat`
    distribution: str  # the installed distribution: "SwissArmyTransformer"
    package: str  # its top-level package directory in site-packages: "sat"
    versions: str = ""  # PEP 440 specifiers of the versions the plugin supports; "" means any
    description: str = ""
    # CUDA-only sites the plugin leaves on purpose, for `porter scan`: fnmatch pattern over
    # "path::qualified.function" -> why it is left (not reached by the supported models, guarded, ...)
    scan_exempt: dict = field(default_factory=dict, hash=False, compare=False)
    kind: str = PLUGIN
    # a distribution's top-level folders and modules, from its RECORD ("yaml", "six.py"); what it may patch
    packages: tuple[str, ...] = ()
    # a target no plugin registered: glob patterns of files left out (--exclude, [tool.porter] exclude)
    exclude: tuple[str, ...] = ()

    @property
    def generic(self) -> bool:
        """Rules for any code apply (a distribution or folder no plugin registered)."""
        return self.kind != PLUGIN

    @property
    def key(self) -> str:
        return self.name

    def supports(self, version: str) -> bool:
        return version_in(version, self.versions)


@dataclass(frozen=True)
class InstalledTarget:
    """A target resolved to one installed copy: which site-packages, which version."""

    target: Target
    site_packages: Path
    version: str

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def root(self) -> Path:
        """The folder every journaled path is relative to: site-packages, or a folder target itself."""
        return self.site_packages

    @property
    def package_dir(self) -> Path:
        """The folder locked while patching (and the one messages name): the package's folder; a folder target's
        root; site-packages for a distribution of top-level modules only."""
        if self.target.kind == FOLDER or not self.target.package:
            return self.site_packages
        return self.site_packages / self.target.package

    @property
    def state_dir(self) -> Path:
        """Journal and saved originals live beside the package, so they follow that environment; a folder's in
        the folder (FOLDER/.porter-state/_folder/, beside a .gitignore so git leaves it out)."""
        if self.target.kind == FOLDER:
            return self.site_packages / STATE_DIR_NAME / FOLDER_STATE_NAME
        return self.site_packages / STATE_DIR_NAME / self.target.name

    @property
    def tops(self) -> tuple[str, ...]:
        """The top-level names under the root whose files the target may change; () for a folder (any file)."""
        if self.target.kind == PLUGIN:
            return (self.target.package,)
        return self.target.packages

    def owns(self, rel: str) -> bool:
        """Whether ``rel`` (relative to the root) names a file of this target, by its path alone."""
        first = rel.split("/")[0]
        if self.target.kind == FOLDER:
            return first != STATE_DIR_NAME
        return first in self.tops and ("/" in rel or first.endswith(".py"))

    def path(self, rel: str) -> Path:
        return self.site_packages / rel


MAX_RECORD_BYTES = 64 * 2 ** 20  # torch's RECORD, among the largest, is about 2 MiB
MAX_METADATA_BYTES = 16 * 2 ** 20


class NotRegular(Exception):
    """A path that is not a regular file of a size porter reads; the message says what it is instead."""


def read_regular(path: Path | str, limit: int | None = None, follow: bool = True) -> bytes:
    """The bytes of ``path``, which must be a regular file (or, with ``follow``, a link to one) of at most ``limit``
    bytes: ``NotRegular`` says why not, ``OSError`` is the system's answer (missing, permission, a loop).

    The kind is read with ``stat`` before the file is opened, so a FIFO is never opened (the open would wait for a
    writer) and a device never sees an open or a read (/dev/zero never ends); the open is non-blocking and checked
    again with ``fstat``, so a file swapped for a FIFO in between cannot hang the read either."""
    _check_regular(os.stat(path, follow_symlinks=follow), limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    with open(fd, "rb") as stream:
        _check_regular(os.fstat(fd), limit)
        data = stream.read() if limit is None else stream.read(limit + 1)
    if limit is not None and len(data) > limit:  # it grew between the fstat and the read
        raise NotRegular(f"over the {_mib(limit)} porter reads")
    return data


def _check_regular(st: os.stat_result, limit: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(f"not a regular file but {file_kind(st.st_mode)}")
    if limit is not None and st.st_size > limit:
        raise NotRegular(f"{_mib(st.st_size)}, over the {_mib(limit)} porter reads")


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in words: 'a folder', 'a FIFO', 'a character device' ..."""
    for test, word in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a link")):
        if test(mode):
            return word
    return "an unknown kind of file"


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n % 2 ** 20 else f"{n // 2 ** 20} MiB"


@dataclass(frozen=True)
class DistInfo:
    """An installed distribution's metadata folder (``NAME-VERSION.dist-info``, or an ``.egg-info``)."""

    folder: Path
    name: str
    version: str


def find_dist_info(site_packages: Path, distribution: str, version: str | None = None) -> DistInfo | None:
    """The metadata folder of ``distribution`` in ``site_packages`` (the one of ``version`` when several are), None
    when it is not installed there. Its METADATA must be readable and name a version: if not, ``StateError``
    (exit 4) names the file. A folder named for another distribution whose METADATA is damaged is passed over:
    it is not ours, and one broken package must not hide the one asked for."""
    wanted = _normalise(distribution)
    try:
        folders = sorted(p for p in Path(site_packages).iterdir() if p.suffix in (".dist-info", ".egg-info"))
    except OSError as exc:
        raise StateError(f"{site_packages}: cannot be listed ({exc.strerror})") from None
    # pip names the folder after the distribution: those come first, and only when none is found is every other
    # folder's METADATA read (what `--site-packages` always did, for folders named otherwise)
    named = [f for f in folders if _normalise(f.name[:-len(f.suffix)].split("-")[0]) == wanted]
    found = [info for f in named if (info := _read_dist_info(f, ours=True)) is not None]
    if not found:
        found = [info for f in folders if f not in named and (info := _read_dist_info(f, ours=False)) is not None
                 and _normalise(info.name) == wanted]
    found = [info for info in found if _normalise(info.name or distribution) == wanted]
    if not found:
        return None
    return next((info for info in found if info.version == version), found[0])


def _read_dist_info(folder: Path, ours: bool) -> DistInfo | None:
    """``folder``'s name and version, from its METADATA (PKG-INFO in an egg's folder; an egg-info file is that
    text itself); damage raises ``StateError`` when ``ours``, and is None otherwise."""
    import email.parser

    names = ("METADATA", "PKG-INFO") if folder.is_dir() else ("",)
    problem, text, path = None, None, folder
    for name in names:
        path = folder / name if name else folder
        try:
            text = read_regular(path, MAX_METADATA_BYTES).decode("utf-8")
        except FileNotFoundError:
            continue
        except UnicodeDecodeError as exc:
            problem = f"{path}: not UTF-8 (byte {exc.start})"
        except NotRegular as exc:
            problem = f"{path}: {exc}"
        except OSError as exc:
            problem = f"{path}: cannot be read ({exc.strerror})"
        break
    if problem is None and text is None:
        problem = f"{folder}: holds no {' or '.join(names)}"
    if problem is None and text is not None:
        meta = email.parser.Parser().parsestr(text, headersonly=True)
        name, version = (meta.get("Name") or "").strip(), (meta.get("Version") or "").strip()
        if version:
            return DistInfo(folder, name, version)
        problem = f"{path}: names no Version"
    if ours:
        raise StateError(f"{problem}; porter cannot tell which release is installed",
                         hint=f"reinstall it: pip install --force-reinstall --no-deps {folder.name.split('-')[0]}")
    return None


@dataclass(frozen=True)
class RecordRow:
    line: int
    path: str  # as RECORD names it: relative to site-packages, or absolute / leading '..' for a file outside it
    sha256: str | None  # hex; None when the row has no hash (RECORD itself, bytecode) or one of another algorithm


@dataclass(frozen=True)
class Record:
    """A distribution's RECORD, read row by row: a row that is not sound is a problem, never a traceback."""

    file: Path
    rows: tuple[RecordRow, ...]  # sound rows naming a path under site-packages
    outside: tuple[RecordRow, ...]  # sound rows naming a path outside it (pip writes ../../../bin/NAME for scripts)
    problems: tuple[str, ...]  # "line N ('the row'): why", one per unsound row

    def refuse_if_damaged(self, consequence: str, distribution: str) -> None:
        """``StateError`` (exit 4) naming RECORD and its first bad row, when it has any."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more bad row(s))" if len(self.problems) > 1 else ""
            raise StateError(f"{self.file}: {self.problems[0]}{more}; {consequence}",
                             hint=f"reinstall it to get a sound RECORD: pip install --force-reinstall --no-deps "
                                  f"{distribution}")


def read_record(info: DistInfo) -> Record | None:
    """``info``'s RECORD, None when it has none (an egg, or an install without one)."""
    path = info.folder / "RECORD"
    try:
        data = read_regular(path, MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except NotRegular as exc:
        return Record(path, (), (), (f"cannot be read: {exc}",))
    except OSError as exc:
        return Record(path, (), (), (f"cannot be read ({exc.strerror})",))
    # undecodable bytes become lone surrogates here, so the row that holds them is named, not the whole file
    text = data.decode("utf-8", "surrogateescape")
    rows: list[RecordRow] = []
    outside: list[RecordRow] = []
    problems: list[str] = []
    seen: dict[str, RecordRow] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line:
            continue
        row, why = _record_row(number, line)
        if row is not None and row.path in seen and seen[row.path].sha256 != row.sha256:
            why = f"names {row.path} again, with another hash (first on line {seen[row.path].line})"
            row = None
        if why or row is None:
            shown = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            problems.append(f"line {number} ({shown[:80]!r}): {why}")
            continue
        seen[row.path] = row
        (outside if _leads_out(row.path) else rows).append(row)
    return Record(path, tuple(rows), tuple(outside), tuple(problems))


_SHA256_B64 = re.compile(r"[A-Za-z0-9_-]{43}=?")


def _record_row(number: int, line: str) -> tuple[RecordRow | None, str | None]:
    """One RECORD line as a row, or why it is not one: RECORD is CSV of path, hash (ALGORITHM=urlsafe-base64,
    unpadded), size."""
    import base64
    import csv
    import hashlib

    if any("\udc80" <= ch <= "\udcff" for ch in line):
        return None, "not UTF-8"
    if "\0" in line:
        return None, "holds a NUL byte"
    try:
        fields = next(csv.reader([line]))
    except csv.Error as exc:
        return None, f"not CSV ({exc})"
    if len(fields) != 3:
        return None, f"{len(fields)} field(s) where RECORD has 3 (path,hash,size)"
    path, digest, size = fields
    if not path:
        return None, "no path"
    if size and not (size.isascii() and size.isdigit()):
        return None, f"size {size!r} is not a number of bytes"
    parts = path.split("/")
    start = 0
    while start < len(parts) and parts[start] == "..":  # a leading '..' run: a file outside site-packages
        start += 1
    if any(p in ("", ".", "..") for p in parts[start:]) and not _is_absolute(path):
        return None, f"path {path!r} is not a plain relative path (it has an empty, '.' or '..' part)"
    if not digest:
        return RecordRow(number, path, None), None
    algorithm, _, value = digest.partition("=")
    if not algorithm or not value:
        return None, f"hash {digest!r} is not ALGORITHM=DIGEST"
    if algorithm != "sha256":
        if algorithm not in hashlib.algorithms_available:
            return None, f"hash algorithm {algorithm!r} is not one Python knows"
        return RecordRow(number, path, None), None
    # urlsafe_b64decode would drop characters outside its alphabet: the digest is checked before it is decoded
    if not _SHA256_B64.fullmatch(value):
        return None, f"hash {digest!r} is not a sha256 in urlsafe base64 (43 characters)"
    return RecordRow(number, path, base64.urlsafe_b64decode(value.rstrip("=") + "=").hex()), None


def _is_absolute(path: str) -> bool:
    from pathlib import PurePosixPath, PureWindowsPath

    return PurePosixPath(path).is_absolute() or bool(PureWindowsPath(path).drive) or path.startswith("\\")


def _leads_out(path: str) -> bool:
    return _is_absolute(path) or path.split("/")[0] == ".."


def _record_of(installed: InstalledTarget) -> Record | None:
    if installed.target.kind == FOLDER:
        return None
    info = find_dist_info(installed.site_packages, installed.target.distribution, installed.version)
    return read_record(info) if info is not None else None


def record_hashes(installed: InstalledTarget) -> dict[str, str]:
    """sha256 (hex) of each file under site-packages as pip installed it, from the distribution's RECORD; {} when
    there is none.

    Rows RECORD cannot vouch with (not UTF-8, the wrong width, a bad hash, a path leading out) are left out rather
    than refused: a missing hash only ever makes a caller trust less (revert's orphaned originals are then not
    vouched for, and need --force), and the callers that choose what to write from RECORD read
    :func:`record_differences` first, which refuses a damaged RECORD."""
    record = _record_of(installed)
    return {row.path: row.sha256 for row in record.rows if row.sha256} if record is not None else {}


def record_differences(installed: InstalledTarget) -> dict[str, str]:
    """Files of the target's package that are not as pip installed them: path -> 'changed' (the bytes differ
    from the sha256 in RECORD: a hand edit, or a file copied over as the old Ascend recipe does; or it is no longer
    a regular file) or 'missing'.

    A damaged RECORD is refused (``StateError``, exit 4, naming RECORD and the row) rather than read around: a row
    that cannot be read may be the one of a changed file, and skipping it would call that file unchanged, which is
    what patch's check (and status's report) exists to rule out; restore-original writes what this returns. A row
    whose folder leads out of the package through a link is refused too: restore-original would write through
    it."""
    record = _record_of(installed)
    if record is None:
        return {}
    record.refuse_if_damaged("porter cannot tell which files changed since install",
                             f"{installed.target.distribution}=={installed.version}")
    package = installed.package_dir.resolve()
    folders: dict[Path, Path] = {}
    found = {}
    for row in sorted(record.rows, key=lambda r: r.path):
        parts = row.path.split("/")
        if not installed.owns(row.path) or "__pycache__" in parts or row.sha256 is None:
            continue
        disk = installed.path(row.path)
        parent = folders.setdefault(disk.parent, disk.parent.resolve())
        top = package if installed.target.kind == PLUGIN else \
            (installed.root / parts[0]).resolve() if len(parts) > 1 else installed.root.resolve()
        if parent != top and top not in parent.parents:
            raise StateError(f"{record.file}: line {row.line}: {row.path} lies in a folder that leads out of the "
                             f"package, to {parent}; nothing was read or written there",
                             hint=f"replace the link {disk.parent} with the package's own folder (reinstall "
                                  f"{installed.target.distribution}=={installed.version})")
        now = _sha256_on_disk(disk)
        if now is None:
            found[row.path] = "missing"
        elif now != row.sha256:
            found[row.path] = "changed"
    return found


def _sha256_on_disk(path: Path) -> str | None:
    """The file's sha256; None if it is missing; "" if it is not a regular file (a FIFO is not read: it would wait
    for a writer, and a device would never end)."""
    import hashlib

    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return ""
    digest = hashlib.sha256()
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC), "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return ""
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def changed_since_install(installed: InstalledTarget, paths=None) -> list[str]:
    """The changed files of :func:`record_differences`, among ``paths`` when given."""
    return [rel for rel, why in record_differences(installed).items()
            if why == "changed" and (paths is None or rel in paths)]


def version_in(version: str, specifiers: str) -> bool:
    if not specifiers:
        return True
    try:
        return Version(version) in SpecifierSet(specifiers)
    except InvalidSpecifier as exc:
        raise PlanError(f"invalid version range {specifiers!r}: {exc}") from exc


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locate(target: Target, site_packages: Path | None = None, check_version: bool = True) -> InstalledTarget:
    """Find the installed copy of ``target``; ``site_packages`` picks another environment.

    ``check_version=False`` is for status and revert, which must work after an upgrade past the supported range.
    Metadata that cannot be read (not UTF-8, no Version, a version PEP 440 cannot parse) is a ``StateError`` (exit
    4) naming the file: without it porter cannot tell which release its rules would be patching.
    """
    if site_packages is not None:
        site_packages = Path(site_packages).resolve()
        if not site_packages.is_dir():
            raise NotFoundError(f"--site-packages {site_packages}: no such directory")
        info = find_dist_info(site_packages, target.distribution)
        if info is None:
            raise NotFoundError(
                f"{target.distribution} is not installed in {site_packages}",
                hint=f"no {target.distribution}-*.dist-info folder there",
            )
    else:
        try:
            # found by its folder's name on sys.path, without reading its METADATA: that is read below, checked
            dist = md.distribution(target.distribution)
        except md.PackageNotFoundError:
            raise NotFoundError(
                f"{target.distribution} is not installed in this environment",
                hint="install it, or point porter at another environment with --site-packages DIR",
            ) from None
        site_packages = Path(str(dist.locate_file(""))).resolve()
        info = find_dist_info(site_packages, target.distribution)
        if info is None:
            raise NotFoundError(f"{target.distribution}: importlib finds it in {site_packages}, but no metadata "
                                f"folder of it is there")
    version = info.version
    if not (site_packages / target.package).is_dir():
        raise NotFoundError(f"{target.distribution} {version} is registered in {site_packages} but its package "
                            f"folder {target.package}/ is missing")
    if check_version:
        try:
            Version(version)
        except InvalidVersion:
            raise StateError(f"{info.folder}: Version {version!r} is not a version porter can compare (PEP 440)",
                             hint=f"reinstall {target.distribution}") from None
        if not target.supports(version):
            raise PlanError(
                f"{target.distribution} {version} is outside the versions the {target.name!r} target supports "
                f"({target.versions})",
                hint="install a supported version, or update the plugin's rules for this release",
            )
    return InstalledTarget(target=target, site_packages=site_packages, version=version)


def module_name(rel: str) -> str | None:
    """``sat/training/utils.py`` -> ``sat.training.utils``; non-Python files have none."""
    if not rel.endswith(".py"):
        return None
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)
