"""Stand-ins for names whose optional dependency is missing: importing works, using them says why not."""
from __future__ import annotations


def missing(package: str, name: str, error: BaseException | None = None):
    """A callable (also usable as a base class) that raises ImportError naming ``package`` when used."""
    reason = f": {error}" if error else ""

    class Missing:
        def __init__(self, *args, **kwargs):
            raise ImportError(f"{name} needs {package}, which could not be imported{reason}. "
                              f"Install {package} to use it.")

        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__(**kwargs)

    Missing.__name__ = Missing.__qualname__ = name
    return Missing
