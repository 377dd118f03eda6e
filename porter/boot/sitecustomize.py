"""porter exec's boot file: imported first by every Python process of a program `porter exec` runs (its folder
leads PYTHONPATH). It installs the in-memory port (porter.execboot), then runs the site's own sitecustomize, if
any, which this file's name would otherwise hide. It does nothing when PORTER_EXEC_MANIFEST is unset."""


def _porter_exec_boot():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    if os.environ.get("PORTER_EXEC_MANIFEST"):
        try:
            from porter import execboot
        except ImportError as exc:  # another interpreter without porter: it runs unported, and says so
            sys.stderr.write(f"porter exec: {sys.executable} cannot import porter ({exc}); running without the port\n")
        else:
            execboot.install(os.environ["PORTER_EXEC_MANIFEST"])
    # the site's own sitecustomize, found on the path after this folder
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.PathFinder.find_spec(
        "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_porter_exec_boot()
