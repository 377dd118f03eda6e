"""The abstract :class:`Device`: what porter asks of every device, and what it answers by default.

Its own module, below the device files and the registry: ``cpu.py``, ``cuda.py`` and ``npu.py`` import the base
class from here and ``device.py`` (the registry and the functions rewritten code calls) imports them all, so
module-level imports run one way, base -> devices -> registry, and no module needs another that is still
half-imported (``CPU.as_device`` asks the registry at call time, when it is complete). Keeping the base class in
``device.py`` would make each device file import the module that imports it.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch


class Device(abc.ABC):
    """What a framework may ask of a device. Class attributes describe it; methods act on it.

    Abstract are only the two things no default can know: whether the device is usable here (``is_present``)
    and which torch module speaks for it (``_module``: torch.cuda, torch.npu, torch.xpu...). Every other method
    is that module's CUDA-shaped API, so a new accelerator is its class attributes plus these two; the CPU,
    which has no such module, overrides the methods instead (and subclasses of it inherit that)."""

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
    @abc.abstractmethod
    def is_present(cls) -> bool:
        """Whether this device can be used in this process (drivers and runtime importable, a device seen)."""

    @property
    def is_accelerator(self) -> bool:
        return True

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lives on this device, so this device's kernels may take it."""
        return tensor.device.type == self.torch_type

    @abc.abstractmethod
    def _module(self) -> Any:
        """The torch sub-module with the CUDA-shaped API (torch.cuda, torch.npu) that the methods below call.
        Any, not ModuleType: a device may hand back a namespace of its own (the tests' fake torch.npu does)."""

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
        """An int (local rank), a string or a torch.device, as a torch.device of this device's type.

        ``"cuda"``/``"cuda:N"`` (the device the code was written for) and this device's own type become this
        device's type, keeping the index; any other type (``"cpu"``, ``"meta"``) stays what it is."""
        if isinstance(spec, int) and not isinstance(spec, bool):
            return torch.device(self.torch_type, spec)
        kind, index = type_and_index(spec)
        if kind in ("cuda", self.torch_type):
            return torch.device(self.torch_type) if index is None else torch.device(self.torch_type, index)
        return spec if isinstance(spec, torch.device) else torch.device(spec)

    def synchronize(self, device: Any = None) -> None:
        self._module().synchronize(*self._device_args(device))

    def _device_args(self, device: Any) -> tuple:
        """``(device,)`` as this device's torch.device, or ``()`` when the caller named none (the device
        module's own default: the current device)."""
        return () if device is None else (self.as_device(device),)

    def device_context(self, index: Any):
        """``with``-block that makes ``index`` the current device (``torch.cuda.device(index)``)."""
        if index is not None and not isinstance(index, int):  # an int is an index (-1: no change), as torch reads it
            index = self.as_device(index)
        return self._module().device(index)

    def get_device_name(self, device: Any = None) -> str:
        return self._module().get_device_name(*self._device_args(device))

    def get_device_properties(self, device: Any = None) -> Any:
        return self._module().get_device_properties(self.current_index() if device is None else self.as_device(device))

    def is_bf16_supported(self) -> bool:
        return bool(self._module().is_bf16_supported())

    def tensor_type(self, name: str) -> type:
        """The legacy typed-tensor class ``name`` (``"FloatTensor"``) whose tensors live on this device."""
        return getattr(self._module(), name)

    # -- random numbers ---------------------------------------------------------------------------------
    def manual_seed(self, seed: int) -> None:
        self._module().manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        self._module().manual_seed_all(seed)

    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return self._module().get_rng_state(*self._device_args(device))

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        self._module().set_rng_state(state, *self._device_args(device))

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return list(self._module().get_rng_state_all())

    def set_rng_state_all(self, states: Any) -> None:
        self._module().set_rng_state_all(states)

    def seed(self) -> None:
        self._module().seed()

    def seed_all(self) -> None:
        self._module().seed_all()

    def initial_seed(self) -> int:
        return int(self._module().initial_seed())

    # -- memory -----------------------------------------------------------------------------------------
    def memory_allocated(self, device: Any = None) -> int:
        return self._module().memory_allocated(*self._device_args(device))

    def max_memory_allocated(self, device: Any = None) -> int:
        return self._module().max_memory_allocated(*self._device_args(device))

    def memory_reserved(self, device: Any = None) -> int:
        return self._module().memory_reserved(*self._device_args(device))

    def max_memory_reserved(self, device: Any = None) -> int:
        return self._module().max_memory_reserved(*self._device_args(device))

    def memory_stats(self, device: Any = None) -> dict:
        return dict(self._module().memory_stats(*self._device_args(device)))

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self._module().reset_peak_memory_stats(*self._device_args(device))

    def empty_cache(self) -> None:
        self._module().empty_cache()

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        free, total = self._module().mem_get_info(*self._device_args(device))
        return int(free), int(total)

    def memory_free(self) -> int | None:
        """Bytes free on the current device, or None where the device has no memory of its own (the CPU)."""
        return int(self._module().mem_get_info()[0])

    # -- streams and events -------------------------------------------------------------------------------
    def event(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> Any:
        return self._module().Event(enable_timing=enable_timing, blocking=blocking, interprocess=interprocess)

    def new_stream(self, device: Any = None, priority: int = 0) -> Any:
        return self._module().Stream(*self._device_args(device), priority=priority)

    def current_stream(self, device: Any = None) -> Any:
        return self._module().current_stream(*self._device_args(device))

    def default_stream(self, device: Any = None) -> Any:
        return self._module().default_stream(*self._device_args(device))

    def stream(self, stream: Any):
        return self._module().stream(stream)

    # -- mixed precision ----------------------------------------------------------------------------------
    def autocast(self, enabled: bool = True, dtype: torch.dtype | None = None, cache_enabled: bool | None = None):
        return torch.autocast(self.torch_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    def grad_scaler(self, **options: Any) -> Any:
        return torch.amp.GradScaler(self.torch_type, **options)

    # -- data types ---------------------------------------------------------------------------------------
    @property
    def default_dtype(self) -> torch.dtype:
        """The dtype a model runs in here unless told otherwise: fp16 on accelerators, bf16 on a (plugin) device
        whose class says ``fp16 = False``, fp32 on the CPU."""
        return torch.float16 if self.fp16 else torch.bfloat16

    # -- numerics flags and profiling ------------------------------------------------------------------
    # Deliberately no-ops, not abstract: only CUDA has these switches and profilers, and code calls them everywhere.
    def set_determinism(self, *, benchmark: bool | None = None, deterministic: bool | None = None,
                        allow_tf32: bool | None = None, cudnn_allow_tf32: bool | None = None) -> None:
        """cudnn / tf32 switches (None: leave that one as it is); devices without them ignore the call."""
        return None

    def range_push(self, message: str) -> None:
        """Open a named profiler range (nvtx on CUDA); a no-op where there is no such profiler."""
        return None

    def range_pop(self) -> None:
        """Close the innermost profiler range."""
        return None

    def profiler_start(self) -> None:
        """Start the device profiler (cudaProfilerStart on CUDA)."""
        return None

    def profiler_stop(self) -> None:
        """Stop the device profiler."""
        return None

    def __repr__(self) -> str:
        return f"<porter device {self.name}>"


def type_and_index(spec: Any) -> tuple[str, int | None]:
    """The device type and index a torch.device or a device string names (``"cuda:1"`` -> ("cuda", 1)); strings
    are split by hand, since torch.device() refuses a type this torch does not know ("npu" without torch_npu)."""
    if isinstance(spec, torch.device):
        return spec.type, spec.index
    kind, _, index = str(spec).partition(":")
    return kind.strip(), int(index) if index.strip().isdigit() else None
