"""One interface for every device porter can run on, one class per device.

Patched code calls the module-level functions (``device.synchronize()``, ``device.current_device()``...),
which forward to the device selected once per process: ``PORTER_DEVICE`` (cpu, cuda, npu, or a plugin's
name) or detection in the order npu, cuda, cpu. Nothing else in porter asks which device it is on by
comparing strings: it asks the selected :class:`Device`.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import types
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
        """An int (local rank), a string or a torch.device, as a torch.device of this device's type.

        ``"cuda"``/``"cuda:N"`` (the device the code was written for) and this device's own type become this
        device's type, keeping the index; any other type (``"cpu"``, ``"meta"``) stays what it is."""
        if isinstance(spec, int) and not isinstance(spec, bool):
            return torch.device(self.torch_type, spec)
        kind, index = _type_and_index(spec)
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
        return self._module().device(None if index is None else self.as_device(index))

    def get_device_name(self, device: Any = None) -> str:
        return self._module().get_device_name(*self._device_args(device))

    def get_device_properties(self, device: Any = None) -> Any:
        return self._module().get_device_properties(self.as_device(0 if device is None else device))

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
    def set_determinism(self, *, benchmark: bool | None = None, deterministic: bool | None = None,
                        allow_tf32: bool | None = None, cudnn_allow_tf32: bool | None = None) -> None:
        """cudnn / tf32 switches (None: leave that one as it is); devices without them ignore the call."""

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
        """The CPU for an index or an accelerator ("cuda:1"); another type ("meta") stays what it is."""
        if isinstance(spec, int) or spec is None:
            return torch.device("cpu")
        kind, _ = _type_and_index(spec)
        if kind in ("cpu", "cuda") or kind in {c.torch_type for c in known().values()}:
            return torch.device("cpu")
        return spec if isinstance(spec, torch.device) else torch.device(spec)

    def synchronize(self, device: Any = None) -> None:
        pass

    def device_context(self, index: Any):
        return contextlib.nullcontext()

    def get_device_name(self, device: Any = None) -> str:
        return platform.processor() or platform.machine() or "cpu"

    def get_device_properties(self, device: Any = None) -> Any:
        """What code reads of ``torch.cuda.get_device_properties()``, for the host: name, total_memory (bytes
        of RAM), multi_processor_count (cores), major/minor 0."""
        return types.SimpleNamespace(name=self.get_device_name(), total_memory=_host_memory()[1],
                                     multi_processor_count=os.cpu_count() or 1, major=0, minor=0, type="cpu")

    def is_bf16_supported(self) -> bool:
        return True

    def tensor_type(self, name: str) -> type:
        return getattr(torch, name)

    # The CPU generator is torch's default one: seeding it is torch.manual_seed's job, already done by callers.
    def manual_seed(self, seed: int) -> None:
        pass

    def manual_seed_all(self, seed: int) -> None:
        pass

    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    # One state per accelerator, and there are none: a checkpoint saved on GPUs restores here without error.
    def get_rng_state_all(self) -> list[torch.Tensor]:
        return []

    def set_rng_state_all(self, states: Any) -> None:
        pass

    def seed(self) -> None:
        pass

    seed_all = seed

    def initial_seed(self) -> int:
        return torch.initial_seed()

    def memory_allocated(self, device: Any = None) -> int:
        return 0

    max_memory_allocated = memory_reserved = max_memory_reserved = memory_allocated

    def memory_stats(self, device: Any = None) -> dict:
        return {}

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        """The host's free (available) and total RAM in bytes."""
        return _host_memory()

    def memory_free(self) -> int | None:
        return None

    def event(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> Any:
        return CPUEvent(enable_timing=enable_timing)

    def new_stream(self, device: Any = None, priority: int = 0) -> Any:
        return CPUStream(priority)

    def current_stream(self, device: Any = None) -> Any:
        return _CPU_STREAM

    default_stream = current_stream

    def stream(self, stream: Any):
        return contextlib.nullcontext(stream)

    def autocast(self, enabled: bool = True, dtype: torch.dtype | None = None, cache_enabled: bool | None = None):
        """CPU autocast only for an explicit ``dtype``: code that says "mixed precision" without one meant the
        GPU's float16, and the CPU runs float32 (``default_dtype``) instead."""
        return torch.autocast("cpu", dtype=dtype, enabled=enabled and dtype is not None, cache_enabled=cache_enabled)

    def grad_scaler(self, **options: Any) -> Any:
        """A disabled scaler (``scale(loss)`` is ``loss``, ``step`` steps): gradients are float32 here."""
        return torch.amp.GradScaler("cpu", **{**options, "enabled": False})

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

    def set_determinism(self, *, benchmark: bool | None = None, deterministic: bool | None = None,
                        allow_tf32: bool | None = None, cudnn_allow_tf32: bool | None = None) -> None:
        """Sets the flags given; given all of benchmark, deterministic and allow_tf32 (SAT's set_random_seed) it
        also turns cudnn on, as SAT's code did."""
        if benchmark is not None:
            torch.backends.cudnn.benchmark = benchmark
        if deterministic is not None:
            torch.backends.cudnn.deterministic = deterministic
        if allow_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        if cudnn_allow_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = cudnn_allow_tf32
        if None not in (benchmark, deterministic, allow_tf32):
            torch.backends.cudnn.enabled = True

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

    def tensor_type(self, name: str) -> type:
        """torch.npu's typed tensor; DoubleTensor, which torch_npu lacks, is its FloatTensor (as transfer_to_npu
        maps it)."""
        module = self._module()
        return getattr(module, name, None) or getattr(module, "FloatTensor" if name == "DoubleTensor" else name)

    def is_bf16_supported(self) -> bool:
        check = getattr(self._module(), "is_bf16_supported", None)
        return True if check is None else bool(check())

    # torch_npu's amp module (what transfer_to_npu puts in torch.cuda.amp's place): every torch_npu release has
    # it, where torch.autocast("npu") needs a recent torch
    def autocast(self, enabled: bool = True, dtype: torch.dtype | None = None, cache_enabled: bool | None = None):
        options: dict[str, Any] = {"enabled": enabled}
        if dtype is not None:
            options["dtype"] = dtype
        if cache_enabled is not None:
            options["cache_enabled"] = cache_enabled
        return self._module().amp.autocast(**options)

    def grad_scaler(self, **options: Any) -> Any:
        return self._module().amp.GradScaler(**options)


def _type_and_index(spec: Any) -> tuple[str, int | None]:
    """The device type and index a torch.device or a device string names (``"cuda:1"`` -> ("cuda", 1)); strings
    are split by hand, since torch.device() refuses a type this torch does not know ("npu" without torch_npu)."""
    if isinstance(spec, torch.device):
        return spec.type, spec.index
    kind, _, index = str(spec).partition(":")
    return kind.strip(), int(index) if index.strip().isdigit() else None


def _host_memory() -> tuple[int, int]:
    """(available, total) bytes of RAM; (0, 0) where the system does not say."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


class CPUEvent:
    """``torch.cuda.Event`` for the CPU, where work is done when the call returns: ``record()`` notes the time,
    ``elapsed_time(end)`` is milliseconds between two recorded events, waiting returns at once."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.enable_timing = enable_timing
        self._time: float | None = None

    def record(self, stream: Any = None) -> None:
        self._time = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: CPUEvent) -> float:
        if not self.enable_timing or not end.enable_timing:
            raise RuntimeError("Events were not created with enable_timing=True")
        if self._time is None or end._time is None:
            raise RuntimeError("both events must be recorded before elapsed_time()")
        return (end._time - self._time) * 1000.0


class CPUStream(torch.cpu.Stream):
    """torch.cpu.Stream (work on the CPU is in order and done when a call returns) with the methods code calls on
    a CUDA stream."""

    def __init__(self, priority: int = 0) -> None:
        super().__init__(priority)

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def record_event(self, event: Any = None) -> Any:
        event = event if event is not None else CPUEvent()
        event.record()
        return event


_CPU_STREAM = CPUStream()

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
