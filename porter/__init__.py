"""porter: port PyTorch model code to new accelerators.

This module stays import-light on purpose: patched libraries import ``porter.runtime``, which imports this
package first, and must not pay for pluggy, libcst or the CLI.
"""
__version__ = "0.1.0"


def __getattr__(name):
    # ``porter.hookimpl`` is what plugin authors decorate their hooks with; built on first use.
    if name == "hookimpl":
        import pluggy

        marker = pluggy.HookimplMarker("porter")
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module 'porter' has no attribute {name!r}")
