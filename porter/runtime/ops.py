"""Fused ops: each has a reference implementation (the exact math the unpatched library does) and per-device
kernels, each behind a guard that checks the kernel's documented limits.

A call runs the selected device's kernel when the device owns the input tensor and the guard accepts the
arguments; otherwise it runs the reference. ``counts`` records which implementation ran, so tests and
`porter verify` can see dispatch; ``fallbacks`` records why a kernel was refused.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import device as _device
from .device import import_torch_npu

GELU_MODE_ENV = "PORTER_GELU"  # "exact" (default: SAT's tanh formula) or "fast" (the device's fast GELU)

counts: Counter = Counter()  # "op/implementation" -> calls
fallbacks: Counter = Counter()  # "op/kernel: reason" -> calls that a guard sent to the reference


def reset_counts() -> None:
    counts.clear()
    fallbacks.clear()


@dataclass
class Kernel:
    name: str
    fn: Callable
    guard: Callable[..., str | None]  # None when the arguments are within the kernel's limits, else why not


@dataclass
class Op:
    name: str
    reference: Callable
    kernels: dict[str, Kernel] = field(default_factory=dict)  # device name -> kernel

    def kernel(self, device_name: str):
        def add(fn):
            self.kernels[device_name] = Kernel(fn.__name__, fn, fn.guard)
            return fn
        return add

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        dev = _device.current()
        kernel = self.kernels.get(dev.name)
        if kernel is not None:
            why = None if dev.owns(x) else f"tensor on {x.device.type}"
            why = why or kernel.guard(x, *args, **kwargs)
            if why is None:
                counts[f"{self.name}/{kernel.name}"] += 1
                return kernel.fn(x, *args, **kwargs)
            fallbacks[f"{self.name}/{kernel.name}: {why}"] += 1
        counts[f"{self.name}/reference"] += 1
        return self.reference(x, *args, **kwargs)


def guarded(guard: Callable[..., str | None]):
    """Attach a guard to a kernel function."""
    def attach(fn):
        fn.guard = guard
        return fn
    return attach


def _dtype_in(x: torch.Tensor, allowed) -> str | None:
    return None if x.dtype in allowed else f"dtype {x.dtype} not in {sorted(str(d) for d in allowed)}"


HALF = (torch.float16, torch.bfloat16)
FLOATS = (torch.float16, torch.bfloat16, torch.float32)


# --- gelu -----------------------------------------------------------------------------------------------

def gelu_mode() -> str:
    mode = os.environ.get(GELU_MODE_ENV, "exact")
    if mode not in ("exact", "fast"):
        raise ValueError(f"{GELU_MODE_ENV}={mode!r}: expected 'exact' or 'fast'")
    return mode


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # The tanh formula ChatGLM's gelu_impl computes (OpenAI GPT's GELU).
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


gelu = Op("gelu", _gelu_tanh)


def _fast_gelu_guard(x: torch.Tensor) -> str | None:
    if gelu_mode() != "fast":
        return f"{GELU_MODE_ENV} is exact"
    if x.dim() > 8:
        return f"{x.dim()}-D input, fast_gelu takes up to 8-D"
    return _dtype_in(x, FLOATS)


@gelu.kernel("npu")
@guarded(_fast_gelu_guard)
def fast_gelu(x: torch.Tensor) -> torch.Tensor:
    npu = import_torch_npu()
    # torch_npu.fast_gelu takes fp16/fp32; npu_fast_gelu adds bf16.
    return npu.npu_fast_gelu(x) if x.dtype == torch.bfloat16 else npu.fast_gelu(x)


# --- rotary_mul -------------------------------------------------------------------------------------------

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=x.ndim - 1)  # dim=-1 trips a bug in old torch versions
    return torch.cat((-x2, x1), dim=x1.ndim - 1)


def _rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (rotate_half(x) * sin)


rotary_mul = Op("rotary_mul", _rotary_reference)


def _rotary_layout(x: torch.Size, r: torch.Size) -> str | None:
    """The x layout npu_rotary_mul would read given r's broadcast shape, or None if no layout fits."""
    a, b, c, d = x
    if r[3] != d:
        return None
    if r[2] == 1 and r[0] == a and r[1] in (1, b):
        return "SBND"  # r: S11D / SB1D
    if r[2] == 1 and r[0] in (1, a) and r[1] == b:
        return "BSND"  # r: 1S1D / BS1D
    if r[1] == 1 and r[0] in (1, a) and r[2] == c:
        return "BNSD"  # r: 11SD / B1SD
    return None


