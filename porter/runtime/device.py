"""One interface for every device porter can run on, one class per device.

Patched code calls the module-level functions (``device.synchronize()``, ``device.current_device()``...),
which forward to the device selected once per process: ``PORTER_DEVICE`` (cpu, cuda, npu, or a plugin's
name) or detection in the order npu, cuda, cpu. Nothing else in porter asks which device it is on by
comparing strings: it asks the selected :class:`Device`.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, ClassVar

import torch

DEVICE_ENV = "PORTER_DEVICE"


class Device:
    """What a framework may ask of a device. Class attributes describe it; methods act on it."""

    name: ClassVar[str]  # what PORTER_DEVICE and --device accept
    torch_type: ClassVar[str]  # the torch.device type string
    backend: ClassVar[str]  # torch.distributed process-group backend
    visible_devices_env: ClassVar[str | None]  # the variable that restricts which devices a process sees
    deepspeed_accelerator: ClassVar[str]  # the value of DS_ACCELERATOR for DeepSpeed
    detect_order: ClassVar[int] = 100  # lower is tried first during auto-detection
    pin_memory: ClassVar[bool] = False  # whether pinned host memory speeds host-to-device copies
    fp16: ClassVar[bool] = True

    # -- discovery --------------------------------------------------------------------------------------
    @classmethod
    def is_present(cls) -> bool:
        """Whether this device can be used in this process (drivers and runtime importable, a device seen)."""
        raise NotImplementedError

    @property
    def is_accelerator(self) -> bool:
        return True

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lives on this device, so this device's kernels may take it."""
        return tensor.device.type == self.torch_type

    def _module(self):
        """The torch sub-module with the CUDA-shaped API (torch.cuda, torch.npu)."""
        raise NotImplementedError

    # -- devices ----------------------------------------------------------------------------------------
    def device_count(self) -> int:
        return self._module().device_count()

    def current_index(self) -> int:
        return self._module().current_device()

    def current_device(self) -> torch.device:
        return torch.device(self.torch_type, self.current_index())

    def set_device(self, index: Any) -> None:
        self._module().set_device(self.as_device(index))

    def as_device(self, spec: Any) -> torch.device:
        """An int (local rank), a string or a torch.device, as a torch.device of this device's type."""
        if isinstance(spec, torch.device):
            return spec
        if isinstance(spec, int):
            return torch.device(self.torch_type, spec)
        return torch.device(spec)

    def synchronize(self) -> None:
        self._module().synchronize()

    # -- random numbers ---------------------------------------------------------------------------------
    def manual_seed(self, seed: int) -> None:
        self._module().manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        self._module().manual_seed_all(seed)

    def get_rng_state(self) -> torch.Tensor:
        return self._module().get_rng_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._module().set_rng_state(state)

    # -- memory -----------------------------------------------------------------------------------------
    def memory_allocated(self) -> int:
        return self._module().memory_allocated()

    def max_memory_allocated(self) -> int:
        return self._module().max_memory_allocated()

    def memory_reserved(self) -> int:
        return self._module().memory_reserved()

    def max_memory_reserved(self) -> int:
        return self._module().max_memory_reserved()

    def memory_free(self) -> int | None:
        """Bytes free on the current device, or None where the device has no memory of its own (the CPU)."""
        return int(self._module().mem_get_info()[0])

    # -- data types ---------------------------------------------------------------------------------------
    @property
    def default_dtype(self) -> torch.dtype:
        """The dtype a model runs in here unless told otherwise: fp16 on accelerators, bf16 on a (plugin) device
        whose class says ``fp16 = False``, fp32 on the CPU."""
        return torch.float16 if self.fp16 else torch.bfloat16

    # -- numerics flags and profiling ------------------------------------------------------------------
    def set_determinism(self, *, benchmark: bool, deterministic: bool, allow_tf32: bool) -> None:
        """cudnn / tf32 switches; devices without them ignore the call."""

    def range_push(self, message: str) -> None:
        """Open a named profiler range (nvtx on CUDA); a no-op where there is no such profiler."""

    def range_pop(self) -> None:
        """Close the innermost profiler range."""

    def profiler_start(self) -> None:
        """Start the device profiler (cudaProfilerStart on CUDA)."""

    def profiler_stop(self) -> None:
        """Stop the device profiler."""

    def __repr__(self) -> str:
        return f"<porter device {self.name}>"


class CPU(Device):
    name = "cpu"
    torch_type = "cpu"
    backend = "gloo"
    visible_devices_env = None
    deepspeed_accelerator = "cpu"
    detect_order = 1000

    @classmethod
    def is_present(cls) -> bool:
        return True

    @property
    def is_accelerator(self) -> bool:
        return False

    # SAT reads "no devices" as "use the CPU", which is what this answers.
    def device_count(self) -> int:
        return 0

    def current_index(self) -> int:
        return 0

    def current_device(self) -> torch.device:
        return torch.device("cpu")

    def set_device(self, index: Any) -> None:
        pass

    def as_device(self, spec: Any) -> torch.device:
        return torch.device("cpu")

    def synchronize(self) -> None:
        pass

    # The CPU generator is torch's default one: seeding it is torch.manual_seed's job, already done by callers.
    def manual_seed(self, seed: int) -> None:
        pass

    def manual_seed_all(self, seed: int) -> None:
        pass

    def get_rng_state(self) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        torch.set_rng_state(state)

    def memory_allocated(self) -> int:
        return 0

    max_memory_allocated = memory_reserved = max_memory_reserved = memory_allocated

    def memory_free(self) -> int | None:
        return None

    @property
    def default_dtype(self) -> torch.dtype:
        return torch.float32


