"""``python -m porter.execmain SCRIPT ARGS``: run a script porter exec ported, as ``python SCRIPT ARGS`` would.

``sys.argv`` and ``sys.path[0]`` are the script's; ``__main__`` runs the ported source under the script's own
file name (tracebacks and ``__file__`` are the script's), with a module spec named for the script, so that
multiprocessing's spawned children re-import it by that name, through porter's import hook, ported too."""
from __future__ import annotations

import builtins
import importlib.util
import linecache
import os
import sys
import types


def main() -> None:
    from . import execboot

    if len(sys.argv) < 2:
        sys.exit("usage: python -m porter.execmain SCRIPT [ARGS]")
    script = sys.argv[1]
    finder = execboot.FINDER
    source = finder.source_of(script) if finder is not None else None
    if source is None:  # not ported after all (the manifest changed): read it as Python would
        with open(script, "rb") as stream:
            source = stream.read().decode("utf-8")
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    spec = importlib.util.spec_from_file_location(execboot.main_name(script), script)
    main_module = types.ModuleType("__main__")
    main_module.__dict__.update({"__file__": script, "__cached__": None, "__spec__": spec, "__package__": "",
                                 "__loader__": spec.loader if spec else None, "__builtins__": builtins})
    sys.modules["__main__"] = main_module
    linecache.cache[script] = (len(source), None, source.splitlines(keepends=True), script)
    code = compile(source, script, "exec", dont_inherit=True)
    exec(code, main_module.__dict__)


if __name__ == "__main__":
    main()
