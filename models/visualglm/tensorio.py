"""Checkpoint files read lazily and written one tensor at a time, so converting a model never holds all of it.

Reading: every file is memory-mapped (safetensors through ``safe_open``; torch zips through porter's weights-only
loader with ``mmap``); a tensor's bytes are read when it is asked for, and its pages are file-backed (the kernel can
drop them), not the process's own memory.

Writing: :class:`TorchWriter` writes torch's zip format (what ``torch.save`` writes, and SAT and ``torch.load``
read) and :class:`SafetensorsWriter` writes the safetensors format; both take the list of names, dtypes and
shapes first and then each tensor's bytes in turn, so at most one tensor is in memory beside what it came from.
"""
from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
                      torch.int8: "I8", torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}
HEADER_LIMIT = 100 << 20  # bytes: safetensors' own readers refuse bigger headers


@dataclass(frozen=True)
class Spec:
    """One tensor of an output file: its name, dtype and shape, known before any byte is read."""
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _raw(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, without a copy."""
    t = tensor.detach().cpu().contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")  # type: ignore[arg-type]


class SafetensorsWriter:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
    shape and byte range, then the bytes in header order (https://github.com/huggingface/safetensors, "Format")."""

    def __init__(self, path: Path, specs: list[Spec], metadata: dict | None = None):
        header, offset = {}, 0
        for s in specs:
            if s.dtype not in SAFETENSORS_DTYPES:
                raise ValueError(f"{s.name}: dtype {s.dtype} has no safetensors name")
            header[s.name] = {"dtype": SAFETENSORS_DTYPES[s.dtype], "shape": list(s.shape),
                              "data_offsets": [offset, offset + s.nbytes]}
            offset += s.nbytes
        header["__metadata__"] = {"format": "pt", **(metadata or {})}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        self.specs, self._next = specs, 0
        self.fh = open(path, "wb")
        self.fh.write(struct.pack("<Q", len(text)) + text)

    def write(self, tensor: torch.Tensor) -> None:
        spec = self.specs[self._next]
        _check(spec, tensor)
        self.fh.write(_raw(tensor))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.specs):
            raise RuntimeError(f"{len(self.specs) - self._next} tensor(s) not written")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def abandon(self) -> None:
        try:
            self.fh.close()
        except OSError:  # the disk that failed the write may fail the flush too; the file goes with its folder
            pass


def _check(spec: Spec, tensor: torch.Tensor) -> None:
    if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
        raise RuntimeError(f"{spec.name}: made {tensor.dtype} {tuple(tensor.shape)}, planned {spec.dtype} {spec.shape}")


class _StorageRef:
    def __init__(self, key: str, spec: Spec):
        self.key, self.spec = key, spec


class _TensorRef:
    """Pickles as the tensor ``spec`` describes, stored in record ``data/<key>``: the same reduce call torch
    writes for a contiguous tensor, so ``torch.load`` (weights-only included) rebuilds it."""

    def __init__(self, key: str, spec: Spec):
        self.storage, self.spec = _StorageRef(key, spec), spec

    def __reduce_ex__(self, protocol):
        shape = self.spec.shape
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= s
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, torch.Size(shape), tuple(reversed(stride)), False, collections.OrderedDict()))


_STORAGE_CLASSES = {torch.float16: "HalfStorage", torch.bfloat16: "BFloat16Storage", torch.float32: "FloatStorage",
                    torch.float64: "DoubleStorage", torch.int8: "CharStorage", torch.uint8: "ByteStorage",
                    torch.int32: "IntStorage", torch.int64: "LongStorage", torch.bool: "BoolStorage"}


