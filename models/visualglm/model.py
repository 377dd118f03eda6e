"""VisualGLM on SAT 0.4.12: EVA ViT -> Q-Former -> projection -> ChatGLM, image features spliced over the pad
positions after ``<img>`` through SAT's ``word_embedding_forward`` hook.

Module and parameter names follow the released VisualGLM-6B checkpoint (``mixins.eva.model.vit...``,
``...qformer...``, ``...glm_proj``), so its weights load as they are.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import warnings

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .config import FINETUNE_MODES, VisualGLMConfig


def _sat():
    """SAT imports, deferred: listing plugins or reading a config must not import SAT (and DeepSpeed)."""
    from sat.model import BaseMixin, BaseModel, ViTModel
    from sat.model.official import ChatGLMModel

    return BaseMixin, BaseModel, ViTModel, ChatGLMModel


_classes: dict[str, type] = {}


def classes() -> dict[str, type]:
    """The model classes, defined on first use (they subclass SAT's)."""
    if _classes:
        return _classes
    BaseMixin, BaseModel, ViTModel, ChatGLMModel = _sat()
    from sat.model.official.chatglm_model import ChatGLMFinalMixin

    class VisionFinalNorm(BaseMixin):
        """EVA ends in a LayerNorm over every position instead of ViT's classifier."""

        def __init__(self, hidden_size, eps=1e-5):  # nn.LayerNorm's default, as upstream's blip2.py builds it
            super().__init__()
            self.ln_vision = nn.LayerNorm(hidden_size, eps=eps)

        def final_forward(self, logits, **kw_args):
            return self.ln_vision(logits)

    class EVAViT(ViTModel):
        def __init__(self, args, transformer=None, **kwargs):
            super().__init__(args, transformer=transformer, **kwargs)
            self.del_mixin("cls")
            self.add_mixin("cls", VisionFinalNorm(args.hidden_size))

        def forward(self, image):
            batch = image.size(0)
            input_ids = torch.zeros(batch, 1, dtype=torch.long, device=image.device)
            full = torch.ones(1, 1, dtype=image.dtype, device=image.device)
            return super().forward(input_ids=input_ids, position_ids=None, attention_mask=full, image=image)

    class QFormer(BaseModel):
        """Learnt query tokens (the word embeddings of ids 0..n-1) cross-attending to the ViT output."""

        def __init__(self, args, transformer=None, **kwargs):
            super().__init__(args, transformer=transformer, activation_func=nn.functional.gelu, **kwargs)
            self.transformer.position_embeddings = None
            self.queries = args.vocab_size

        def final_forward(self, logits, **kw_args):
            return logits

        def position_embedding_forward(self, position_ids, **kw_args):
            return None

        def forward(self, encoder_outputs):
            batch, device, dtype = encoder_outputs.size(0), encoder_outputs.device, encoder_outputs.dtype
            input_ids = torch.arange(self.queries, dtype=torch.long, device=device).unsqueeze(0).expand(batch, -1)
            full = torch.ones(1, 1, dtype=dtype, device=device)
            return super().forward(input_ids=input_ids, position_ids=None, attention_mask=full,
                                   encoder_outputs=encoder_outputs, cross_attention_mask=full)

    class ImageEncoder(nn.Module):
        def __init__(self, eva_args: dict, qformer_args: dict, lm_hidden: int):
            super().__init__()
            self.vit = EVAViT(EVAViT.get_args(**eva_args))
            self.qformer = QFormer(QFormer.get_args(**qformer_args))
            self.glm_proj = nn.Linear(qformer_args["hidden_size"], lm_hidden)

        def forward(self, image, **kwargs):
            return self.glm_proj(self.qformer(self.vit(image)[0])[0])

    class ImageMixin(BaseMixin):
        def __init__(self, args):
            super().__init__()
            self.image_length = args.image_length
            self.model = ImageEncoder(args.eva_args, args.qformer_args, args.hidden_size)

        def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
            image, pre = kw_args.get("image"), kw_args.get("pre_image")
            if image is None or pre is None or int(pre.max() if torch.is_tensor(pre) else pre) + self.image_length \
                    > input_ids.shape[1]:
                return self.transformer.word_embeddings(input_ids)
            if torch.is_tensor(pre):  # a left-padded batch: each row's image starts at its own offset
                features = self.model(image).to(self.transformer.word_embeddings.weight.dtype)
                where = (pre.view(-1, 1) + torch.arange(self.image_length, device=pre.device)).to(input_ids.device)
                where = where.unsqueeze(-1).expand(-1, -1, features.shape[-1])
                return self.transformer.word_embeddings(input_ids).scatter(1, where, features)
            pre = int(pre)
            features = self.model(image).to(self.transformer.word_embeddings.weight.dtype)
            before, _pads, after = torch.tensor_split(input_ids, [pre, pre + self.image_length], dim=1)
            return torch.cat([self.transformer.word_embeddings(before), features,
                              self.transformer.word_embeddings(after)], dim=1)

    class SelectiveFinal(ChatGLMFinalMixin):
        """ChatGLM's output layer, which can compute logits only at ``logit_mask`` positions.

        Training needs logits only where there is a label: with ChatGLM's 130,528-token vocabulary that is
        most of a small model's work. Without ``logit_mask`` it is ChatGLM's own layer (same weights, same
        names in checkpoints).
        """

        def final_forward(self, logits, **kw_args):
            mask = kw_args.get("logit_mask")
            if mask is not None:
                logits = logits[mask]
            return self.lm_head(logits)

    class VisualGLMModel(ChatGLMModel):
        def __init__(self, args, transformer=None, **kwargs):
            super().__init__(args, transformer=transformer, **kwargs)
            self.image_length = args.image_length
            self.del_mixin("chatglm-final")
            self.add_mixin("chatglm-final", SelectiveFinal(args.vocab_size, args.hidden_size))
            self.add_mixin("eva", ImageMixin(args))

        @classmethod
        def add_model_specific_args(cls, parser):
            group = parser.add_argument_group("VisualGLM", "VisualGLM configuration")
            group.add_argument("--image_length", type=int, default=32)
            group.add_argument("--eva_args", type=json.loads, default={})
            group.add_argument("--qformer_args", type=json.loads, default={})
            # recorded in model_config.json so a fine-tuned checkpoint loads with its adapters
            group.add_argument("--use_lora", action="store_true")
            group.add_argument("--lora_rank", type=int, default=10)
            group.add_argument("--layer_range", nargs="+", type=int, default=None)
            group.add_argument("--use_ptuning", action="store_true")
            group.add_argument("--pre_seq_len", type=int, default=8)
            return super().add_model_specific_args(parser)

    _classes.update(SelectiveFinal=SelectiveFinal, VisionFinalNorm=VisionFinalNorm, EVAViT=EVAViT, QFormer=QFormer, ImageEncoder=ImageEncoder,
                    ImageMixin=ImageMixin, VisualGLMModel=VisualGLMModel)
    return _classes


class _OnMeta(TorchFunctionMode):
    """Create every tensor on the meta device, even where SAT passes device='cpu' explicitly."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs or getattr(func, "__name__", "") in ("empty", "zeros", "ones", "rand", "randn", "full"):
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


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
    if finetune == "lora":
        from sat.model.finetune.lora2 import LoraMixin

        model.add_mixin("lora", LoraMixin(config.lm.layers, lora_rank, layer_range=lora_layers), reinit=True)
    elif finetune == "ptuning":
        from sat.model.finetune import PTuningV2Mixin

        head = config.lm.hidden // config.lm.heads
        model.add_mixin("ptuning", PTuningV2Mixin(config.lm.layers, head, config.lm.heads, pre_seq_len))
    set_trainable(model, finetune)
    return model


def set_trainable(model, finetune: str) -> list[str]:
    """Only the fine-tuned parameters keep requires_grad; returns their names."""
    keys = {"lora": ("matrix_A", "matrix_B"), "ptuning": ("ptuning",), "full": ("",)}[finetune]
    trainable = []
    for name, param in model.named_parameters():
        on = any(k in name for k in keys)
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    return trainable


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part: vision, qformer, projection, language model, adapters."""
    counts = {"vision": 0, "qformer": 0, "projection": 0, "language": 0, "adapters": 0}
    for name, param in model.named_parameters():
        if "matrix_A" in name or "matrix_B" in name or "ptuning" in name:
            part = "adapters"
        elif ".vit." in name:
            part = "vision"
        elif ".qformer." in name:
            part = "qformer"
        elif "glm_proj" in name:
            part = "projection"
        else:
            part = "language"
        counts[part] += param.numel()
    counts["total"] = sum(counts.values())
    return counts
