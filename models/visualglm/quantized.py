"""The language model's linear layers in 8 or 4 bits: SAT's own ``Quantized*ParallelLinear`` layers (ported by
porter's SAT rules so they compute through ``porter.runtime.quant`` on any device), put in place on the meta
device and filled as each weight is read from the memory-mapped checkpoint.

Upstream's ``--quant`` builds the whole model in fp16 on the CPU, then calls SAT's ``quantize(model.transformer,
bits)``, which holds the 16-bit language model and its quantized copy at once. Here the 16-bit weights are only
ever the file's mapped pages (page cache) and one row chunk at a time: host memory holds the quantized language
model, plus the parts that stay in 16 bits as upstream leaves them (word embeddings, ``lm_head``, the image
encoder, biases and norms).

What is quantized is what upstream's ``quantize(model.transformer, bits)`` reaches in VisualGLM: every
Column/RowParallelLinear of ChatGLM's 28 layers (query_key_value, dense, dense_h_to_4h, dense_4h_to_h), including
the ``original`` inside a LoRA layer. The image encoder's linears are not under ``transformer`` and stay 16-bit.
"""
from __future__ import annotations

import re

import torch

from porter.errors import PorterError, UsageError

BITS = (4, 8)
# module names quantize() reaches in VisualGLM: the language model's linears, or a LoRA layer's frozen original
LM_LINEAR = re.compile(r"^transformer\.layers\.\d+\.(attention\.(query_key_value|dense)|mlp\.(dense_h_to_4h|dense_4h_to_h))"
                       r"(\.original)?$")
SCALE = "weight_scale"


def check_options(quant: int | None, finetune: str | None = None) -> None:
    """Option combinations that cannot work, before anything is read (exit 2)."""
    if quant is None:
        return
    if quant not in BITS:
        raise UsageError(f"--quant {quant}: expected 4 or 8 (SAT's weight-only int4 / int8)")
    if finetune == "full":
        raise UsageError(f"--quant {quant} with --finetune full: a quantized weight has no gradient",
                         hint="fine-tune adapters on the frozen quantized base: --finetune lora (or ptuning)")


def sat_kernels():
    """SAT's quantization module as porter ported it; one clear error where this process runs it unported."""
    import sat.quantization.kernels as kernels

    if "porter_quant" not in vars(kernels):
        raise PorterError("SAT's quantization is not ported in this process: its int8/int4 kernels are CUDA binaries "
                          "loaded through cpm_kernels",
                          hint="if SAT is patched on disk by an older porter, `porter patch sat` brings it up to date; "
                               "a launched recipe also needs --patch memory or disk, not --patch off")
    return kernels


def quantized_names(model) -> list[str]:
    """The modules ``quantize_meta`` replaces (or has replaced), in order: SAT's parallel linears of the language
    model (a LoRA layer itself is not one; its ``original`` is)."""
    from sat.mpu import ColumnParallelLinear, RowParallelLinear

    return [name for name, module in model.named_modules()
            if LM_LINEAR.match(name) and isinstance(module, (ColumnParallelLinear, RowParallelLinear))]


def quantize_meta(model, bits: int) -> list[str]:
    """Replace the language model's linears by SAT's quantized layers of ``bits``, on the meta device (no memory);
    their weight (int8, SAT's layout) and ``weight_scale`` (fp16) are assigned when the file is read. Returns the
    names of the modules replaced."""
    from sat.mpu import ColumnParallelLinear, RowParallelLinear

    kernels = sat_kernels()
    done = (kernels.QuantizedColumnParallelLinear, kernels.QuantizedRowParallelLinear)
    replaced = []
    for name in quantized_names(model):
        module = model.get_submodule(name)
        if isinstance(module, done):
            continue
        common = dict(weight_bit_width=bits, weight=None, input_size=module.input_size,
                      output_size=module.output_size, bias=module.bias is not None, params_dtype=torch.half,
                      name=name.rsplit(".", 1)[-1], skip_init=True, device=torch.device("meta"), bias_val=module.bias)
        if isinstance(module, ColumnParallelLinear):
            new = kernels.QuantizedColumnParallelLinear(gather_output=module.gather_output, **common)
        elif isinstance(module, RowParallelLinear):
            new = kernels.QuantizedRowParallelLinear(input_is_parallel=module.input_is_parallel, **common)
        else:  # pragma: no cover - quantized_names returns SAT's parallel linears only
            raise TypeError(f"{name}: {type(module).__name__} is not one of SAT's parallel linears")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
        replaced.append(name)
    return replaced


