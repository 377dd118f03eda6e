"""Weight-only quantized linear layers in SwissArmyTransformer's layout, without its CUDA kernels.

SAT (sat/quantization/kernels.py, the ``--quant 4|8`` of VisualGLM-6B / ChatGLM-6B) quantizes each linear layer's
weight per output row, symmetrically: ``scale = max|w[n]| / (2**(bits-1) - 1)`` in float16, ``q = round(w / scale)``
as int8, and for 4 bits two values per byte. Its extraction and packing kernels are CUDA binaries loaded through
cpm_kernels; this module is their device-neutral replacement, on the same stored layout (an int8 ``[N, K]`` or packed
``[N, K/2]`` weight and a float16 ``[N]`` scale), so SAT checkpoints load and ``state_dict()`` stays SAT's.

The matmul is the dispatched op ``weight_quant_matmul`` (see ``ops.py``): its reference is what SAT's CUDA path
computes (dequantize, then a dense mm) and is what runs on CUDA: no CUDA kernel is registered. The CPU and the NPU
have kernels behind guards of their measured or documented limits.
"""
from __future__ import annotations

import sys

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from . import device as _device
from .device import import_torch_npu
from .ops import HALF, Op, guarded

BITS = (4, 8)
CHUNK_ROWS = 1024  # rows a bounded temporary holds: 1024 x 4096 fp16 is 8 MiB, against 128 MiB for 16384 x 4096


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"weight bit width {bits!r}: SAT quantizes weights to 4 or 8 bits")
    return int(bits)


def _in_features(weight: torch.Tensor, bits: int) -> int:
    return weight.shape[1] * (8 // bits)


# --- SAT's layout: quantize, pack, unpack, dequantize ------------------------------------------------------

def quantize_rows(weight: torch.Tensor, bits: int, *, rows_per_chunk: int = CHUNK_ROWS,
                  dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SAT's QuantizedLinear constructor math: (int8 ``[N, K]``, or for 4 bits packed int8 ``[N, K/2]``; float16
    scale ``[N]``). Every step is per row, so doing it ``rows_per_chunk`` rows at a time gives the whole-matrix
    result while the temporaries (abs, the quotient, its rounding) stay the size of one chunk, not of the weight.
    ``dtype``: each chunk converted to it first (the model's dtype when SAT's quantize() runs), never the whole."""
    bits = check_bits(bits)
    if weight.dim() != 2:
        raise ValueError(f"quantize_rows takes a 2-D weight, not {tuple(weight.shape)}")
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk={rows_per_chunk}: must be at least 1")
    n, k = weight.shape
    if bits == 4 and k % 2:
        raise ValueError(f"4-bit packing needs an even number of columns, not {k}")
    q = torch.empty(n, k if bits == 8 else k // 2, dtype=torch.int8, device=weight.device)
    scale = torch.empty(n, dtype=torch.float16, device=weight.device)
    for start in range(0, n, rows_per_chunk):
        w = weight[start:start + rows_per_chunk]
        w = w if dtype is None else w.to(dtype)
        # exactly SAT's expressions, dtype flow included: the division by the integer runs in w's dtype before
        # .half(); w / scale promotes (fp16 stays fp16, bf16 with fp16 and fp32 become fp32)
        s = (w.abs().max(dim=-1).values / ((2 ** (bits - 1)) - 1)).half()
        rows = torch.round(w / s[:, None]).to(torch.int8)
        scale[start:start + rows_per_chunk] = s
        q[start:start + rows_per_chunk] = pack_int4(rows) if bits == 4 else rows
    return q, scale


# Nibble order of SAT's int4 kernels (int4WeightCompression / int4WeightExtraction*), as THUDM/chatglm-6b's CPU twin
# of the same kernels spells it (quantization_kernels_parallel.c, compress_int4_weight and
# extract_int4_weight_to_float): byte j of a row = (q[2j] << 4) | (q[2j+1] & 0xF), the even column in the HIGH
# nibble; extraction sign-extends each nibble.

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 ``[N, K]`` holding values in [-8, 7] -> int8 ``[N, K/2]`` in SAT's nibble order."""
    if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] % 2:
        raise ValueError(f"pack_int4 takes int8 [N, K] with K even, not {q.dtype} {tuple(q.shape)}")
    if q.numel():
        low, high = torch.aminmax(q)
        if low < -8 or high > 7:
            raise ValueError(f"pack_int4: values in [{int(low)}, {int(high)}], int4 holds [-8, 7]")
    # q << 4 stays within int8 for q in [-8, 7]; | with the low nibble writes the byte's two's complement
    return (q[:, 0::2] << 4) | (q[:, 1::2] & 0xF)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: int8 ``[N, K']`` -> int8 ``[N, 2K']``, each nibble sign-extended. Works
    ``CHUNK_ROWS`` rows at a time, so its int16 temporaries stay the size of one chunk."""
    if packed.dtype != torch.int8 or packed.dim() != 2:
        raise ValueError(f"unpack_int4 takes int8 [N, K'], not {packed.dtype} {tuple(packed.shape)}")
    n, k = packed.shape
    out = torch.empty(n, 2 * k, dtype=torch.int8, device=packed.device)
    for start in range(0, n, CHUNK_ROWS):
        b = packed[start:start + CHUNK_ROWS].to(torch.int16)  # room for both nibbles of a byte, written as one int16
        high = b >> 4  # the even column: the arithmetic shift sign-extends it
        low = ((b & 0xF) ^ 8) - 8  # the odd column, sign-extended
        # one int16 holds the row's two int8 values, the even column first in memory: one pass writes both (3x
        # faster on the CPU than interleaving two int8 tensors)
        first, second = (high, low) if sys.byteorder == "little" else (low, high)
        out[start:start + CHUNK_ROWS] = ((second * 256) | (first & 0xFF)).contiguous().view(torch.int8)
    return out


def dequantize(weight: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """SAT's extract_weight_to_half: ``q * scale[:, None]`` (q unpacked for 4 bits), in scale's dtype (SAT's
    float16) unless ``dtype`` is given. The product of an int8 and a float16 rounds once, as the kernel's does."""
    bits = check_bits(bits)
    q = unpack_int4(sat_layout(weight)) if bits == 4 else weight
    # int8 * float promotes to the float dtype without a converted copy of q: the same numbers as q.to(dtype) * ...
    return q * scale.to(dtype or scale.dtype)[:, None]


