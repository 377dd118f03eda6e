"""VisualGLM's model classes on SAT 0.4.12: EVA ViT -> Q-Former -> projection -> ChatGLM, image features spliced
over the pad positions after ``<img>`` through SAT's ``word_embedding_forward`` hook.

Module and parameter names follow the released VisualGLM-6B checkpoint (``mixins.eva.model.vit...``,
``...qformer...``, ``...glm_proj``), so its weights load as they are. This module imports SAT (and DeepSpeed
through it): ``model.classes()`` imports it on first use, so listing plugins or reading a config does not.
"""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn as nn
from sat.model import BaseMixin, BaseModel, ViTModel
from sat.model.official import ChatGLMModel
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
        return few_rows_logits(self.lm_head, logits)


FEW_ROWS = range(2, 65)


def few_rows_logits(head, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)``; for a decode step's few rows on the CPU, computed as ``weight @ hidden.T``.

    Why: at 2 to 64 rows CPU GEMM kernels treat [rows, hidden] x [hidden, 130,528] as a short, wide product and
    run several times slower than one row (measured on the tiny preset: 1 row 1.1 ms, 8 rows 5.4 ms), while the
    same product as [130,528, hidden] x [hidden, rows] reads the weight once like the one-row kernel (8 rows
    2.7 ms). Same values up to the order of the sums. Only where nothing else is in the way: no autograd, one
    model-parallel rank, a plain weight without bias.
    """
    rows = hidden.numel() // hidden.shape[-1] if hidden.shape[-1] else 0
    weight = getattr(head, "weight", None)
    if (rows not in FEW_ROWS or hidden.device.type != "cpu" or torch.is_grad_enabled() or weight is None
            or getattr(head, "bias", None) is not None or type(weight) not in (torch.Tensor, torch.nn.Parameter)
            or weight.dim() != 2 or weight.dtype != hidden.dtype or weight.shape[1] != hidden.shape[-1]
            or _model_parallel() != 1):
        return head(hidden)
    flat = hidden.reshape(rows, hidden.shape[-1])
    return torch.mm(weight, flat.t()).t().reshape(*hidden.shape[:-1], weight.shape[0])


def _model_parallel() -> int:
    from sat.mpu import get_model_parallel_world_size

    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 1
    try:
        return get_model_parallel_world_size()
    except Exception:  # no model-parallel group: one process
        return 1


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
        # a run fine-tuned on a quantized base saves its adapters alone and names the base they go with
        group.add_argument("--quant_bits", type=int, default=None)
        group.add_argument("--quant_base", default=None)
        return super().add_model_specific_args(parser)


# type[Any]: the classes subclass SAT's, which ship no types, so mypy cannot see the classmethods SAT gives them
# (get_args, add_model_specific_args) and would refuse every call to them on a plain ``type``.
CLASSES: dict[str, type[Any]] = {"VisionFinalNorm": VisionFinalNorm, "EVAViT": EVAViT, "QFormer": QFormer,
                                 "ImageEncoder": ImageEncoder, "ImageMixin": ImageMixin,
                                 "SelectiveFinal": SelectiveFinal, "VisualGLMModel": VisualGLMModel}
