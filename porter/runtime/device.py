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


REQUIRED_ATTRIBUTES = ("name", "torch_type", "backend", "visible_devices_env", "deepspeed_accelerator")


def problems(device_class: Any) -> list[str]:
    """What ``device_class`` lacks to be a device porter can select, launch and call, each named: checked when it
    is registered, so a plugin device written against another porter fails there, not on first use."""
    if not isinstance(device_class, type) or not issubclass(device_class, Device):
        return ["it is not a subclass of porter.runtime.device.Device"]
    found = [f"the class attribute {attr}" for attr in REQUIRED_ATTRIBUTES if not hasattr(device_class, attr)]
    name = getattr(device_class, "name", None)
    if name is not None and not (isinstance(name, str) and name and name.replace("_", "").replace("-", "").isalnum()):
        found.append(f"a plain name (not {name!r})")
    if device_class.is_present.__func__ is Device.is_present.__func__:  # type: ignore[attr-defined]
        found.append("is_present() (whether this process can use the device)")
    if not issubclass(device_class, CPU) and device_class._module is Device._module:
        found.append("_module() (its torch.cuda-shaped module, e.g. torch.xpu), or a subclass of CPU")
    return found


def register(device_class: type[Device]) -> None:
    """Add a device backend (plugins do this through the porter_register_devices hook); ``TypeError`` naming what
    it lacks when it is not a complete device."""
    lacking = problems(device_class)
    if lacking:
        raise TypeError(f"device {getattr(device_class, 'name', device_class)!r} lacks " + "; ".join(lacking))
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
# Each function answers what its torch.cuda namesake answered on a CUDA machine, for the selected device; on the
# CPU, "the accelerator" is absent: no devices, nothing to wait for, no accelerator memory.


def is_available() -> bool:
    """True when an accelerator (not the CPU) is selected: what `torch.cuda.is_available()` means to code that
    asks "can I use the accelerator"."""
    return current().is_accelerator


def device_count() -> int:
    """How many devices of the selected kind this process sees (0 on the CPU, as torch.cuda answers there)."""
    return current().device_count()


def current_device() -> torch.device:
    """The current device as a torch.device (``npu:0``, ``cuda:0``, ``cpu``): for code that passes
    ``torch.cuda.current_device()`` where a device goes."""
    return current().current_device()


def current_index() -> int:
    """The current device's index as an int (0 on the CPU): ``torch.cuda.current_device()`` where it is used as a
    number (printed, formatted into ``"cuda:%d"``, compared)."""
    return current().current_index()


def set_device(index: Any) -> None:
    """Make ``index`` (an int, ``"cuda:1"`` or a torch.device) the current device; nothing on the CPU."""
    current().set_device(index)


def as_device(spec: Any, index: Any = None) -> torch.device:
    """``spec`` (an int index, a device string or a torch.device; with ``index``, as ``torch.device(type,
    index)`` takes them) as a torch.device of the selected device: ``"cuda:1"`` is ``npu:1`` on an NPU and
    ``cpu`` on the CPU; ``"cpu"`` and ``"meta"`` stay what they are."""
    if index is not None:
        spec = f"{spec}:{int(index)}"
    return current().as_device(spec)


def device_string(spec: Any, index: Any = None) -> str:
    """``as_device(spec, index)`` as a string (``"npu:0"``, ``"cpu"``): for a device string the code keeps as a
    string (a default argument, an option's default, a config value), so it stays a ``str``."""
    return str(as_device(spec, index))


def device_type() -> str:
    """The selected device's torch type string: ``"npu"``, ``"cuda"`` or ``"cpu"`` (a ``device_type=``)."""
    return current().torch_type


def on_accelerator(obj: Any) -> bool:
    """Whether ``obj`` (a tensor, a torch.device, a device string or a device type) is on the selected
    accelerator: ``tensor.is_cuda`` and ``x.device.type == "cuda"`` asked this. Always False on the CPU."""
    selected = current()
    if not selected.is_accelerator:
        return False
    if isinstance(obj, torch.Tensor):
        return selected.owns(obj)
    if not isinstance(obj, (str, torch.device)):  # something holding tensors: a PackedSequence, a module's buffer
        inner = getattr(obj, "device", None)
        inner = inner if isinstance(inner, (str, torch.device)) else getattr(obj, "data", None)
        return on_accelerator(inner) if isinstance(inner, (str, torch.device, torch.Tensor)) else False
    kind, _ = _type_and_index(obj)
    return kind in ("cuda", selected.torch_type)


def device_context(index: Any):
    """``with porter_device.device_context(i):`` makes device ``i`` current inside the block, as
    ``torch.cuda.device(i)``; on the CPU a block that changes nothing."""
    return current().device_context(index)


