"""One interface for every device porter can run on, one class per device.

Patched code calls the module-level functions (``device.synchronize()``, ``device.current_device()``...),
which forward to the device selected once per process: ``PORTER_DEVICE`` (cpu, cuda, npu, or a plugin's
name) or detection in the order npu, cuda, cpu. Nothing else in porter asks which device it is on by
comparing strings: it asks the selected :class:`Device`.

This module is the registry and those functions. The abstract :class:`Device` is in ``base.py`` and each built-in
device in a file of its own (``cpu.py``, ``cuda.py``, ``npu.py``); all are imported here, so code and plugins keep
importing every one of them from ``porter.runtime.device``.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import torch

# Module-level imports run one way, base -> cpu/cuda/npu -> here, so no module is imported while half-done (base.py says why the
# base class is not in this file). Re-exported, with the redundant "as" saying so: the names rewritten code,
# plugins and tests import from porter.runtime.device.
from .base import Device as Device
from .base import type_and_index
from .cpu import CPU as CPU
from .cpu import CPUEvent as CPUEvent
from .cpu import CPUStream as CPUStream
from .cuda import CUDA as CUDA
from .npu import NPU as NPU
from .npu import import_torch_npu as import_torch_npu

DEVICE_ENV = "PORTER_DEVICE"

BUILTIN: tuple[type[Device], ...] = (NPU, CUDA, CPU)
_extra: dict[str, type[Device]] = {}
_selected: Device | None = None


REQUIRED_ATTRIBUTES = ("name", "torch_type", "backend", "visible_devices_env", "deepspeed_accelerator")


# How a plugin author reads each abstract method of Device in the registration error; one added to Device and
# not here is named by the first line of its docstring.
_ABSTRACT_HINTS = {
    "is_present": "whether this process can use the device",
    "_module": "its torch.cuda-shaped module, e.g. torch.xpu; or make the device a subclass of CPU",
}


def problems(device_class: Any) -> list[str]:
    """What ``device_class`` lacks to be a device porter can select, launch and call, each named: checked when it
    is registered, so a plugin device written against another porter fails there, in one message, not on first
    use (or as ``Can't instantiate abstract class`` when it is first selected)."""
    if not isinstance(device_class, type) or not issubclass(device_class, Device):
        return ["it is not a subclass of porter.runtime.device.Device"]
    found: list[str] = []
    attributes = [attr for attr in REQUIRED_ATTRIBUTES if not hasattr(device_class, attr)]
    if attributes:
        found.append(f"the class attribute{'s' if len(attributes) > 1 else ''} {', '.join(attributes)}")
    name = getattr(device_class, "name", None)
    if name is not None and not (isinstance(name, str) and name and name.replace("_", "").replace("-", "").isalnum()):
        found.append(f"a plain name (not {name!r})")
    # the abstract methods it leaves unimplemented, in Device's order (is_present before _module), then any of
    # the plugin's own abstract base
    missing: frozenset[str] = getattr(device_class, "__abstractmethods__", frozenset())
    order = [m for m in _ABSTRACT_HINTS if m in missing] + sorted(set(missing) - _ABSTRACT_HINTS.keys())
    for method in order:
        hint = _ABSTRACT_HINTS.get(method) or _first_line(getattr(device_class, method, None))
        found.append(f"the method {method}()" + (f" ({hint})" if hint else ""))
    return found


def _first_line(function: Any) -> str:
    doc = (getattr(function, "__doc__", None) or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


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
    kind, _ = type_and_index(obj)
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
