"""What porter exec's boot file runs in each process of the program (see porter.execute): serve the manifest's
ported sources through an import hook, and hand a ported script over to porter.execmain.

It imports nothing of porter's planning (no libcst): the sources are already planned."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys


class PortFinder(importlib.abc.MetaPathFinder):
    """Serves the ported source of exactly the manifest's files, found by the path the import system would load:
    a module imported under any name, from any sys.path, is served when its file is one porter ported."""

    def __init__(self, files: dict[str, str]):
        self.files = {os.path.realpath(path): source for path, source in files.items()}
        # the last part of the names those files can be imported under: other imports skip the path search
        self.names = {_module_name(path) for path in self.files}
        # a ported script whose file name is no module name (my-train.py) runs under a made-up one, which
        # multiprocessing's spawned children import it by
        self.mains = {main_name(path): path for path in self.files if not _module_name(path).isidentifier()}
        self.served: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.mains:
            origin = self.mains[fullname]
            return self.spec_for(fullname, origin, self.files[origin])
        if fullname.rpartition(".")[2] not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin:
            return None
        source = self.files.get(os.path.realpath(spec.origin))
        if source is None:
            return None
        return self.spec_for(fullname, spec.origin, source, spec.submodule_search_locations)

    def spec_for(self, fullname, origin, source, locations=None):
        from .memory import PortedLoader  # bytecode cached in porter's cache, tracebacks show the code that runs

        self.served.append(fullname)
        return importlib.util.spec_from_file_location(fullname, origin, loader=PortedLoader(source, origin),
                                                      submodule_search_locations=locations)

    def source_of(self, path: str) -> str | None:
        return self.files.get(os.path.realpath(path))


def main_name(path: str) -> str:
    """The module name a ported script runs under as ``__main__``'s spec: its file name, or where that is no
    module name, one made from its path."""
    name = _module_name(path)
    if name.isidentifier():
        return name
    import hashlib

    return "__porter_main_" + hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]


def _module_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.basename(folder) if name == "__init__.py" else name[:-3]


FINDER: PortFinder | None = None


def install(manifest: str) -> PortFinder | None:
    """Install the hook for ``manifest``; a process whose script is ported becomes ``python -m porter.execmain``."""
    global FINDER
    try:
        with open(manifest, encoding="utf-8") as stream:
            files = json.load(stream)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"porter exec: cannot read {manifest} ({exc}); running without the port\n")
        return None
    FINDER = PortFinder(files)
    sys.meta_path.insert(0, FINDER)
    script = sys.argv[0] if sys.argv else ""
    if script not in ("", "-c", "-m") and FINDER.source_of(script) is not None:
        _hand_over(script)
    return FINDER


def _hand_over(script: str) -> None:
    """Replace this process (same pid, before any of the program's code ran) with one that runs the ported
    script: Python reads a script itself, past every import hook."""
    env = dict(os.environ)
    if getattr(sys.stdout, "write_through", False):  # -u
        env["PYTHONUNBUFFERED"] = "1"
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # -X, -W, -O ... as given
    argv = [sys.executable, *flags, "-m", "porter.execmain", *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