# --- int4 on the CPU: torch's own kernel, on its own layout ---------------------------------------------------
# torch's _weight_int4pack_mm_for_cpu reads its own packing: blocks of 64 output rows, and for each input column
# 32 bytes, byte j holding row 64b + j in its low nibble and row 64b + 32 + j in its high one, each value + 8
# (unsigned). It is the same size as SAT's packing, so a layer's weight can be rewritten in place, once, at load
# (pack_for_cpu): one copy, as the 6B's int4 memory budget needs. A weight so rewritten carries CPU_INT4; every
# reader of SAT's layout goes through sat_layout(), and the layer's hooks give state_dict() SAT's bytes and turn
# SAT's bytes into torch's on load_state_dict(). (The layout is torch's, checked against
# _convert_weight_to_int4pack_for_cpu by the tests: derived here because that function allocates int32 values.)
CPU_INT4 = "porter_cpu_int4"
CPU_INT4_BLOCK = 64
CPU_INT4_GROUPS = (256, 128, 64, 32)  # the group sizes torch's int4 kernel takes; SAT has one scale per row


def _to_cpu_int4(sat: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(sat)
    for start in range(0, sat.shape[0], CHUNK_ROWS):  # CHUNK_ROWS is a multiple of the 64-row blocks
        q = (unpack_int4(sat[start:start + CHUNK_ROWS]).to(torch.int16) + 8).to(torch.uint8)
        n, k = q.shape
        v = q.view(n // CPU_INT4_BLOCK, 2, CPU_INT4_BLOCK // 2, k).permute(0, 3, 2, 1)  # [blocks, K, 32, 2]
        out[start:start + CHUNK_ROWS] = (v[..., 0] | (v[..., 1] << 4)).contiguous().view(n, k // 2).view(torch.int8)
    return out


def _from_cpu_int4(packed: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(packed)
    for start in range(0, packed.shape[0], CHUNK_ROWS):
        b = packed[start:start + CHUNK_ROWS].view(torch.uint8)
        n, k = b.shape[0], b.shape[1] * 2
        v = b.reshape(n // CPU_INT4_BLOCK, k, CPU_INT4_BLOCK // 2)
        q = torch.stack((v & 0xF, v >> 4), dim=-1).permute(0, 3, 2, 1).reshape(n, k)  # [blocks, 2, 32, K]
        out[start:start + CHUNK_ROWS] = pack_int4((q.to(torch.int16) - 8).to(torch.int8))
    return out


def sat_layout(weight: torch.Tensor) -> torch.Tensor:
    """A 4-bit weight in SAT's layout: as it is, or converted back where pack_for_cpu rewrote it."""
    return _from_cpu_int4(weight) if getattr(weight, CPU_INT4, False) else weight


def _cpu_int4_group(k: int) -> int | None:
    return next((g for g in CPU_INT4_GROUPS if k % g == 0), None)


def pack_for_cpu(layer) -> bool:
    """Rewrite a 4-bit SAT quantized layer's weight (``weight``, ``weight_scale``, ``weight_bit_width``) into
    torch's CPU int4 layout in place, once, for torch's int4 kernel; False (nothing done) where it does not apply:
    8 bits, not on the CPU, rows not in 64-row blocks, or no group size dividing the input width."""
    weight = layer.weight
    if (getattr(layer, "weight_bit_width", None) != 4 or weight.device.type != "cpu" or getattr(weight, CPU_INT4, False)
            or weight.shape[0] % CPU_INT4_BLOCK or _cpu_int4_group(weight.shape[1] * 2) is None):
        return False
    with torch.no_grad():
        weight.copy_(_to_cpu_int4(weight))
    setattr(weight, CPU_INT4, True)
    if not getattr(layer, "_porter_cpu_int4_hooks", False):
        layer.register_state_dict_post_hook(_state_in_sat_layout)
        layer.register_load_state_dict_pre_hook(_load_from_sat_layout)
        # the mark lives on the Parameter object, which copy.deepcopy, load_state_dict(assign=True) or a .to() that
        # swaps parameters replace without it; the layer (whose hooks survive those) marks its weight again before
        # each forward, so torch's layout is never read as SAT's
        layer.register_forward_pre_hook(_mark_weight)
        layer._porter_cpu_int4_hooks = True
    return True


def _mark_weight(layer, args) -> None:
    setattr(layer.weight, CPU_INT4, True)


def _state_in_sat_layout(layer, state_dict, prefix, local_metadata) -> None:
    key = prefix + "weight"
    if key in state_dict:  # the hooks are only on layers pack_for_cpu rewrote
        state_dict[key] = _from_cpu_int4(state_dict[key].detach())


def _load_from_sat_layout(layer, state_dict, prefix, *rest) -> None:
    key = prefix + "weight"
    if key in state_dict:
        state_dict[key] = _to_cpu_int4(state_dict[key])
        _mark_weight(layer, ())


# torch's int4 kernel takes (scale, zero) per group of input columns: SAT's row scale, repeated, zero 0; kept per
# scale tensor (a few MB for the 6B), remade when the scale changes
_cpu_scales: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _cpu_int4_scales(scale: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    stamp = (scale._version, scale.data_ptr(), dtype)
    cached = _cpu_scales.get(scale)
    if cached is None or cached[0] != stamp:
        groups = k // int(_cpu_int4_group(k) or 1)
        row = scale.detach().to(dtype)
        cached = (stamp, torch.stack((row.expand(groups, -1), torch.zeros_like(row).expand(groups, -1)), -1)
                  .contiguous())
        _cpu_scales[scale] = cached
    return cached[1]


# --- the dispatched matmul ----------------------------------------------------------------------------------

def _reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    # SAT's W8A16Linear.forward on CUDA: extract the weight to a dense half matrix, then mm. Run as it is on CUDA
    # (no kernel registered there: this is the CUDA path) and wherever a kernel's guard says no.
    return x @ dequantize(weight, scale, bits, dtype=x.dtype).t()


weight_quant_matmul = Op("weight_quant_matmul", _reference)


def _operands(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> str | None:
    """What every kernel needs: a 2-D input, SAT's int8 weight and one scale per output row."""
    if x.dim() != 2:
        return f"{x.dim()}-D input, the kernels take 2-D"
    if weight.dtype != torch.int8 or weight.dim() != 2:
        return f"weight {weight.dtype} {tuple(weight.shape)} is not SAT's 2-D int8"
    if x.shape[1] != _in_features(weight, bits):
        return f"input has {x.shape[1]} features, the {bits}-bit weight {_in_features(weight, bits)}"
    if scale.dim() != 1 or scale.shape[0] != weight.shape[0]:
        return f"scale {tuple(scale.shape)} is not one per output row ({weight.shape[0]})"
    return None


# CPU: torch's _weight_int8pack_mm(x [M, K], w int8 [N, K], scales [N]) is SAT's int8 layout and per-row scale
# as they are, so the stored weight is used without a copy. Measured on this machine (AMD EPYC with avx512_bf16,
# 2 cores, torch 2.13), N = K = 4096, one row of input: bf16 0.44 ms against a dense bf16 mm's 2.06 ms; fp32 6.9 ms
# against 3.5 ms dense; fp16 8.5 ms against 0.69 ms dense. Only bf16 has a fast path, so only bf16 is taken. Its
# time grows with the rows of input (a matrix-vector product per row: 1 thread, 13.8 ms at 32 rows, 56 at 128,
# 115 at 256) where the reference's (dequantize once, 40 ms, then a dense mm) hardly does (60 at 128, 79 at 256):
# above 128 rows (a long prompt's prefill) the reference is faster, and takes them.
# Limits found by experiment: x 2-D and contiguous in its last dim, w a contiguous int8 [N, K], scales 1-D of N in
# x's dtype (errors otherwise); in bf16, K not a multiple of 16 crashes the process (segfault) or returns wrong
# numbers, and a non-contiguous scales vector is read wrongly without an error (made contiguous below).
CPU_K_MULTIPLE = 16
CPU_MAX_ROWS = 128


def _cpu_guard(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> str | None:
    why = _operands(x, weight, scale, bits)
    if why:
        return why
    if x.dtype != torch.bfloat16:
        return f"{x.dtype} input: _weight_int8pack_mm is faster than a dense mm in bfloat16 only"
    if x.stride(1) != 1:
        return "input not contiguous in its last dim"
    if x.shape[0] > CPU_MAX_ROWS:
        return f"{x.shape[0]} rows: above {CPU_MAX_ROWS}, dequantizing once and a dense mm is faster"
    if x.shape[1] % CPU_K_MULTIPLE:
        return f"K={x.shape[1]} is not a multiple of {CPU_K_MULTIPLE} (the bf16 kernel crashes or miscomputes)"
    if not weight.is_contiguous():
        return "weight not contiguous"
    return None


@weight_quant_matmul.kernel("cpu")
@guarded(_cpu_guard)
def cpu_int8pack_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    if getattr(weight, CPU_INT4, False):  # rewritten for torch's int4 kernel at load (pack_for_cpu)
        k = x.shape[1]
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), weight.view(torch.uint8), _cpu_int4_group(k),
                                                           _cpu_int4_scales(scale, k, x.dtype))
    scale = scale.to(x.dtype).contiguous()
    if bits == 8:
        return torch.ops.aten._weight_int8pack_mm(x, weight, scale)
    # int4 in SAT's layout (a weight pack_for_cpu did not rewrite, e.g. after SAT's own quantize()): torch's int4
    # kernel would need a second, repacked copy, so unpack a bounded chunk of rows at a time to int8 and run the
    # int8 kernel on it (9x slower on the 6B than the int4 kernel); the chunks' outputs are the output's columns.
    rows = CHUNK_ROWS
    return torch.cat([torch.ops.aten._weight_int8pack_mm(x, unpack_int4(weight[i:i + rows]), scale[i:i + rows])
                      for i in range(0, weight.shape[0], rows)], dim=1)


# NPU: torch_npu.npu_weight_quant_batchmatmul (W8A16 / W4A16), limits as the Ascend docs list them: x 2-D (M, K)
# fp16 or bf16 (fp16 only on Atlas inference 310P chips); weight (K, N) int8, transposed views allowed, or int32
# carrying 8 int4 values each (from npu_convert_weight_to_int4pack, n % 8 == 0), int4 on Atlas A2/A3 only;
# antiquant_scale (N,) in x's dtype.
A2_A3 = ("Ascend910B", "Ascend910_93")  # torch.npu.get_device_name() of Atlas A2 / A3 chips
INFERENCE_310P = "Ascend310P"


def _chip() -> str:
    return str(_device.get_device_name())  # torch.npu.get_device_name(): "Ascend910B2", "Ascend310P3"...


def _npu_guard(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> str | None:
    why = _operands(x, weight, scale, bits)
    if why:
        return why
    if x.dtype not in HALF:
        return f"{x.dtype} input: npu_weight_quant_batchmatmul takes float16 or bfloat16"
    chip = _chip()
    if x.dtype == torch.bfloat16 and chip.startswith(INFERENCE_310P):
        return f"bfloat16 input on {chip}: Atlas inference chips take float16 only"
    if bits == 4:
        if not chip.startswith(A2_A3):
            return f"int4 weight on {chip}: int4 needs an Atlas A2/A3 chip"
        if weight.shape[0] % 8:
            return f"N={weight.shape[0]} is not a multiple of 8 (int4 packs 8 output columns per int32)"
    return None


# int4 weights repacked for the NPU, one per SAT weight tensor: (its version and address when repacked, the
# int32 pack). A second, device-side copy of every int4 weight (the same size as SAT's), made on first use.
# Keyed by identity: weakref.WeakKeyDictionary compares tensor keys with ==, which is elementwise and fails.
_int4_packs: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _npu_int4_weight(npu, weight: torch.Tensor) -> torch.Tensor:
    # _version changes on an in-place write (load_state_dict copies into the weight); data_ptr on `.data = ...`
    stamp = (weight._version, weight.data_ptr())
    cached = _int4_packs.get(weight)
    if cached is None or cached[0] != stamp:
        k_by_n = unpack_int4(sat_layout(weight)).t().to(torch.int32).contiguous()  # transient, 4 bytes an element
        cached = (stamp, npu.npu_convert_weight_to_int4pack(k_by_n))
        _int4_packs[weight] = cached
    return cached[1]


@weight_quant_matmul.kernel("npu")
@guarded(_npu_guard)
def npu_weight_quant_batchmatmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    npu = import_torch_npu()
    w = _npu_int4_weight(npu, weight) if bits == 4 else weight.t()  # int8: SAT's [N, K] as a (K, N) view, no copy
    return npu.npu_weight_quant_batchmatmul(x, w, scale.to(x.dtype))


# --- the layer's forward ----------------------------------------------------------------------------------

def _matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    y = weight_quant_matmul(x.reshape(-1, x.shape[-1]), weight, scale, bits)
    return y.reshape(*x.shape[:-1], weight.shape[0])


class _WeightQuantLinear(torch.autograd.Function):
    """Gradient for the input only, as SAT's W8A16Linear gives it: grad @ the dequantized weight. The quantized
    weight and its scale are constants (SAT stores them with requires_grad=False)."""

    @staticmethod
    def forward(ctx, x, weight, scale, bits):  # type: ignore[override]
        ctx.save_for_backward(weight, scale)
        ctx.bits = bits
        return _matmul(x, weight, scale, bits)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        weight, scale = ctx.saved_tensors
        return grad @ dequantize(weight, scale.detach(), ctx.bits, dtype=grad.dtype), None, None, None


def weight_quant_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(weight, scale, bits).T (+ bias)`` in x's dtype, for any leading dims of x: SAT's
    QuantizedLinear.forward. Differentiable with respect to x and bias."""
    bits = check_bits(bits)
    if x.shape[-1] != _in_features(weight, bits):
        raise ValueError(f"input has {x.shape[-1]} features, the {bits}-bit weight {_in_features(weight, bits)}")
    # weight and scale are constants (SAT stores them with requires_grad=False; the Function gives them no gradient)
    # and are passed on as they are, not as detached aliases: the kernels key their caches by these tensors
    if torch.is_grad_enabled() and x.requires_grad:
        y = _WeightQuantLinear.apply(x, weight, scale, bits)
    else:
        y = _matmul(x, weight, scale, bits)
    # added outside the Function, so autograd gives bias its gradient; cast so y stays in x's dtype
    return y if bias is None else y + bias.to(y.dtype)
