"""Targets no plugin registered: a project folder (`porter patch ./project`) or any installed distribution by its
pip name (`porter patch PyHessian`). Both take the rules for any code (``target="any"``) over every Python file
they hold, through the same transaction as a plugin's target; this module says which target a name means and which
files are its own.

- A **folder** is a path: it holds a ``/`` or is ``.``/``..``. Its files are every ``*.py`` below it, except
  hidden folders (``.git``, ``.porter-state``, ``.venv``), virtual environments (a folder holding
  ``pyvenv.cfg``), ``site-packages``, ``node_modules``, ``__pycache__``, links (never followed or replaced), the
  globs of ``[tool.porter] exclude`` in its ``pyproject.toml`` and of ``--exclude``. Its journal and saved
  originals are kept inside it, in ``.porter-state/_folder/``, beside a ``.gitignore`` that keeps git out of
  them; so the state moves with the folder, and ``porter status ./project`` finds it from any working
  directory.
- A **distribution** is found as for a plugin's target (this environment, or ``--site-packages DIR``); its files
  are the ``*.py`` rows of its RECORD under its top-level folders and modules, drift is checked against RECORD's
  sha256, and its state is ``site-packages/.porter-state/<name>/``. A distribution a plugin registers (e.g.
  SwissArmyTransformer) means that plugin's target.
- A file opts out whole with a ``# porter: skip-file`` comment line; one statement with ``# porter: skip``.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata as md
import os
import re
from pathlib import Path

from .errors import InputError, NotFoundError, PorterError, StateError
from .journal import journal_kind
from .target import (
    DISTRIBUTION,
    FOLDER,
    STATE_DIR_NAME,
    InstalledTarget,
    Target,
    _normalise,
    find_dist_info,
    locate,
    read_record,
)

# folders below a project that are never its own code
SKIPPED_FOLDERS = {"__pycache__", "site-packages", "dist-packages", "node_modules"}
SKIP_FILE = re.compile(r"^[ \t]*#[ \t]*porter:[ \t]*skip-file\b", re.MULTILINE)
GITIGNORE = "# porter's journal and saved originals (porter revert removes them)\n*\n"


def is_path(spec: str) -> bool:
    """Whether a command-line TARGET names a folder rather than a target or distribution."""
    return "/" in spec or os.sep in spec or spec in (".", "..") or spec.startswith("~")


def resolve(spec: str, registry, site_packages: Path | None = None, check_version: bool = True,
            exclude: tuple[str, ...] = ()) -> InstalledTarget:
    """What TARGET means on the command line: a registered target by name, a folder by path, else an installed
    distribution by its pip name (one a plugin registers means that plugin's target)."""
    targets = registry.items["targets"]
    target = plugin_target(spec, registry)
    if target is not None:
        return locate(target, site_packages, check_version=check_version)
    if is_path(spec):
        if site_packages is not None:
            raise InputError(f"{spec}: --site-packages picks an installed distribution; a folder is patched where it is",
                             hint="drop --site-packages")
        return folder_target(Path(spec).expanduser(), exclude)
    return distribution_target(spec, site_packages, exclude, known=tuple(sorted(targets)))


def plugin_target(spec: str, registry) -> Target | None:
    """The registered target TARGET means, as ``resolve`` reads it: by its name, or (unless it is a path) by the
    pip name of the distribution a plugin registers; None for a folder or any other distribution."""
    targets = registry.items["targets"]
    if spec in targets:
        return targets[spec]
    if is_path(spec):
        return None
    wanted = _normalise(spec)
    return next((t for t in targets.values() if t.distribution and _normalise(t.distribution) == wanted), None)


def folder_target(folder: Path, exclude: tuple[str, ...] = ()) -> InstalledTarget:
    if not folder.exists():
        raise NotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (porter patches a project folder or an installed distribution)")
    root = folder.resolve()
    target = Target(name=str(root), distribution="", package="", kind=FOLDER, description=f"the folder {root}",
                    exclude=tuple(exclude) + _pyproject_excludes(root))
    return InstalledTarget(target=target, site_packages=root, version="")


def _pyproject_excludes(root: Path) -> tuple[str, ...]:
    """``[tool.porter] exclude = ["glob", ...]`` of the folder's pyproject.toml (the opt-out a project commits)."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return ()
    import sys

    if sys.version_info < (3, 11):  # tomllib is 3.11's; on 3.10 a project's opt-outs are --exclude
        raise InputError(f"{path}: reading its [tool.porter] table needs Python 3.11 or later",
                         hint="use --exclude GLOB instead, or Python 3.11+")
    import tomllib  # type: ignore[import-not-found,unused-ignore]  # 3.11+, checked above

    from .target import NotRegular, read_regular

    try:
        data = tomllib.loads(read_regular(path, 4 * 2 ** 20).decode("utf-8"))
    except (OSError, NotRegular, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as TOML ({exc})",
                         hint="porter reads its [tool.porter] table; fix the file") from None
    tool = data.get("tool", {})
    table = tool.get("porter", {}) if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise InputError(f"{path}: [tool.porter] is not a table" if isinstance(tool, dict) else
                         f"{path}: tool is not a table")
    unknown = sorted(set(table) - {"exclude"})
    if unknown:
        raise InputError(f"{path}: [tool.porter] has unknown key(s) {', '.join(unknown)}", hint="it knows: exclude")
    patterns = table.get("exclude", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise InputError(f"{path}: [tool.porter] exclude must be a list of glob strings")
    return tuple(patterns)


def distribution_target(name: str, site_packages: Path | None = None,
                        exclude: tuple[str, ...] = (), known: tuple[str, ...] = ()) -> InstalledTarget:
    """Any installed distribution by its pip name: its top-level folders and modules from RECORD."""
    if site_packages is None:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            folder = Path(name)
            hint = (f"a folder is written as a path: ./{name}" if folder.is_dir() else
                    "a distribution is named as `pip show NAME` names it, a folder as a path (./NAME); "
                    "--site-packages DIR looks in another environment")
            raise NotFoundError(f"unknown target {name!r} (known: {', '.join(known) or 'none'}), and no distribution "
                                f"of that name is installed here", hint=hint) from None
        site_packages = Path(str(dist.locate_file(""))).resolve()
    else:
        site_packages = Path(site_packages).resolve()
        if not site_packages.is_dir():
            raise NotFoundError(f"--site-packages {site_packages}: no such directory")
    info = find_dist_info(site_packages, name)
    if info is None:
        raise NotFoundError(f"{name} is not installed in {site_packages}", hint=f"no {name}-*.dist-info folder there")
    record = read_record(info)
    if record is None:
        raise StateError(f"{info.folder}: has no RECORD, so porter cannot tell which files are {name}'s",
                         hint=f"reinstall it with pip: pip install --force-reinstall --no-deps {name}=={info.version}")
    record.refuse_if_damaged("porter cannot tell which files are the distribution's", f"{name}=={info.version}")
    tops = sorted({row.path.split("/")[0] for row in record.rows if _own_top(row.path, info.folder.name)})
    if not tops:
        raise NotFoundError(f"{name} {info.version} installs no Python package or module in {site_packages}",
                            hint=f"its RECORD ({record.file}) lists no .py file outside its metadata")
    folders = [t for t in tops if not t.endswith(".py")]
    target = Target(name=_normalise(info.name or name), distribution=info.name or name,
                    package=folders[0] if len(folders) == 1 and len(tops) == 1 else "", kind=DISTRIBUTION,
                    packages=tuple(tops), description=f"the installed distribution {info.name or name}",
                    exclude=tuple(exclude))
    return InstalledTarget(target=target, site_packages=site_packages, version=info.version)


def status_targets(spec: str | None, registry, site_packages: Path | None = None) -> list[InstalledTarget]:
    """What `porter status` and `porter revert` look at: TARGET, at any version (they must still work after an upgrade
    the rules do not support); with none, every registered target installed here and every distribution porter
    patched. A TARGET whose patch no loaded plugin can read (its plugin disabled) is refused, naming the journal."""
    if site_packages is not None and not Path(site_packages).is_dir():
        raise NotFoundError(f"--site-packages {site_packages}: no such directory")
    if spec:
        orphan = [j for j in unknown_journals(registry, site_packages) if j.parent.name == spec]
        if orphan:
            raise NotFoundError(f"{orphan[0]} holds a patch of {spec!r}, but no loaded plugin registers that "
                                f"target", hint="enable its plugin (see PORTER_DISABLE_PLUGINS and `porter plugins`), "
                                                "then run this again")
        return [resolve(spec, registry, site_packages, check_version=False)]
    found = []
    for target in registry.targets.values():
        try:
            found.append(locate(target, site_packages, check_version=False))
        except PorterError:
            continue  # not installed here: nothing to report
    for journal in unknown_journals(registry, site_packages, distributions=False):
        installed = _patched_distribution(journal)
        if installed is not None:  # not: a plugin's patch (its plugin disabled), said as such
            found.append(installed)
    return found


def unknown_journals(registry, site_packages: Path | None = None, distributions: bool = True) -> list[Path]:
    """Journals of targets no loaded plugin registers (disabled or uninstalled), in ``site_packages`` or in every
    site folder of this interpreter (user site included); with ``distributions``, not those of a distribution
    porter patched by its pip name (status and revert read those as targets)."""
    import site
    import sysconfig

    if site_packages:
        folders = [Path(site_packages)]
    else:
        folders = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"]),
                   *map(Path, site.getsitepackages()), Path(site.getusersitepackages())]
    journals = {j.resolve() for folder in folders for j in (folder / STATE_DIR_NAME).glob("*/journal.json")}
    unknown = sorted(j for j in journals if j.parent.name not in registry.targets)
    if not distributions:
        return unknown
    return [j for j in unknown if _patched_distribution(j) is None]


def _patched_distribution(journal: Path) -> InstalledTarget | None:
    """The distribution a journal is the patch of, when porter patched it by its pip name (the state folder is named
    for it, beside it in its site-packages)."""
    if journal_kind(journal) != "distribution":
        return None
    try:
        installed = distribution_target(journal.parent.name, journal.parent.parent.parent)
    except PorterError:
        return None
    return installed if installed.state_dir.resolve() == journal.parent else None


def _own_top(path: str, info_name: str) -> bool:
    """A RECORD row of the distribution's own code: a .py file under site-packages, not its metadata or scripts."""
    first = path.split("/")[0]
    return path.endswith(".py") and first not in (info_name, "__pycache__", "..") and not first.endswith(
        (".dist-info", ".egg-info", ".data")) and not path.startswith("/")


MAX_SOURCE_BYTES = 16 * 2 ** 20  # bigger is data, not code (porter scan's bound too)


def source_files(installed: InstalledTarget) -> list[str]:
    """The target's Python files (paths relative to its root) porter reads, ``exclude`` applied."""
    return files_of(installed)[0]


def files_of(installed: InstalledTarget) -> tuple[list[str], list[tuple[str, str]]]:
    """The target's Python files porter reads (a distribution's from RECORD, those on disk; a folder's by walking
    it), and those it leaves out with why: not a regular file (a FIFO would hang the read, a device never end), a
    link (porter never writes through one: ``LINK_INSIDE`` when it leads to a file inside the root), over
    MAX_SOURCE_BYTES; and a folder's subfolders that cannot be listed (``DIR/``) or are links leading outside it.
    `porter scan FOLDER` reads the same files."""
    if installed.target.kind == DISTRIBUTION:
        info = find_dist_info(installed.root, installed.target.distribution, installed.version)
        record = read_record(info) if info is not None else None
        rows = [] if record is None else [r.path for r in record.rows]
        candidates = sorted({rel for rel in rows if installed.owns(rel) and rel.endswith(".py")
                             and "__pycache__" not in rel.split("/")})
        folders: list[tuple[str, str]] = []
    else:
        candidates, folders = _walk(installed.root)
    found: list[str] = []
    skipped = [(rel, why) for rel, why in folders if not excluded(rel, installed.target.exclude)]
    for rel in candidates:
        if excluded(rel, installed.target.exclude):
            continue
        why = _unreadable(installed.root / rel, installed.root)
        if why is None:
            found.append(rel)
        elif why != "missing":
            skipped.append((rel, why))
    return found, skipped


LINK_INSIDE = "a link (porter neither reads nor writes through one)"


def _unreadable(path: Path, root: Path) -> str | None:
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        try:
            os.stat(path)
        except OSError as exc:
            return f"a broken link ({exc.strerror or exc})"
        if not _inside(path, root):
            return f"a link to {os.path.realpath(path)}, outside {root}: never followed"
        return LINK_INSIDE
    if not stat.S_ISREG(st.st_mode):
        from .target import file_kind

        return f"not a regular file but {file_kind(st.st_mode)}: never opened"
    if st.st_size > MAX_SOURCE_BYTES:
        return f"{st.st_size / 2 ** 20:.1f} MiB, over the {MAX_SOURCE_BYTES // 2 ** 20} MiB porter reads as source"
    return None


def excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    """A glob matches the path, or one of its folders (``tests`` or ``tests/*`` leaves out everything below);
    ``./tests`` and ``/tests`` mean the folder's own ``tests``."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, _normal_glob(pattern)) for pattern in patterns for p in prefixes)


def _normal_glob(pattern: str) -> str:
    while pattern.startswith("./"):
        pattern = pattern[2:]
    return pattern.lstrip("/").rstrip("/")


def _inside(path: Path | str, root: Path) -> bool:
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _walk(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """A folder's *.py files (relative paths), and its subfolders left out with why: one that cannot be listed
    (``DIR/``), a link leading outside ``root`` (a link to a folder inside is not followed either: its files are
    read under their own names)."""
    found: list[str] = []
    skipped: list[tuple[str, str]] = []

    def rel_of(folder: str) -> str:
        rel = os.path.relpath(folder, root)
        return "" if rel == "." else rel.replace(os.sep, "/")

    def unlisted(exc: OSError) -> None:
        skipped.append(((rel_of(exc.filename) or ".") + "/", f"folder not read: {exc.strerror or exc}"))

    for folder, dirs, files in os.walk(root, onerror=unlisted):
        rel_dir = rel_of(folder)
        kept = []
        for d in sorted(dirs):
            path = os.path.join(folder, d)
            if d.startswith(".") or d in SKIPPED_FOLDERS or os.path.exists(os.path.join(path, "pyvenv.cfg")):
                continue
            if os.path.islink(path):
                if not _inside(path, root):
                    skipped.append((f"{rel_dir}/{d}" if rel_dir else d,
                                    f"a link to {os.path.realpath(path)}, outside {root}: never followed"))
                continue
            kept.append(d)
        dirs[:] = kept
        for name in files:
            if name.endswith(".py"):  # links and non-regular files are reported by files_of
                found.append(f"{rel_dir}/{name}" if rel_dir else name)
    return sorted(found), sorted(skipped)


def skips_file(text: str) -> bool:
    """A ``# porter: skip-file`` comment line (a comment, never the same words in a docstring): the file's author
    opted it out whole."""
    if "porter:" not in text or SKIP_FILE.search(text) is None:
        return False
    import io
    import tokenize

    try:
        return any(tok.type == tokenize.COMMENT and SKIP_FILE.match(tok.string)
                   for tok in tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):  # the parse will name the error
        return False


def temporaries(installed: InstalledTarget) -> list[Path]:
    """atomic_write's leftover temporary files of the target's own files (``.NAME.XXXXXXXX.porter-tmp`` beside
    NAME): never another target's, in a nested project or a namespace folder two distributions share."""
    own = {str(installed.root / rel) for rel in source_files(installed)}
    return [p for p in _temporaries_below(installed) if str(p.parent / p.name[1:].rsplit(".", 2)[0]) in own]


def _temporaries_below(installed: InstalledTarget) -> list[Path]:
    from .journal import TEMPORARY

    folders = {str(installed.root)}
    if installed.target.kind == DISTRIBUTION:
        folders |= {str(installed.root / top) for top in installed.tops if not top.endswith(".py")}
        walk = [f for f in folders if f != str(installed.root)]
    else:
        walk = [str(installed.root)]
    found: list[Path] = []
    for top in walk:
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS
                       and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))]
            found += [Path(folder) / f for f in files if f.endswith(".porter-tmp") and TEMPORARY.match(f)]
    if installed.target.kind == DISTRIBUTION:  # modules at the top of site-packages: only their own temporaries
        names = tuple(f".{top}." for top in installed.tops if top.endswith(".py"))
        if names:
            found += [p for p in installed.root.iterdir() if p.name.startswith(names) and TEMPORARY.match(p.name)]
    return sorted(found)


def gitignore_to_make(installed: InstalledTarget) -> list[str]:
    """What a patch of ``installed`` makes beside its state, for its journal's ``made``: a folder's
    ``.porter-state/.gitignore`` where there is none (one already there, a user's or a leftover, is left alone)."""
    from .journal import GITIGNORE_MADE

    path = installed.root / STATE_DIR_NAME / ".gitignore"
    return [GITIGNORE_MADE] if installed.target.kind == FOLDER and not path.exists() and not path.is_symlink() else []


def write_gitignore(installed: InstalledTarget) -> None:
    """A folder target's ``.porter-state/.gitignore``: git never shows porter's journal and originals as changes."""
    from .diskio import atomic_write

    if installed.target.kind != FOLDER:
        return
    path = installed.root / STATE_DIR_NAME / ".gitignore"
    if not path.exists() and not path.is_symlink():
        atomic_write(path, GITIGNORE.encode())
