"""FAKE torch_npu for tests on machines without an Ascend NPU.

It is not the real library. Each kernel checks the preconditions torch_npu documents (shapes, dtypes,
layouts; see shared/reference/torch_npu-ops.md), records the call, and computes the reference math on the
CPU. Passing tests with it prove porter's dispatch and argument layout, not the NPU kernels themselves.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

calls: list[dict] = []


class PreconditionError(AssertionError):
    """A kernel was called outside its documented limits: porter's guard should have prevented it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise PreconditionError(message)


def _record(name: str, **info) -> None:
    calls.append({"kernel": name, **info})


def reset() -> None:
    calls.clear()


def _rotate_half(x):
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def npu_rotary_mul(x, r1, r2):
    _require(x.dim() == 4 and r1.dim() == 4 and r2.dim() == 4, "npu_rotary_mul: x, r1, r2 must be 4-D")
    _require(x.dtype in (torch.float16, torch.bfloat16, torch.float32), f"npu_rotary_mul: dtype {x.dtype}")
    _require(r1.shape == r2.shape and r1.dtype == x.dtype == r2.dtype, "npu_rotary_mul: r1/r2 shape or dtype")
    a, b, c, d = x.shape
    _require(r1.shape[3] == d and d % 64 == 0, f"npu_rotary_mul: last dim {d} (r {tuple(r1.shape)})")
    layouts = []
    if r1.shape[2] == 1 and r1.shape[0] == a and r1.shape[1] in (1, b):
        layouts.append("SBND")
    if r1.shape[2] == 1 and r1.shape[0] in (1, a) and r1.shape[1] == b:
        layouts.append("BSND")
    if r1.shape[1] == 1 and r1.shape[0] in (1, a) and r1.shape[2] == c:
        layouts.append("BNSD")
    _require(bool(layouts), f"npu_rotary_mul: no layout for x {tuple(x.shape)} r {tuple(r1.shape)}")
    _record("npu_rotary_mul", x=tuple(x.shape), r=tuple(r1.shape), dtype=x.dtype, layouts=layouts)
    return r1 * x + r2 * _rotate_half(x)


def npu_scaled_masked_softmax(x, mask, scale=1.0, fixed_triu_mask=False):
    _require(x.dim() == 4, "npu_scaled_masked_softmax: x must be 4-D")
    _require(x.dtype in (torch.float16, torch.bfloat16, torch.float32), f"npu_scaled_masked_softmax: {x.dtype}")
    for dim in x.shape[-2:]:
        _require(32 <= dim <= 4096 and dim % 32 == 0, f"npu_scaled_masked_softmax: last dims {tuple(x.shape[-2:])}")
    _require(mask.dtype == torch.bool, "npu_scaled_masked_softmax: mask must be bool")
    torch.broadcast_shapes(mask.shape, x.shape)
    _record("npu_scaled_masked_softmax", x=tuple(x.shape), mask=tuple(mask.shape), scale=scale,
            fixed_triu_mask=fixed_triu_mask)
    scores = (x.float() * scale).masked_fill(mask, float("-inf"))
    return F.softmax(scores, dim=-1).to(x.dtype)


def _fast_gelu_math(x):
    # torch_npu's documented fast GELU: x / (1 + exp(-1.702 |x|)) * exp(0.851 (x - |x|))
    xf = x.float()
    return (xf / (1 + torch.exp(-1.702 * xf.abs())) * torch.exp(0.851 * (xf - xf.abs()))).to(x.dtype)


def fast_gelu(x):
    _require(x.dtype in (torch.float16, torch.float32), f"fast_gelu: dtype {x.dtype} (fp16/fp32 only)")
    _record("fast_gelu", x=tuple(x.shape), dtype=x.dtype)
    return _fast_gelu_math(x)


def npu_fast_gelu(x):
    _require(x.dtype in (torch.float16, torch.bfloat16, torch.float32), f"npu_fast_gelu: dtype {x.dtype}")
    _require(x.dim() <= 8, "npu_fast_gelu: up to 8-D")
    _record("npu_fast_gelu", x=tuple(x.shape), dtype=x.dtype)
    return _fast_gelu_math(x)


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
                         scale=1.0, keep_prob=1.0, pre_tockens=2147483647, next_tockens=2147483647,
                         inner_precise=0, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None,
                         sparse_mode=0, gen_mask_parallel=True, sync=False):
    _require(input_layout in ("BSH", "SBH", "BSND", "BNSD", "TND"), f"npu_fusion_attention: layout {input_layout}")
    _require(query.dtype in (torch.float16, torch.bfloat16), f"npu_fusion_attention: dtype {query.dtype}")
    _require(input_layout == "BNSD", "fake supports BNSD only")
    _require(query.dim() == 4 and query.shape[1] == head_num, "npu_fusion_attention: BNSD with N == head_num")
    sq, sk = query.shape[2], key.shape[2]
    if atten_mask is not None:
        _require(atten_mask.dtype == torch.bool, "npu_fusion_attention: atten_mask must be bool")
        _require(atten_mask.shape[-2:] == (sq, sk) and atten_mask.dim() in (2, 4),
                 f"npu_fusion_attention: atten_mask {tuple(atten_mask.shape)} (SS, 11SS, B1SS or BNSS)")
    _require(keep_prob == 1.0, "fake computes no dropout")
    _record("npu_fusion_attention", q=tuple(query.shape), layout=input_layout, head_num=head_num, scale=scale,
            mask=None if atten_mask is None else tuple(atten_mask.shape))
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if atten_mask is not None:
        scores = scores.masked_fill(atten_mask, float("-inf"))
    out = torch.matmul(F.softmax(scores, dim=-1), value.float()).to(query.dtype)
    return out, None, None, None


