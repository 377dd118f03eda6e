"""The host's CPU as a :class:`~porter.runtime.base.Device`: no accelerator, so no devices, nothing to wait for
and no accelerator memory; plus the event and stream stand-ins ``torch.cuda.Event``/``Stream`` calls get here."""
from __future__ import annotations

import contextlib
import os
import platform
import time
import types
from typing import Any

import torch

from .base import Device, type_and_index


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

    def _module(self) -> Any:
        """None to give: torch.cpu would answer "one device" where torch.cuda on a CPU-only machine said "none",
        so every method that would ask it is overridden below, and one that slips through fails loudly here."""
        raise NotImplementedError("the CPU device answers each call itself; it has no torch.cuda-shaped module")

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
        # The registry's device types (npu, a plugin's), asked at call time: device.py imports this module to
        # build that registry, so importing it here at the top would be a cycle.
        from .device import known

        kind, _ = type_and_index(spec)
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
