"""Building VisualGLM: random or on the meta device, weights assigned without copies, adapters for fine-tuning,
parameter counts. The model classes themselves are in ``sat_model`` (they subclass SAT's)."""
from __future__ import annotations

import argparse
import contextlib
import warnings
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .config import ENCODER_PARTS, FINETUNE_MODES, VisualGLMConfig


def classes() -> dict[str, type[Any]]:
    """The model classes by name. They subclass SAT's, so SAT is imported here, on first use."""
    from .sat_model import CLASSES

    return CLASSES


class _OnMeta(TorchFunctionMode):
    """Create every tensor on the meta device, even where SAT passes device='cpu' explicitly."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs or getattr(func, "__name__", "") in ("empty", "zeros", "ones", "rand", "randn", "full"):
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def answer_loss(model, batch: dict) -> torch.Tensor:
    """The next-token loss on the answer only, as ``finetune_visualglm.py`` trains (labels are -100 elsewhere);
    the vocabulary's logits are computed just where a label is. ``batch`` is ``data.collate``'s, on the model's
    device."""
    labels = batch["labels"]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    logits = model(input_ids=batch["input_ids"], image=batch["image"], pre_image=batch["pre_image"],
                   logit_mask=mask)[0]
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][mask[:, :-1]])


def sat_namespace(config: VisualGLMConfig, **extra) -> argparse.Namespace:
    """The argparse namespace SAT's model classes read, for this configuration."""
    cls = classes()["VisualGLMModel"]
    values = {**config.sat_args(), "skip_init": False, "hidden_dropout": 0.0, "attention_dropout": 0.0, **extra}
    values.pop("model_class", None)
    values.pop("tokenizer_type", None)
    return cls.get_args(**values)


def build_model(config: VisualGLMConfig, *, finetune: str | None = None, lora_rank: int = 10,
                lora_layers: list[int] | None = None, pre_seq_len: int = 8, meta: bool = False, seed: int = 1234):
    """A VisualGLM model with random weights (load a checkpoint into it for real ones).

    ``finetune`` adds SAT's LoRA mixin (rank ``lora_rank`` on ``lora_layers``, default all), SAT's P-tuning v2
    mixin, or nothing (``full``), and leaves only those parameters trainable. ``meta`` builds on the meta
    device: shapes and counts without memory.
    """
    if finetune not in (None, *FINETUNE_MODES):
        raise ValueError(f"finetune must be one of {FINETUNE_MODES}, not {finetune!r}")
    args = sat_namespace(config, skip_init=meta, seed=seed)
    torch.manual_seed(seed)
    with (_OnMeta() if meta else contextlib.nullcontext()), warnings.catch_warnings():
        # the Q-Former's position table has 0 rows (max_sequence_length 0, as released): nothing to initialise
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        model = classes()["VisualGLMModel"](args)
        model.porter_config = config
        if finetune is not None:
            add_finetuning(model, finetune, lora_rank=lora_rank, lora_layers=lora_layers, pre_seq_len=pre_seq_len)
    return model


def assign_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Put each tensor in place of the model's parameter or buffer of that name, without copying.

    ``load_state_dict(assign=True)`` cannot do this for SAT: its LoRA layers and rotary module override
    ``_load_from_state_dict`` and copy into (or ignore) what is there, which on the meta device is nothing.
    """
    for name, tensor in weights.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr in owner._parameters:
            old = owner._parameters[attr]
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=old.requires_grad if old is not None else True)
        elif attr in owner._buffers:
            owner._buffers[attr] = tensor
        else:
            raise KeyError(name)


def materialise_derived(model, dtype: torch.dtype = torch.float32) -> None:
    """Compute the buffers a checkpoint does not set (rotary ``inv_freq``) as SAT computes them at build time, in
    ``dtype`` as SAT's ``model.half()`` leaves them; anything else still on the meta device is a bug, said so."""
    for module in model.modules():
        for attr, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta and attr == "inv_freq":
                dim = 2 * buf.shape[0]  # SAT's RotaryEmbedding: 1 / base^(2i/dim), base 10000 for ChatGLM
                module._buffers[attr] = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).to(dtype)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left without a value after loading: {', '.join(left)}")


def add_finetuning(model, finetune: str, *, lora_rank: int = 10, lora_layers: list[int] | None = None,
                   pre_seq_len: int = 8):
    """Add the adapters ``finetune`` needs to a built (possibly loaded) model; only they stay trainable."""
    config = model.porter_config
    if finetune == "lora" and getattr(model, "porter_quant", None):
        _lora_on_quantized(model, config, lora_rank, lora_layers)
    elif finetune == "lora":
        from sat.model.finetune.lora2 import LoraMixin

        model.add_mixin("lora", LoraMixin(config.lm.layers, lora_rank, layer_range=lora_layers), reinit=True)
    elif finetune == "ptuning":
        from sat.model.finetune import PTuningV2Mixin

        head = config.lm.hidden // config.lm.heads
        model.add_mixin("ptuning", PTuningV2Mixin(config.lm.layers, head, config.lm.heads, pre_seq_len))
    set_trainable(model, finetune)
    return model