# W8A16 / W4A16: limits as the Ascend docs' torch_npu API list gives them for npu_weight_quant_batchmatmul and
# npu_convert_weight_to_int4pack (not in shared/reference/torch_npu-ops.md).
# The chip ``torch.npu.get_device_name()`` reports; tests monkeypatch it (e.g. "Ascend310P3", an Atlas inference chip).
chip = "Ascend910B2"

A2_A3 = ("Ascend910B", "Ascend910_93")  # Atlas A2 / A3 training chips: int4 weights and bf16


def _int4_chip() -> bool:
    return chip.startswith(A2_A3)


def npu_convert_weight_to_int4pack(weight, inner_k_tiles=0):
    """int32 (k, n) holding int4 values -> int32 (k, n/8). The fake packs column 8j+i into nibble i of word j (its own
    order, read back only by its own npu_weight_quant_batchmatmul)."""
    _require(_int4_chip(), f"npu_convert_weight_to_int4pack: int4 needs an Atlas A2/A3 chip, not {chip}")
    _require(weight.dtype == torch.int32 and weight.dim() == 2,
             f"npu_convert_weight_to_int4pack: int32 (k, n) weight, not {weight.dtype} {tuple(weight.shape)}")
    k, n = weight.shape
    _require(n % 8 == 0, f"npu_convert_weight_to_int4pack: n={n} is not a multiple of 8")
    _require(bool(((weight >= -8) & (weight <= 7)).all()), "npu_convert_weight_to_int4pack: values outside [-8, 7]")
    _record("npu_convert_weight_to_int4pack", weight=tuple(weight.shape), strides=weight.stride())
    nibbles = (weight.to(torch.int64) & 0xF).reshape(k, n // 8, 8)
    words = (nibbles << (4 * torch.arange(8))).sum(-1)  # 0 .. 2**32 - 1
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _int4_unpack(packed):
    words = packed.to(torch.int64) & 0xFFFFFFFF
    nibbles = (words[..., None] >> (4 * torch.arange(8))) & 0xF
    return (nibbles - ((nibbles & 8) << 1)).reshape(packed.shape[0], -1)


def npu_weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None,
                                 quant_offset=None, bias=None, antiquant_group_size=0):
    _require(x.dim() == 2, f"npu_weight_quant_batchmatmul: x must be 2-D (m, k), not {tuple(x.shape)}")
    _require(x.dtype in (torch.float16, torch.bfloat16), f"npu_weight_quant_batchmatmul: x dtype {x.dtype}")
    _require(x.dtype == torch.float16 or not chip.startswith("Ascend310P"),
             f"npu_weight_quant_batchmatmul: {chip} (Atlas inference) takes float16 x only")
    k = x.shape[1]
    _require(weight.dim() == 2 and weight.shape[0] == k,
             f"npu_weight_quant_batchmatmul: weight must be (k={k}, n), not {tuple(weight.shape)}")
    if weight.dtype == torch.int8:
        n, w = weight.shape[1], weight.to(torch.int64)
    else:
        _require(weight.dtype == torch.int32, f"npu_weight_quant_batchmatmul: weight dtype {weight.dtype}")
        _require(_int4_chip(), f"npu_weight_quant_batchmatmul: int4 weights need an Atlas A2/A3 chip, not {chip}")
        n, w = weight.shape[1] * 8, _int4_unpack(weight)
    _require(antiquant_scale.dtype == x.dtype,
             f"npu_weight_quant_batchmatmul: antiquant_scale {antiquant_scale.dtype}, x {x.dtype}")
    _require(tuple(antiquant_scale.shape) in ((n,), (1, n)),
             f"npu_weight_quant_batchmatmul: antiquant_scale {tuple(antiquant_scale.shape)}, per channel is ({n},)")
    _require(antiquant_offset is None and quant_scale is None and quant_offset is None and bias is None
             and antiquant_group_size == 0, "fake computes per-channel antiquant_scale only")
    _record("npu_weight_quant_batchmatmul", x=tuple(x.shape), dtype=x.dtype, weight=tuple(weight.shape),
            weight_dtype=weight.dtype, weight_strides=weight.stride(), scale=tuple(antiquant_scale.shape))
    return (x.float() @ (w.float() * antiquant_scale.float().reshape(1, n))).to(x.dtype)


