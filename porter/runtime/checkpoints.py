"""Checkpoint files read without running code from them: what patched libraries call instead of ``torch.load``.

The full unpickler (``torch.load`` with ``weights_only`` off) runs whatever the file's pickle names, so a crafted checkpoint executes code
on the machine that loads it. :func:`load` unpickles with ``weights_only=True`` and allows, beyond the tensors
and plain containers torch allows already, only what SAT's and DeepSpeed's own checkpoints hold: numpy's RNG
state (``np.random.get_state()``: a tuple holding one uint32 array). Python's ``random.getstate()``, torch's RNG
states, the learning-rate scheduler's state, ``param_shapes`` (``torch.Size`` in ordered dicts) and DeepSpeed's
config dict need nothing more. The allow-list holds for the one call (``torch.serialization.safe_globals``), never
for the process.

Any other global is refused, naming the file and every such global, before anything is unpickled where the file
is a zip (``torch.save``'s format since torch 1.6): its pickle is read as opcodes, not run. ``.safetensors`` files
hold no pickle and load through the ``safetensors`` package, memory-mapped.

Like the rest of ``porter.runtime`` this imports nothing of porter's core; callers turn
:class:`RefusedCheckpoint` into their own error.
"""
from __future__ import annotations

import os
import pickle
import re
import stat

import torch

SAFETENSORS_SUFFIX = ".safetensors"
ZIP_MAGIC = b"PK\x03\x04"
# torch's weights-only unpickler names the global it refused in one of these forms
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global|unsupported GLOBAL (\S+) whose module"
                             r"|allowlisted via `add_safe_globals`, but got <class '([^']+)'>")


class RefusedCheckpoint(pickle.UnpicklingError):
    """A file :func:`load` will not read. ``str()`` is one line that names the file and why; ``globals`` lists
    the pickle globals that were not allowed (empty when the refusal is about the file itself)."""

    def __init__(self, message: str, globals_: list[str] | None = None):
        super().__init__(message)
        self.globals = list(globals_ or [])


def allowed_globals() -> list:
    """What SAT's checkpoints hold beyond torch's own allow-list: a uint32 numpy array, as
    ``np.random.get_state()`` pickles it (the array, its dtype, and the dtype's class that unpickling builds)."""
    import numpy as np  # here, not at the top: `import porter.runtime` stays light

    state = np.zeros(1, dtype=np.uint32)
    # ndarray pickles as (numpy's _reconstruct, ...); asking an array for it gives the function under whichever
    # module this numpy keeps it (numpy.core.multiarray in 1.x, numpy._core.multiarray in 2.x)
    reconstruct = state.__reduce__()[0]
    return [np.ndarray, np.dtype, type(state.dtype), reconstruct]


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuse what is not a regular file (a folder, a FIFO, a symlink to /dev/zero) before opening it: reading a
    device or a pipe would hang or never end."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: what would be read
    except OSError as exc:
        raise RefusedCheckpoint(f"{os.fspath(path)}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise RefusedCheckpoint(f"{os.fspath(path)}: not a regular file")


def unsafe_globals(path: str | os.PathLike) -> list[str] | None:
    """The globals a ``torch.save`` zip's pickle names beyond torch's allow-list and :func:`allowed_globals`, read
    as opcodes without running it; None for a file that is not such a zip (the legacy format, safetensors,
    anything else). Raises what torch raises for a damaged zip."""
    check_regular_file(path)
    if os.fspath(path).endswith(SAFETENSORS_SUFFIX):
        return None
    with open(path, "rb") as fh:
        if fh.read(4) != ZIP_MAGIC:  # torch's own test for its zip format; a damaged zip fails below, as in torch
            return None
    with torch.serialization.safe_globals(allowed_globals()):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def refusal(path, names: list[str]) -> RefusedCheckpoint:
    return RefusedCheckpoint(
        f"{os.fspath(path)}: refused: its pickle names {', '.join(names)}, which tensors and SAT's training state "
        f"never need (unpickling a crafted file runs code this way); nothing in it was run", names)


def load(f, map_location=None, **kwargs):
    """``torch.load(f, map_location, **kwargs)`` with ``weights_only=True`` and SAT's allow-list; a
    ``.safetensors`` path loads through safetensors. Raises :class:`RefusedCheckpoint` for a file that needs any
    other global or is not a regular file, and ``pickle.UnpicklingError`` (the reason, one line) for other
    weights-only failures."""
    if kwargs.pop("weights_only", None) is False:  # None is torch's "the default", which is True since 2.6
        raise ValueError("porter.runtime.checkpoints.load never turns weights_only off")
    path = f if isinstance(f, (str, os.PathLike)) else None
    if path is not None:
        if os.fspath(path).endswith(SAFETENSORS_SUFFIX):
            return _load_safetensors(path, map_location)
        names = unsafe_globals(path)  # also refuses a FIFO or device before torch opens it
        if names:
            raise refusal(path, names)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(f, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        if isinstance(exc, RefusedCheckpoint) or "Weights only load failed" not in str(exc):
            raise
        # the legacy format, or a global the opcode scan cannot see: torch's own refusal, reworded without its
        # advice to retry with the full unpickler
        found = [next(filter(None, groups)) for groups in _REFUSED_GLOBAL.findall(str(exc))]
        where = os.fspath(path) if path is not None else repr(f)
        if found:
            raise refusal(where, found) from None
        raise pickle.UnpicklingError(f"{where}: {_reason(str(exc))}") from None


def _reason(message: str) -> str:
    """The line of torch's weights-only failure that says what was wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            said = line.split("WeightsUnpickler error:", 1)[1].strip()
            return said or (lines[i + 1] if i + 1 < len(lines) else "weights-only unpickling failed")
    return lines[1] if len(lines) > 1 else (lines[0] if lines else "weights-only unpickling failed")


def _load_safetensors(path, map_location):
    check_regular_file(path)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise RefusedCheckpoint(f"{os.fspath(path)}: reading .safetensors needs the safetensors package, which is "
                                f"not installed") from None
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return load_file(os.fspath(path), device=str(device))  # memory-mapped: tensors are read when touched