def quantized_state(state: dict[str, torch.Tensor], bits: int | None) -> dict[str, torch.Tensor]:
    """``state`` (a meta model's state dict) as SAT's quantized layers of ``bits`` hold it: each language-model
    linear's weight int8 [N, K * bits / 8] and a fp16 ``weight_scale`` [N]; on the meta device, for comparing a
    file's keys and shapes without building the layers (that needs the ported SAT). ``bits`` None: ``state``."""
    if bits is None:
        return state
    out = {}
    for key, t in state.items():
        module, _, attr = key.rpartition(".")
        if attr == "weight" and LM_LINEAR.match(module):
            out[key] = torch.empty(t.shape[0], t.shape[1] * bits // 8, dtype=torch.int8, device="meta")
            out[module + "." + SCALE] = torch.empty(t.shape[0], dtype=torch.float16, device="meta")
        else:
            out[key] = t
    return out


def repack_for_cpu(model) -> int:
    """Where the model runs on the CPU: each 4-bit layer's weight rewritten once into torch's CPU int4 layout for
    its int4 kernel (``porter.runtime.quant.pack_for_cpu``; ``state_dict()`` still gives SAT's). Returns how many."""
    from porter.runtime import quant

    return sum(quant.pack_for_cpu(model.get_submodule(name)) for name in quantized_names(model))


def stored_bits(weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> int | None:
    """The bits a checkpoint's language model is stored in (SAT's quantized layout: an int8 ``weight`` and a
    ``weight_scale`` per layer, as ``quantize()`` leaves them and ``state_dict()`` saves them), or None for 16/32-bit
    weights. ``state``: the unquantized (meta) model's state dict, to tell int4 (half the columns) from int8."""
    bits = set()
    for key in weights:
        if not key.endswith("." + SCALE):
            continue
        weight = key[: -len(SCALE)] + "weight"
        stored, full = weights.get(weight), state.get(weight)
        if stored is None or full is None or stored.dtype != torch.int8:
            continue
        bits.add(8 if stored.shape[-1] == full.shape[-1] else 4)
    return bits.pop() if len(bits) == 1 else (min(bits) if bits else None)


def quantize_weights(weights: dict[str, torch.Tensor], names: list[str], bits: int, say=None):
    """Yield (key, tensor) for every tensor of ``names``' weights, quantized as SAT's ``quantize`` does (the
    16-bit rows read from the memory map a chunk at a time), each scale next to its weight."""
    from porter.runtime import quant

    for i, name in enumerate(names):
        # in fp16, whatever the file holds: upstream quantizes its fp16 model (an fp32 or bf16 file is loaded into
        # it first), so the ints and scales are upstream's for any checkpoint
        q, scale = quant.quantize_rows(weights[name + ".weight"], bits, dtype=torch.float16)
        yield name + ".weight", q
        yield name + "." + SCALE, scale
        if say and (i + 1) % 16 == 0 or say and i + 1 == len(names):
            say(f"quantized {i + 1}/{len(names)} layers to {bits} bits")


def memory_plan(weights: dict[str, torch.Tensor], names: list[str], bits: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes the quantized model holds: the language model's linears in ``bits`` (+ fp16 scales), everything else
    in ``dtype``; what ``check --quant`` prints and compares with free memory."""
    linear = {n + ".weight" for n in names}
    plan = {"quantized": 0, "16-bit": 0}
    for key, t in weights.items():
        if key in linear and t.dtype == torch.int8:  # stored quantized already
            plan["quantized"] += t.numel()
        elif key in linear:
            plan["quantized"] += t.numel() * bits // 8 + t.shape[0] * 2  # + the fp16 scale of each row
        elif key.endswith("." + SCALE):
            plan["quantized"] += t.numel() * t.element_size()
        elif t.is_floating_point():
            plan["16-bit"] += t.numel() * dtype.itemsize
        else:
            plan["16-bit"] += t.numel() * t.element_size()
    return plan


def require_memory(weights: dict[str, torch.Tensor], names: list[str], bits: int, dtype: torch.dtype,
                   what: str) -> int:
    """Before a weight is read: the quantized model's plan against the host's available memory; an InputError
    (exit 7) naming both where it does not fit. Returns the bytes planned."""
    from porter.errors import InputError

    from .check import gib, host_available

    plan = memory_plan(weights, names, bits, dtype)
    need = plan["quantized"] + plan["16-bit"]
    free = host_available()
    if free is not None and need > free:
        raise InputError(f"{what}: with --quant {bits} the model needs about {gib(need)} of host memory "
                         f"({gib(plan['quantized'])} in {bits} bits + {gib(plan['16-bit'])} in "
                         f"{str(dtype).removeprefix('torch.')}), {gib(free)} is available",
                         hint="close what holds memory, or try --quant 4" if bits == 8 else
                         "close what holds memory, or use a machine with more")
    return need


__all__ = ["BITS", "LM_LINEAR", "check_options", "sat_kernels", "quantized_names", "quantize_meta", "quantized_state",
           "stored_bits",
           "quantize_weights", "memory_plan", "require_memory", "repack_for_cpu"]
