"""Patching in memory: an import hook that serves rewritten source for a target's modules, touching no file.

The same rule engine plans the rewrite as for `porter patch`; the planned sources are cached on disk (keyed by
the installed package's files, porter's engine and the plugins' sources), so N workers started together plan
once, and the rewritten modules' bytecode is cached beside them (never in the package's __pycache__). Rules over
data files (JSON) cannot apply this way: they are reported, and the process reads the installed files.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import json
import marshal
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import diskio
from .diskio import engine_digest
from .target import InstalledTarget


def memory_patch_dir() -> Path:
    """The folder in porter's cache for patching in memory: planned sources and their bytecode."""
    return diskio.cache_dir("memory-patch")


@dataclass
class Ported:
    """A target's port held in memory: each file the rules change, by its absolute path, and its ported text."""

    sources: dict[str, str]  # installed file (absolute path) -> its ported source
    cached: bool  # read from porter's cache, not planned now


def ported_sources(installed: InstalledTarget, rules: Callable[[], list], plugin_digest: str,
                   progress: Callable[[str], None] = lambda _m: None,
                   check_files: Callable[[list[str]], None] | None = None) -> Ported:
    """The port of ``installed`` in memory, planned once: the in-memory port of `porter run` (``prepare``) and
    `porter exec` both read it. It is cached by what it depends on (``_key``), so N workers started together plan
    once and a cached port never loads the rules or libcst (``rules()`` is called only when it must be planned). A
    cache entry is read as untrusted (``_read``). ``check_files`` sees the target's files before anything is
    hashed (exec refuses a folder too big to be a project)."""
    # named by its key; the target's name (a folder's is its path) only as a readable, harmless label
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(installed.name).name)[-40:] or "target"
    path = memory_patch_dir() / f"{label}-{_key(installed, plugin_digest, check_files)}.json"
    try:
        return Ported(_read(path, installed), True)
    except (OSError, ValueError):  # none, unreadable, or not what porter writes: planned again
        pass
    progress(f"planning {installed.name} in memory")
    from .plan import make_plan  # only now: planning loads libcst, a cached port does not need it

    plan = make_plan(installed, rules())
    sources = {str(installed.path(f.path)): f.after for f in plan.changed}
    diskio.atomic_write(path, json.dumps({"sources": sources}).encode())
    return Ported(sources, False)


def _key(installed: InstalledTarget, plugin_digest: str, check_files: Callable[[list[str]], None] | None) -> str:
    """What a port depends on: porter's engine, the plugins' sources, and every file the rules could read, by its
    bytes: a registered target's whole package (its plugin's rules may rewrite data files too), else the Python
    files porter reads (the rules for any code read nothing else)."""
    h = hashlib.sha256(f"{engine_digest()}\0{plugin_digest}\0{installed.name}\0{installed.version}\0"
                       f"{installed.root}\0{installed.target.exclude}".encode())
    if installed.target.kind == "plugin":
        files = [p for p in installed.package_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    else:
        from .generic import source_files

        names = source_files(installed)
        if check_files is not None:
            check_files(names)
        files = [installed.path(rel) for rel in names]
    diskio.hash_files(h, files, installed.root)
    return "port-" + h.hexdigest()[:32]


def _read(path: Path, installed: InstalledTarget) -> dict[str, str]:
    """A cached port, only as porter writes one (file -> source, every file inside the target): a damaged or foreign
    entry must never make the import hook serve code for some other file. ``ValueError`` otherwise."""
    data = json.loads(path.read_text())
    sources = data.get("sources") if isinstance(data, dict) else None
    root = str(installed.root) + os.sep
    if not isinstance(sources, dict) or not all(isinstance(k, str) and k.startswith(root) and isinstance(v, str)
                                                 for k, v in sources.items()):
        raise ValueError(f"{path}: not a port of {installed.root}")
    return sources


@dataclass
class MemoryPatch:
    sources: dict[str, str]  # module name -> rewritten source
    files: dict[str, str]  # module name -> installed file it replaces
    skipped: list[str]  # data files whose rules cannot apply in memory
    cached: bool


def prepare_for(registry, name: str) -> MemoryPatch:
    """The in-memory plan of the registered target ``name`` (see ``prepare``): the launcher makes it, and each
    worker finds it cached without loading the rules."""
    from .target import locate

    return prepare(locate(registry.target(name)), lambda: registry.rules_for(name), registry.source_digest())


def prepare(installed: InstalledTarget, rules: Callable[[], list], plugin_digest: str) -> MemoryPatch:
    """The port of ``installed``'s modules for the import hook (``install``): each changed file under its module
    name; a file that is no module (a data file) cannot be served this way and is listed as skipped."""
    from .target import module_name

    ported = ported_sources(installed, rules, plugin_digest)
    sources, files, skipped = {}, {}, []
    for file, source in sorted(ported.sources.items()):
        rel = Path(file).relative_to(installed.site_packages).as_posix()
        name = module_name(rel)
        if name is None:
            skipped.append(rel)
            continue
        sources[name] = source
        files[name] = file
    return MemoryPatch(sources, files, skipped, ported.cached)


class PortedLoader(importlib.abc.SourceLoader):
    """Serves a ported source for an installed file: tracebacks name the installed file and show the code that
    runs; the bytecode is kept in porter's cache, never in the package's __pycache__."""

    def __init__(self, source: str, path: str):
        self.source, self.path = source, path

    def get_filename(self, fullname):
        return self.path  # tracebacks point at the installed file; the code is the rewritten one

    def get_data(self, path):
        import linecache

        # tracebacks and inspect read source through linecache: show them the code that runs (an entry
        # without an mtime is never invalidated against the file on disk)
        linecache.cache[self.path] = (len(self.source), None, self.source.splitlines(keepends=True), self.path)
        return self.source.encode("utf-8")

    def get_code(self, fullname):
        """Compiled once per (source, file, Python): kept in porter's cache, not the package's __pycache__."""
        source = self.get_data(self.path)  # also shows tracebacks the code that runs
        key = hashlib.sha256(source + f"\0{self.path}\0{sys.version}\0{sys.flags.optimize}\0".encode()
                             + importlib.util.MAGIC_NUMBER).hexdigest()
        cached = memory_patch_dir() / "bytecode" / f"{key}.bin"
        try:
            return marshal.loads(cached.read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            pass
        code = self.source_to_code(source, self.path)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{key}.{os.getpid()}.tmp")
            tmp.write_bytes(marshal.dumps(code))
            os.replace(tmp, cached)
        except OSError:
            pass  # a cache that cannot be written is not used
        return code


class PatchFinder(importlib.abc.MetaPathFinder):
    def __init__(self, patch: MemoryPatch):
        self.patch = patch
        self.served: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.patch.sources:
            return None
        origin = self.patch.files[fullname]
        loader = PortedLoader(self.patch.sources[fullname], origin)
        is_package = origin.endswith("__init__.py")
        spec = importlib.util.spec_from_file_location(fullname, origin, loader=loader,
                                                      submodule_search_locations=[str(Path(origin).parent)]
                                                      if is_package else None)
        self.served.append(fullname)
        return spec


def install(patch: MemoryPatch) -> PatchFinder:
    """Serve the rewritten modules from now on. Modules already imported are not replaced: install first."""
    loaded = sorted(name for name in patch.sources if name in sys.modules)
    if loaded:
        raise RuntimeError(f"cannot patch in memory: already imported: {', '.join(loaded)}")
    finder = PatchFinder(patch)
    sys.meta_path.insert(0, finder)
    return finder