def device_ids(ids: Any) -> list[torch.device] | None:
    """``device_ids`` for DistributedDataParallel: each entry as the selected device, or None where that is the
    CPU (DDP takes device_ids only for accelerator modules)."""
    if ids is None:
        return None
    devices = [as_device(i) for i in ids]
    return None if any(d.type == "cpu" for d in devices) else devices


def parallel_device(spec: Any) -> torch.device | None:
    """DDP's ``output_device`` or FSDP's ``device_id`` as the selected device; None on the CPU (where both must be
    left out)."""
    if spec is None:
        return None
    device = as_device(spec)
    return None if device.type == "cpu" else device


def synchronize(device: Any = None) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    current().synchronize(device)


def manual_seed(seed: int) -> None:
    """Seed the current device's generator (the CPU's is torch.manual_seed's to seed)."""
    current().manual_seed(seed)


def manual_seed_all(seed: int) -> None:
    """Seed every device's generator."""
    current().manual_seed_all(seed)


def seed() -> None:
    """Seed the current device's generator with a random number."""
    current().seed()


def seed_all() -> None:
    """Seed every device's generator with a random number."""
    current().seed_all()


def initial_seed() -> int:
    """The current device generator's initial seed (the CPU generator's on the CPU)."""
    return current().initial_seed()


def get_rng_state(device: Any = None) -> torch.Tensor:
    """The current device generator's state (on the CPU, torch's default generator's)."""
    return current().get_rng_state(device)


def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
    """Restore what ``get_rng_state`` returned."""
    current().set_rng_state(state, device)


def get_rng_state_all() -> list[torch.Tensor]:
    """One generator state per device ([] on the CPU, which has no accelerator generators)."""
    return current().get_rng_state_all()


def set_rng_state_all(states: Any) -> None:
    """Restore what ``get_rng_state_all`` returned (on the CPU nothing: a GPU checkpoint's states are not the
    CPU's)."""
    current().set_rng_state_all(states)


def memory_allocated(device: Any = None) -> int:
    """Bytes held by tensors on the device (0 on the CPU)."""
    return current().memory_allocated(device)


def max_memory_allocated(device: Any = None) -> int:
    """The peak of ``memory_allocated`` since the start or ``reset_peak_memory_stats`` (0 on the CPU)."""
    return current().max_memory_allocated(device)


def memory_reserved(device: Any = None) -> int:
    """Bytes the device's caching allocator holds (0 on the CPU); also ``torch.cuda.memory_cached``."""
    return current().memory_reserved(device)


def max_memory_reserved(device: Any = None) -> int:
    """The peak of ``memory_reserved`` (0 on the CPU); also ``torch.cuda.max_memory_cached``."""
    return current().max_memory_reserved(device)


def memory_stats(device: Any = None) -> dict:
    """The caching allocator's statistics as a dict ({} on the CPU)."""
    return current().memory_stats(device)


def reset_peak_memory_stats(device: Any = None) -> None:
    """Restart the peaks ``max_memory_*`` report (also ``torch.cuda.reset_max_memory_allocated``/``_cached``)."""
    current().reset_peak_memory_stats(device)


def empty_cache() -> None:
    """Give the caching allocator's unused memory back to the device (nothing on the CPU)."""
    current().empty_cache()


def mem_get_info(device: Any = None) -> tuple[int, int]:
    """(free, total) bytes of the device's memory; on the CPU, the host's available and total RAM."""
    return current().mem_get_info(device)


def get_device_name(device: Any = None) -> str:
    """The device's product name (the processor's on the CPU)."""
    return current().get_device_name(device)


def get_device_properties(device: Any = None) -> Any:
    """The device's properties (``name``, ``total_memory``, ``multi_processor_count``...); on the CPU, the host's."""
    return current().get_device_properties(device)


def is_bf16_supported() -> bool:
    """Whether the device computes in bfloat16 (the CPU does)."""
    return current().is_bf16_supported()


def tensor_type(name: str) -> type:
    """The legacy typed-tensor class ``name`` (``"FloatTensor"``, ``"LongTensor"``...) of the selected device:
    ``torch.cuda.FloatTensor`` on CUDA, ``torch.npu.FloatTensor`` on an NPU, ``torch.FloatTensor`` on the CPU.
    Called, it builds a tensor there (``tensor_type("LongTensor")([1, 2])``); it also serves ``x.type(...)``
    and ``isinstance``."""
    return current().tensor_type(name)