class CUDA(Device):
    name = "cuda"
    torch_type = "cuda"
    backend = "nccl"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    deepspeed_accelerator = "cuda"
    detect_order = 20
    pin_memory = True

    @classmethod
    def is_present(cls) -> bool:
        return torch.cuda.is_available()

    def _module(self):
        return torch.cuda

    def set_determinism(self, *, benchmark: bool, deterministic: bool, allow_tf32: bool) -> None:
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.enabled = True
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32

    def range_push(self, message: str) -> None:
        torch.cuda.nvtx.range_push(message)

    def range_pop(self) -> None:
        torch.cuda.nvtx.range_pop()

    def profiler_start(self) -> None:
        torch.cuda.cudart().cudaProfilerStart()

    def profiler_stop(self) -> None:
        torch.cuda.cudart().cudaProfilerStop()


def import_torch_npu():
    """torch_npu, or None. Its wheel installs anywhere but imports only with Huawei CANN present."""
    try:
        import torch_npu  # noqa: F401
    except Exception:  # ImportError without CANN; anything else means it is unusable too
        return None
    return sys.modules["torch_npu"]


class NPU(Device):
    name = "npu"
    torch_type = "npu"
    backend = "hccl"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"
    deepspeed_accelerator = "npu"
    detect_order = 10  # before CUDA: transfer_to_npu makes torch.cuda.is_available() true on NPU machines
    pin_memory = True

    @classmethod
    def is_present(cls) -> bool:
        if import_torch_npu() is None:
            return False
        npu = getattr(torch, "npu", None)
        return bool(npu is not None and npu.is_available())

    def _module(self):
        import_torch_npu()
        return torch.npu


BUILTIN: tuple[type[Device], ...] = (NPU, CUDA, CPU)
_extra: dict[str, type[Device]] = {}
_selected: Device | None = None


def register(device_class: type[Device]) -> None:
    """Add a device backend (plugins do this through the porter_register_devices hook)."""
    _extra[device_class.name] = device_class


def known() -> dict[str, type[Device]]:
    classes = {c.name: c for c in BUILTIN}
    classes.update(_extra)
    return classes


def select(name: str | None = None) -> Device:
    """Pick the device for this process: ``name``, else ``PORTER_DEVICE``, else the first one present."""
    global _selected
    name = name or os.environ.get(DEVICE_ENV) or "auto"
    classes = known()
    if name != "auto":
        if name not in classes:
            raise ValueError(f"{DEVICE_ENV}={name!r}: unknown device (known: {', '.join(sorted(classes))})")
        cls = classes[name]
        if not cls.is_present():
            raise RuntimeError(f"{DEVICE_ENV}={name!r} but no {name} device is usable in this process")
        _selected = cls()
        return _selected
    chosen: Device = CPU()  # present everywhere; detect_order puts it last
    for cls in sorted(classes.values(), key=lambda c: c.detect_order):
        if cls.is_present():
            chosen = cls()
            break
    _selected = chosen
    if not chosen.is_accelerator:
        warnings.warn(
            "porter: no accelerator found (tried " + ", ".join(
                c.name for c in sorted(classes.values(), key=lambda c: c.detect_order) if c is not CPU)
            + "); running on the CPU. Set PORTER_DEVICE=cpu to say that is intended.",
            RuntimeWarning, stacklevel=2)
    return chosen


def current() -> Device:
    """The device selected for this process (selected on first use)."""
    return _selected if _selected is not None else select()


def reset() -> None:
    """Forget the selection (tests, and processes that change PORTER_DEVICE before first use)."""
    global _selected
    _selected = None


# -- what rewritten code calls: the torch.cuda-shaped API, forwarded to the selected device -------------


def is_available() -> bool:
    """True when an accelerator (not the CPU) is selected: what `torch.cuda.is_available()` meant to SAT."""
    return current().is_accelerator


def device_count() -> int:
    return current().device_count()


def current_device() -> torch.device:
    return current().current_device()


def set_device(index: Any) -> None:
    current().set_device(index)


def as_device(spec: Any) -> torch.device:
    return current().as_device(spec)


def synchronize() -> None:
    current().synchronize()


def manual_seed(seed: int) -> None:
    current().manual_seed(seed)


def manual_seed_all(seed: int) -> None:
    current().manual_seed_all(seed)


def get_rng_state() -> torch.Tensor:
    return current().get_rng_state()


def set_rng_state(state: torch.Tensor) -> None:
    current().set_rng_state(state)


def memory_allocated() -> int:
    return current().memory_allocated()


def max_memory_allocated() -> int:
    return current().max_memory_allocated()


def memory_reserved() -> int:
    return current().memory_reserved()


def max_memory_reserved() -> int:
    return current().max_memory_reserved()


BACKEND_ENV = "PORTER_BACKEND"  # overrides the device's process-group backend (e.g. gloo to debug on CUDA)


def communication_backend() -> str:
    return os.environ.get(BACKEND_ENV) or current().backend


def pin_memory() -> bool:
    return current().pin_memory


def set_determinism(*, benchmark: bool, deterministic: bool, allow_tf32: bool) -> None:
    current().set_determinism(benchmark=benchmark, deterministic=deterministic, allow_tf32=allow_tf32)


def range_push(message: str) -> None:
    current().range_push(message)


def range_pop() -> None:
    current().range_pop()


def profiler_start() -> None:
    current().profiler_start()


def profiler_stop() -> None:
    current().profiler_stop()