def _lora_on_quantized(model, config, rank: int, layers: list[int] | None) -> None:
    """SAT's LoRA mixin on a model whose language model is quantized: SAT's LoraLinear copies its original's float
    weight, which a quantized layer does not have. So the mixin is built on the meta device around float
    stand-ins of the same shapes, each LoraLinear then gets the quantized layer back as its frozen ``original``,
    and the adapters are initialised as SAT initialises them (A Kaiming-uniform, B zero) on the model's device."""
    import math

    from sat.model.finetune.lora2 import LoraMixin
    from sat.mpu import ColumnParallelLinear, RowParallelLinear

    from .quantized import sat_kernels

    kernels = sat_kernels()
    quantized = {}
    for i in layers if layers is not None else range(config.lm.layers):
        attention = model.transformer.layers[i].attention
        for attr in ("query_key_value", "dense"):
            layer = getattr(attention, attr)
            quantized[(i, attr)] = layer
            cls = ColumnParallelLinear if isinstance(layer, kernels.QuantizedColumnParallelLinear) else RowParallelLinear
            with _OnMeta():
                stand_in = cls(layer.input_size, layer.output_size, bias=layer.bias is not None, skip_init=True,
                               device=torch.device("meta"))
            setattr(attention, attr, stand_in)
    with _OnMeta():
        model.add_mixin("lora", LoraMixin(config.lm.layers, rank, layer_range=layers), reinit=True)
    anchor = next(p for p in model.parameters() if not p.is_meta and p.is_floating_point())
    for (i, attr), layer in quantized.items():
        lora = getattr(model.transformer.layers[i].attention, attr)
        lora.original = layer
        for j, (a, b) in enumerate(zip(lora.matrix_A, lora.matrix_B)):
            lora.matrix_A[j] = nn.Parameter(torch.empty(a.shape, dtype=anchor.dtype, device=anchor.device))
            nn.init.kaiming_uniform_(lora.matrix_A[j], a=math.sqrt(5))
            lora.matrix_B[j] = nn.Parameter(torch.zeros(b.shape, dtype=anchor.dtype, device=anchor.device))
            lora.matrix_B[j].model_parallel = True  # as SAT marks it


ADAPTER_KEYS = {"lora": ("matrix_A", "matrix_B"), "ptuning": ("ptuning",)}


def is_adapter(name: str, finetune: str | None) -> bool:
    return finetune in ADAPTER_KEYS and any(k in name for k in ADAPTER_KEYS[finetune])


def save_adapters_only(model, finetune: str) -> None:
    """From now on ``model.state_dict()`` (what SAT's and DeepSpeed's checkpoints save) holds the adapters alone:
    a run on a frozen quantized base saves a small fraction of it, and its model_config.json names the base."""
    def drop_base(module, state_dict, prefix, local_metadata):
        for key in [k for k in state_dict if not is_adapter(k, finetune)]:
            del state_dict[key]

    model.register_state_dict_post_hook(drop_base)


def set_trainable(model, finetune: str) -> list[str]:
    """Only the fine-tuned parameters keep requires_grad; returns their names."""
    keys = {**ADAPTER_KEYS, "full": ("",)}[finetune]
    trainable = []
    for name, param in model.named_parameters():
        on = any(k in name for k in keys) and param.is_floating_point()  # a quantized weight never trains
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    return trainable


def scale_lr(model, part: str, scale: float) -> list[str]:
    """One image-encoder part ("vit" or "qformer") learns at ``scale`` x the learning rate: 0 freezes it (no
    gradients, no optimizer state), other values set SAT's per-parameter ``lr_scale``, which SAT's optimizer setup
    (0.4.6 on) turns into a parameter group of that rate. The projection into the language model (glm_proj) is
    in neither part. Returns the names it scaled."""
    marker = ENCODER_PARTS[part]
    names: list[str] = []
    if scale == 1.0:
        return names
    for name, param in model.named_parameters():
        if marker in name:
            if scale == 0:
                param.requires_grad_(False)
            else:
                param.lr_scale = scale
            names.append(name)
    return names


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part: vision, qformer, projection, language model, adapters."""
    counts = {"vision": 0, "qformer": 0, "projection": 0, "language": 0, "adapters": 0}
    for name, param in model.named_parameters():
        if "matrix_A" in name or "matrix_B" in name or "ptuning" in name:
            part = "adapters"
        elif ENCODER_PARTS["vit"] in name:
            part = "vision"
        elif ENCODER_PARTS["qformer"] in name:
            part = "qformer"
        elif "glm_proj" in name:
            part = "projection"
        else:
            part = "language"
        counts[part] += param.numel()
    counts["total"] = sum(counts.values())
    return counts