def _rotary_guard(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> str | None:
    if x.dim() != 4 or cos.dim() != 4 or sin.dim() != 4:
        return "npu_rotary_mul takes 4-D x, r1, r2"
    if cos.shape != sin.shape:
        return "cos and sin differ in shape"
    if cos.dtype != x.dtype or sin.dtype != x.dtype:
        return "cos/sin dtype differs from x"
    why = _dtype_in(x, FLOATS)
    if why:
        return why
    layout = _rotary_layout(x.shape, cos.shape)
    if layout is None:
        return f"no layout fits x {tuple(x.shape)} with r {tuple(cos.shape)}"
    d = x.shape[3]
    if d % 64 != 0:
        return f"last dim {d} is not a multiple of 64"
    b, n = {"SBND": (x.shape[1], x.shape[2]), "BSND": (x.shape[0], x.shape[2]), "BNSD": (x.shape[0], x.shape[1])}[layout]
    if b > 1000 or n > 1000:
        return f"B={b}, N={n}: npu_rotary_mul takes B and N up to 1000"
    return None


@rotary_mul.kernel("npu")
@guarded(_rotary_guard)
def npu_rotary_mul(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return import_torch_npu().npu_rotary_mul(x, cos, sin)


# --- scaled_masked_softmax ------------------------------------------------------------------------------

def _softmax_reference(x: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    # GLM-130B's order: fill masked scores with -10000, go to fp32, scale, softmax (fp32 result).
    if mask is not None:
        x = x.masked_fill(mask, -10000.0)
    return F.softmax(x.float() * scale, dim=-1)


scaled_masked_softmax = Op("scaled_masked_softmax", _softmax_reference)


def _softmax_guard(x: torch.Tensor, mask: torch.Tensor | None, scale: float) -> str | None:
    if mask is None:
        return "no mask"
    if x.dim() != 4:
        return "npu_scaled_masked_softmax takes 4-D input"
    why = _dtype_in(x, FLOATS)
    if why:
        return why
    for dim in x.shape[-2:]:
        if not (32 <= dim <= 4096 and dim % 32 == 0):
            return f"last two dims {tuple(x.shape[-2:])} must be in [32, 4096] and divisible by 32"
    if mask.dtype != torch.bool:
        return f"mask dtype {mask.dtype}, kernel needs bool"
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        return f"mask {tuple(mask.shape)} does not broadcast to {tuple(x.shape)}"
    return None


@scaled_masked_softmax.kernel("npu")
@guarded(_softmax_guard)
def npu_scaled_masked_softmax(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    return import_torch_npu().npu_scaled_masked_softmax(x, mask, scale, False).float()


# --- attention ------------------------------------------------------------------------------------------

def _attention_reference(q, k, v, *, is_causal: bool = False, dropout_p: float = 0.0):
    # SAT's fast path: no explicit mask (full or causal), default 1/sqrt(head dim) scaling. On CUDA (and the CPU)
    # torch's own scaled_dot_product_attention already picks the fused kernel: no CUDA kernel is registered.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=dropout_p, is_causal=is_causal)


attention = Op("attention", _attention_reference)


def _fusion_attention_guard(q, k, v, *, is_causal: bool = False, dropout_p: float = 0.0) -> str | None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "npu_fusion_attention BNSD layout takes 4-D q, k, v"
    why = _dtype_in(q, HALF)
    if why:
        return why
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return "q, k, v dtypes differ"
    if k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]:
        return "q and k/v head counts differ"
    return None


@attention.kernel("npu")
@guarded(_fusion_attention_guard)
def npu_fusion_attention(q, k, v, *, is_causal: bool = False, dropout_p: float = 0.0):
    sq, sk = q.shape[2], k.shape[2]
    mask = None
    if is_causal:
        # True = masked; the same top-left aligned triangle torch's is_causal uses.
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).triu(1)
    out = import_torch_npu().npu_fusion_attention(
        q, k, v, q.shape[1], "BNSD", atten_mask=mask, scale=1.0 / math.sqrt(q.shape[-1]), keep_prob=1.0 - dropout_p)
    return out[0]
