"""Huawei Ascend NPUs as a :class:`~porter.runtime.base.Device`, through torch_npu's ``torch.npu``.

torch_npu is imported only when asked (``import_torch_npu``): its wheel installs anywhere but imports only with
CANN present, and importing porter.runtime must stay light and must not fail on machines without it.
"""
from __future__ import annotations

import sys
from typing import Any

import torch

from .base import Device


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

    def _module(self) -> Any:
        # torch_npu adds torch.npu when it is imported; absent, say why rather than torch's AttributeError
        import_torch_npu()
        module = getattr(torch, "npu", None)
        if module is None:
            raise RuntimeError("torch.npu is missing: torch_npu cannot be imported here (it needs Huawei's CANN)")
        return module

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