def torch_npu_module() -> types.SimpleNamespace:
    """The fake ``torch.npu``: one device, index 0, generators backed by the CPU's."""
    state = {"device": 0}
    return types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 1, current_device=lambda: state["device"],
        set_device=lambda d: state.__setitem__("device", getattr(d, "index", d) or 0), synchronize=lambda: None,
        manual_seed=lambda s: None, manual_seed_all=lambda s: None, get_rng_state=torch.get_rng_state,
        set_rng_state=torch.set_rng_state, memory_allocated=lambda: 0, max_memory_allocated=lambda: 0,
        memory_reserved=lambda: 0, max_memory_reserved=lambda: 0, get_device_name=lambda device_=None: chip)


def install(monkeypatch=None):
    """Put this fake in sys.modules as torch_npu and a fake torch.npu on torch; select a FakeNPU device."""
    import sys

    from porter.runtime import device

    module = sys.modules[__name__]
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, "torch_npu", module)
        monkeypatch.setattr(torch, "npu", torch_npu_module(), raising=False)
    else:
        sys.modules["torch_npu"] = module
        torch.npu = torch_npu_module()

    class FakeNPU(device.NPU):
        """The NPU device class, except that 'NPU tensors' are CPU tensors (there is no NPU here)."""

        def owns(self, tensor):
            return tensor.device.type == "cpu"

        def current_device(self):
            return torch.device("cpu")

        def as_device(self, spec):
            return torch.device("cpu")

    device.register(FakeNPU)
    device.reset()
    return device.select("npu")


# -- for the torch rule pack (tests/torch_plugin): the rest of torch.npu's CUDA-shaped API that ported code reaches,
# every call recorded by name. Like the kernels above, these prove which device the ported code dispatches to and
# with which arguments, not what an NPU computes: "NPU tensors" are CPU tensors, amp computes nothing in fp16.
npu_calls: list[tuple[str, tuple, dict]] = []


def _recorded(name: str, function):
    def record(*args, **kwargs):
        npu_calls.append((name, args, kwargs))
        return function(*args, **kwargs)

    return record


def _autocast(enabled=True, dtype=torch.float16, cache_enabled=True):
    _require(dtype in (torch.float16, torch.bfloat16), f"torch.npu.amp.autocast: dtype {dtype}")
    return torch.autocast("cpu", enabled=False)


def _grad_scaler(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, enabled=True):
    return torch.amp.GradScaler("cpu", init_scale=init_scale, growth_factor=growth_factor,
                                backoff_factor=backoff_factor, growth_interval=growth_interval, enabled=False)


def torch_npu_module_for_rules() -> types.SimpleNamespace:
    """``torch_npu_module()`` and the rest of what torch_npu's ``torch.npu`` offers that porter's runtime calls
    (amp, events, streams, memory, properties, typed tensors; no DoubleTensor, which torch_npu lacks), each
    callable recording its calls in ``npu_calls``."""
    import contextlib

    from porter.runtime import device

    base = vars(torch_npu_module())
    extra = dict(
        amp=types.SimpleNamespace(autocast=_recorded("amp.autocast", _autocast),
                                  GradScaler=_recorded("amp.GradScaler", _grad_scaler)),
        Event=lambda enable_timing=False, blocking=False, interprocess=False: device.CPUEvent(enable_timing),
        Stream=lambda device_=None, priority=0: device.CPUStream(priority),
        current_stream=lambda device_=None: device.CPUStream(), default_stream=lambda device_=None: device.CPUStream(),
        stream=lambda s: contextlib.nullcontext(s), device=lambda d: contextlib.nullcontext(),
        empty_cache=lambda: None, reset_peak_memory_stats=lambda device_=None: None,
        memory_stats=lambda device_=None: {"allocated_bytes.all.current": 0}, mem_get_info=lambda device_=None: (1, 2),
        get_device_name=lambda device_=None: chip, is_bf16_supported=lambda: True,
        get_device_properties=lambda device_: types.SimpleNamespace(name=chip, total_memory=2**36),
        get_rng_state_all=lambda: [torch.get_rng_state()], set_rng_state_all=lambda states: None,
        seed=lambda: None, seed_all=lambda: None, initial_seed=lambda: 0,
        FloatTensor=torch.FloatTensor, HalfTensor=torch.HalfTensor, LongTensor=torch.LongTensor,
        IntTensor=torch.IntTensor, BoolTensor=torch.BoolTensor, ByteTensor=torch.ByteTensor)
    module = {**base, **extra}
    return types.SimpleNamespace(**{name: _recorded(name, value) if callable(value) and not isinstance(value, type)
                                    else value for name, value in module.items()})


def install_for_rules(monkeypatch):
    """``install(monkeypatch)`` with ``torch_npu_module_for_rules()`` as torch.npu; ``npu_calls`` emptied."""
    selected = install(monkeypatch)
    monkeypatch.setattr(torch, "npu", torch_npu_module_for_rules(), raising=False)
    npu_calls.clear()
    return selected
