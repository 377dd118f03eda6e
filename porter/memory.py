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
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import diskio
from .diskio import engine_digest
from .target import InstalledTarget


def memory_patch_dir() -> Path:
    """The folder in porter's cache for patching in memory: planned sources and their bytecode."""
    return diskio.cache_dir("memory-patch")


def _source_key(installed: InstalledTarget, plugin_digest: str) -> str:
    """Every file of the installed package and the plugins' own sources: what any rule could read or be made
    of, known without importing the rules (a worker that finds the plan cached never loads libcst)."""
    h = hashlib.sha256(f"{engine_digest()}\0{installed.name}\0{installed.version}\0{installed.site_packages}\0"
                       f"{plugin_digest}".encode())
    diskio.hash_files(h, (p for p in installed.package_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
                      installed.site_packages)
    return "src-" + h.hexdigest()[:24]


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
    """Plan (or read the cached plan of) the rewrite of ``installed``'s modules.

    The cache is looked up by every installed file of the package, porter's engine and ``plugin_digest`` (the
    registry's ``source_digest()``); ``rules()`` is called only when the plan must be made.
    """
    from .target import module_name

    key = _source_key(installed, plugin_digest)
    path = memory_patch_dir() / f"{installed.name}-{key}.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return MemoryPatch(data["sources"], data["files"], data["skipped"], True)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: plan again and replace it
    from .plan import make_plan  # only now: planning loads libcst, a cached plan does not need it

    plan = make_plan(installed, rules())
    sources, files, skipped = {}, {}, []
    for f in plan.changed:
        name = module_name(f.path)
        if name is None:
            skipped.append(f.path)
            continue
        sources[name] = f.after
        files[name] = str(installed.path(f.path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"sources": sources, "files": files, "skipped": skipped}, fh)
    os.replace(tmp, path)
    return MemoryPatch(sources, files, skipped, False)


class _Loader(importlib.abc.SourceLoader):
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
        loader = _Loader(self.patch.sources[fullname], origin)
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