class TorchWriter:
    """torch's zip format, one storage per tensor, written in ``specs`` order: ``data.pkl`` (the object with each
    tensor as a reference to its record), then each record as its tensor arrives. ``wrap`` puts the state dict
    inside the object saved (SAT saves ``{"module": state_dict, ...}``)."""

    def __init__(self, path: Path, specs: list[Spec], wrap: Callable[[dict], object] = lambda sd: sd):
        refs = {s.name: _TensorRef(str(i), s) for i, s in enumerate(specs)}
        buf = io.BytesIO()

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _StorageRef):
                    numel = math.prod(obj.spec.shape)
                    return ("storage", getattr(torch, _STORAGE_CLASSES[obj.spec.dtype]), obj.key, "cpu", numel)
                return None

        Pickler(buf, protocol=2).dump(wrap(refs))
        self.specs, self._next, self.path = specs, 0, path
        self.writer = torch._C.PyTorchFileWriter(str(path))  # torch.save's own writer: alignment, zip64
        data = buf.getvalue()
        self.writer.write_record("data.pkl", data, len(data))
        self.writer.write_record(".format_version", b"1", 1)
        self.writer.write_record("byteorder", b"little", len(b"little"))

    def write(self, tensor: torch.Tensor) -> None:
        spec = self.specs[self._next]
        _check(spec, tensor)
        raw = tensor.detach().cpu().contiguous()
        data = raw.untyped_storage() if raw.numel() else b""
        try:
            self.writer.write_record(f"data/{self._next}", data, spec.nbytes)  # type: ignore[arg-type]
        except RuntimeError as exc:  # the C++ stream's failure (a full disk, a file size limit) has no errno
            raise OSError(f"{self.path}: {_first_line(exc)}") from None
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.specs):
            raise RuntimeError(f"{len(self.specs) - self._next} tensor(s) not written")
        try:
            self.writer.write_end_of_file()
        except RuntimeError as exc:
            raise OSError(f"{self.path}: {_first_line(exc)}") from None

    def abandon(self) -> None:
        """After a failure: mark the zip finished without caring whether that works. torch's writer finishes an
        unfinished file in its destructor, and a second failure there (the disk still full) aborts the process."""
        try:
            self.writer.write_end_of_file()
        except Exception:  # noqa: BLE001 - only the mark matters; the file is deleted with its folder
            pass


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def write_file(path: Path, specs: list[Spec], make: Callable[[Spec], torch.Tensor], *, fmt: str,
               wrap: Callable[[dict], object] = lambda sd: sd, progress: Callable[[int], None] | None = None) -> int:
    """Write ``specs`` to ``path`` in ``fmt`` ("safetensors" or "torch"), asking ``make`` for one tensor at a time
    and dropping it once written; returns the bytes of tensor data written."""
    writer = SafetensorsWriter(path, specs) if fmt == "safetensors" else TorchWriter(path, specs, wrap)
    done = 0
    try:
        for spec in specs:
            tensor = make(spec)
            writer.write(tensor)
            done += spec.nbytes
            del tensor
            if progress:
                progress(spec.nbytes)
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    if fmt == "torch":  # the zip writer has no fsync of its own
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    return done


def give_back_freed_memory() -> None:
    """Have glibc serve allocations of 1 MiB and more from their own mappings, returned to the system when freed.
    A converter frees a tensor of a few MiB after each write; glibc's default (a threshold that grows with what was
    freed) keeps such blocks in the heap, and a 6B conversion's resident memory climbs layer by layer."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (malloc.h); fixed from now on
    except (OSError, AttributeError):  # not glibc: its allocator's own rules apply
        pass


# -- reading ---------------------------------------------------------------------------------------------------------
class ReadError(Exception):
    """A weights file that cannot be read as one; the message names it."""


def safetensors_header(path: Path) -> dict:
    """A safetensors file's header ({name: {dtype, shape, data_offsets}}), read and checked without reading data:
    the header fits in the file, each range lies inside the data and matches its dtype and shape."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ReadError(f"{path}: {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(HEADER_LIMIT, size - 8):
            raise ReadError(f"{path}: header of {n:,} bytes does not fit the file ({size:,} bytes)")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ReadError(f"{path}: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ReadError(f"{path}: header is not a JSON object")
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    data = size - 8 - n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = names[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ReadError(f"{path}: tensor {name!r}: malformed header entry") from None
        spec = Spec(name, dtype, shape)
        if any(s < 0 for s in shape) or not 0 <= start <= end <= data or end - start != spec.nbytes:
            raise ReadError(f"{path}: tensor {name!r}: bytes {start}..{end} do not fit its shape {list(shape)} "
                            f"or the file")
        out[name] = spec
    return out


class SafetensorsFile:
    """A safetensors file, memory-mapped; tensors read on demand."""

    def __init__(self, path: Path):
        self.path = path
        self.specs = safetensors_header(path)
        from safetensors import safe_open

        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ReadError(f"{path}: not a safetensors file ({exc})") from None

    def get(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)


class TorchFile:
    """A torch zip of one state dict (or SAT's ``{"module": ...}``), memory-mapped, unpickled weights-only."""

    def __init__(self, path: Path, read_states: Callable[[Path], dict]):
        self.path = path
        self._weights = read_states(path)
        self.specs = {n: Spec(n, t.dtype, tuple(t.shape)) for n, t in self._weights.items()}

    def get(self, name: str) -> torch.Tensor:
        return self._weights[name]