def Event(enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> Any:
    """``torch.cuda.Event(...)`` of the selected device; on the CPU a ``CPUEvent`` (timing by the clock)."""
    return current().event(enable_timing=enable_timing, blocking=blocking, interprocess=interprocess)


def Stream(device: Any = None, priority: int = 0) -> Any:
    """A new stream of the selected device (``torch.cuda.Stream(...)``); on the CPU a ``CPUStream``."""
    return current().new_stream(device, priority)


def current_stream(device: Any = None) -> Any:
    """The stream work is queued on now (``torch.cuda.current_stream()``)."""
    return current().current_stream(device)


def default_stream(device: Any = None) -> Any:
    """The device's default stream (``torch.cuda.default_stream()``)."""
    return current().default_stream(device)


def stream(stream: Any):
    """``with porter_device.stream(s):`` queues the block's work on ``s`` (``torch.cuda.stream(s)``); on the
    CPU the block just runs."""
    return current().stream(stream)


def autocast(enabled: bool = True, dtype: torch.dtype | None = None, cache_enabled: bool | None = None):
    """Mixed precision on the selected device, as ``torch.cuda.amp.autocast(...)`` / ``torch.autocast("cuda",
    ...)`` (a context manager and a decorator). The device's default dtype unless ``dtype`` is given; on the CPU
    only with an explicit ``dtype`` (else disabled: the CPU computes in float32)."""
    return current().autocast(enabled=enabled, dtype=dtype, cache_enabled=cache_enabled)


def grad_scaler(init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                growth_interval: int = 2000, enabled: bool = True) -> Any:
    """A gradient scaler for the selected device (``torch.cuda.amp.GradScaler(...)``,
    ``torch.amp.GradScaler("cuda", ...)``); disabled on the CPU, whose gradients are float32."""
    return current().grad_scaler(init_scale=init_scale, growth_factor=growth_factor, backoff_factor=backoff_factor,
                                 growth_interval=growth_interval, enabled=enabled)


BACKEND_ENV = "PORTER_BACKEND"  # overrides the device's process-group backend (e.g. gloo to debug on CUDA)


def communication_backend() -> str:
    """The torch.distributed backend for the selected device: hccl, nccl or gloo (``PORTER_BACKEND`` wins)."""
    return os.environ.get(BACKEND_ENV) or current().backend


def is_backend_available() -> bool:
    """Whether ``communication_backend()`` can be used in this process (``dist.is_nccl_available()`` asked it
    of nccl)."""
    import torch.distributed as dist

    if not dist.is_available():
        return False
    backend = communication_backend()
    check = getattr(dist, f"is_{backend}_available", None)
    if check is not None:
        return bool(check())
    if backend == "hccl":
        return import_torch_npu() is not None
    return bool(dist.is_backend_available(backend)) if hasattr(dist, "is_backend_available") else False


def visible_devices_env() -> str:
    """The environment variable that limits which devices a process sees: ASCEND_RT_VISIBLE_DEVICES on an NPU,
    CUDA_VISIBLE_DEVICES on CUDA, and on the CPU (where nothing reads it) CUDA_VISIBLE_DEVICES too."""
    return current().visible_devices_env or CUDA.visible_devices_env or "CUDA_VISIBLE_DEVICES"


def pin_memory() -> bool:
    """Whether pinned host memory helps copies to the device (``DataLoader(pin_memory=...)``): off on the CPU."""
    return current().pin_memory


def pinned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.pin_memory()`` where the device pins host memory; the tensor itself elsewhere (a CPU-only torch
    cannot pin)."""
    return tensor.pin_memory() if current().pin_memory else tensor


def set_determinism(*, benchmark: bool | None = None, deterministic: bool | None = None,
                    allow_tf32: bool | None = None, cudnn_allow_tf32: bool | None = None) -> None:
    """The cudnn / tf32 switches (``torch.backends.cudnn.benchmark``, ``.deterministic``, ``.allow_tf32``,
    ``torch.backends.cuda.matmul.allow_tf32``) on CUDA; None leaves one as it is; other devices ignore them."""
    current().set_determinism(benchmark=benchmark, deterministic=deterministic, allow_tf32=allow_tf32,
                              cudnn_allow_tf32=cudnn_allow_tf32)


def range_push(message: str) -> None:
    """Open a named profiler range (nvtx on CUDA); nothing where there is no such profiler."""
    current().range_push(message)


def range_pop() -> None:
    """Close the innermost profiler range."""
    current().range_pop()


@contextlib.contextmanager
def profile_range(message: str):
    """``with porter_device.profile_range("step"):`` a named profiler range around the block
    (``torch.cuda.nvtx.range``)."""
    range_push(message)
    try:
        yield
    finally:
        range_pop()


def profiler_start() -> None:
    """Start the device profiler (cudaProfilerStart on CUDA)."""
    current().profiler_start()


def profiler_stop() -> None:
    """Stop the device profiler."""
    current().profiler_stop()
