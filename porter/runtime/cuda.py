"""NVIDIA GPUs as a :class:`~porter.runtime.base.Device`: torch.cuda itself, plus cudnn/tf32 switches, nvtx ranges
and the CUDA profiler, which only this device has."""
from __future__ import annotations

from typing import Any

import torch

from .base import Device


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

    def _module(self) -> Any:
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
