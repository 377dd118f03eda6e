"""VisualGLM-6B's and ChatGLM-6B's checkpoint layouts, SAT and Hugging Face, as tables: one place says what each
tensor is called on each side, which rows move, how each splits across model-parallel ranks, and how the config
fields correspond. ``convert`` reads these tables and nothing else decides a name.

Every fact has its source in ``docs/checkpoint-layouts.md``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# -- names ------------------------------------------------------------------------------------------------------------
# (SAT prefix, HF prefix), first match wins. The image encoder is a pure prefix swap: HF's visual.py builds SAT's own
# ViT and Q-Former classes, so their inner names (and their [Q;K;V] rows) are SAT's on both sides.
RENAMES = (
    ("mixins.chatglm-final.lm_head.", "lm_head."),
    ("mixins.eva.model.", "image_encoder."),
    ("transformer.", "transformer."),
)
# The one tensor whose rows differ: the language model's query_key_value. HF (and SAT <= 0.4.0) keep each head's
# q, k, v together; SAT >= 0.4.1 keeps all q rows, then all k, then all v.
LM_QKV = re.compile(r"^transformer\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)$")
# Derived buffers: SAT keeps one rotary table (or none), HF one per layer; neither side's loader reads them.
SAT_INV_FREQ = "mixins.chatglm-attn.rotary_emb.inv_freq"
HF_INV_FREQ = re.compile(r"^transformer\.layers\.(\d+)\.attention\.rotary_emb\.inv_freq$")
HF_INV_FREQ_NAME = "transformer.layers.{layer}.attention.rotary_emb.inv_freq"
# A learned position table SAT 0.3.x's ChatGLM kept and never used (ChatGLM's positions are rotary).
SAT_STALE = "transformer.position_embeddings.weight"
DERIVED_SAT = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

# HF's weight files: (the index of a sharded folder, the one file of an unsharded one), safetensors first as
# transformers prefers it
HF_INDEXES = (("model.safetensors.index.json", "model.safetensors"),
              ("pytorch_model.bin.index.json", "pytorch_model.bin"))

GROUPED, PER_HEAD = "grouped", "per-head"  # query_key_value row orders: SAT >= 0.4.1; HF and SAT <= 0.4.0


def is_hf_folder(folder) -> bool:
    """config.json beside HF weight files or their index."""
    return (folder / "config.json").exists() and any((folder / n).exists() for pair in HF_INDEXES for n in pair)


def to_hf_name(sat: str) -> str | None:
    for s, h in RENAMES:
        if sat.startswith(s):
            return h + sat[len(s):]
    return None


def to_sat_name(hf: str) -> str | None:
    for s, h in RENAMES:
        if hf.startswith(h):
            return s + hf[len(h):]
    return None


def reorder_qkv(t: torch.Tensor, heads: int, to: str) -> torch.Tensor:
    """query_key_value rows (weight or bias) from one order to the other: a permutation, exact in any dtype."""
    rows = t.shape[0]
    if rows % (3 * heads):
        raise ValueError(f"query_key_value has {rows} rows, not a multiple of 3 x {heads} heads")
    d = rows // (3 * heads)
    rest = tuple(t.shape[1:])
    if to == GROUPED:  # (head, part, dim) -> (part, head, dim)
        return t.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(rows, *rest).contiguous()
    return t.reshape(3, heads, d, *rest).transpose(0, 1).reshape(rows, *rest).contiguous()


def inv_freq(hidden: int, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """ChatGLM's 2-D rotary frequencies (over half of each head's dims, one per two dims): SAT keeps them in fp32,
    HF's remote code in fp16."""
    dim = hidden // (heads * 2)
    return (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).to(dtype)


def lm_shapes(sat: dict) -> dict[str, tuple]:
    """Every tensor of a text-only ChatGLM-6B in SAT's names (SAT's ChatGLMModel: the transformer and lm_head), by
    the naming rules release.py writes the released checkpoint's keys with."""
    from .release import _layer

    h, vocab = sat["hidden_size"], sat["vocab_size"]
    out: dict[str, tuple] = {"transformer.word_embeddings.weight": (vocab, h)}
    for n in range(sat["num_layers"]):
        out.update(_layer(f"transformer.layers.{n}", h, sat.get("inner_hidden_size") or 4 * h))
    out["transformer.final_layernorm.weight"] = out["transformer.final_layernorm.bias"] = (h,)
    out["mixins.chatglm-final.lm_head.weight"] = (vocab, h)
    return out


# -- model parallelism (SAT's mpu layers) -------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """How SAT's model-parallel layer holds a tensor across ranks: ``dim`` 0 (output rows: ColumnParallelLinear,
    VocabParallelEmbedding; ``stride`` equal blocks, each cut in ranks' pieces), 1 (input columns:
    RowParallelLinear's weight) or None (every rank holds all of it)."""
    dim: int | None
    stride: int = 1


WHOLE = Split(None)
# (pattern on the SAT name, split) - first match wins; everything else is held whole by every rank.
MP_SPLITS = (
    (re.compile(r"^transformer\.word_embeddings\.weight$"), Split(0)),  # the LM's VocabParallelEmbedding only
    (re.compile(r"^mixins\.chatglm-final\.lm_head\.weight$"), Split(0)),
    (re.compile(r"(^|\.)attention\.query_key_value\.(weight|bias)$"), Split(0, 3)),
    (re.compile(r"(^|\.)cross_attention\.key_value\.(weight|bias)$"), Split(0, 2)),
    (re.compile(r"(^|\.)(mlp\.dense_h_to_4h|cross_attention\.query)\.(weight|bias)$"), Split(0)),
    (re.compile(r"(^|\.)(attention\.dense|cross_attention\.dense|mlp\.dense_4h_to_h)\.weight$"), Split(1)),
)


def mp_split_of(sat_name: str) -> Split:
    for pattern, split in MP_SPLITS:
        if pattern.search(sat_name):
            return split
    return WHOLE


def split_for_rank(t: torch.Tensor, split: Split, rank: int, ranks: int) -> torch.Tensor:
    """Rank ``rank``'s part: for dim 0, the rank's piece of each of the ``stride`` blocks, concatenated (so a
    query_key_value part is [Q;K;V] of its own heads); for dim 1, a contiguous slice of the columns."""
    if split.dim is None or ranks == 1:  # no copy: a converter holds one tensor at a time, not two
        return t
    if split.dim == 1:
        cols = t.shape[1] // ranks
        return t[:, rank * cols:(rank + 1) * cols].contiguous()
    blocks = t.chunk(split.stride, dim=0)
    pieces = [b[rank * (b.shape[0] // ranks):(rank + 1) * (b.shape[0] // ranks)] for b in blocks]
    return torch.cat(pieces, dim=0).contiguous()


def merge_ranks(parts: list[torch.Tensor], split: Split) -> torch.Tensor:
    """The inverse of :func:`split_for_rank` over all ranks' parts."""
    if split.dim is None:
        return parts[0]
    if split.dim == 1:
        return torch.cat(parts, dim=1)
    blocks = [p.chunk(split.stride, dim=0) for p in parts]
    return torch.cat([blocks[r][i] for i in range(split.stride) for r in range(len(parts))], dim=0)


def split_shape(shape: tuple[int, ...], split: Split, ranks: int) -> tuple[int, ...]:
    if split.dim is None:
        return shape
    out = list(shape)
    out[split.dim] //= ranks
    return tuple(out)


def mp_problems(sat_args: dict, ranks: int) -> list[str]:
    """Sizes that SAT's ``divide`` would refuse to cut in ``ranks``: heads, vocabulary and inner widths, for the
    language model and (VisualGLM) the ViT and the Q-Former, whose layers are model-parallel too."""
    out = []
    parts = [("", sat_args)] + [(f"{k}.", sat_args[k]) for k in ("eva_args", "qformer_args")
                                if isinstance(sat_args.get(k), dict)]
    for prefix, args in parts:
        hidden = args.get("hidden_size")
        for key in ("num_attention_heads", "hidden_size", "inner_hidden_size"):
            value = args.get(key) if key != "inner_hidden_size" else args.get(key) or (4 * hidden if hidden else None)
            if isinstance(value, int) and value % ranks:
                out.append(f"{prefix}{key} {value} does not divide by {ranks}")
        if prefix == "" and isinstance(args.get("vocab_size"), int) and args["vocab_size"] % ranks:
            out.append(f"vocab_size {args['vocab_size']} does not divide by {ranks}")
    return out


# -- LoRA (SAT's lora2.LoraMixin) ----------------------------------------------------------------------------------
LORA_KEY = re.compile(r"^(?P<layer>transformer\.layers\.(?P<n>\d+)\.(?:cross_)?attention\.(?:query_key_value|dense|"
                      r"query|key_value))\.(?P<part>original\.weight|original\.bias|matrix_A\.\d+|matrix_B\.\d+)$")


def merge_lora(weight: torch.Tensor, a: list[torch.Tensor], b: list[torch.Tensor], scaling: float,
               dtype: torch.dtype) -> torch.Tensor:
    """SAT's merge: W + cat_i(B_i @ A_i) * scaling along the output rows, computed in fp32, stored in ``dtype``
    (the layer's bias dtype, as SAT's merge_linear_lora does)."""
    delta = torch.cat([bi.float() @ ai.float() for ai, bi in zip(a, b)], dim=0) * scaling
    return (weight.float() + delta).to(dtype)


# -- config: SAT model_config.json <-> HF config.json --------------------------------------------------------------
# (SAT field, HF field, default when absent). SAT writes some fields only when they differ from its default; HF
# writes them all.
CONFIG_FIELDS = (
    ("num_layers", "num_layers", None),
    ("hidden_size", "hidden_size", None),
    ("num_attention_heads", "num_attention_heads", None),
    ("vocab_size", "vocab_size", None),
    ("inner_hidden_size", "inner_hidden_size", "4h"),
    ("max_sequence_length", "max_sequence_length", 2048),
    ("layernorm_epsilon", "layernorm_epsilon", 1e-5),
    ("bos_token_id", "bos_token_id", 130004),
    ("mask_token_id", "mask_token_id", 130000),
    ("gmask_token_id", "gmask_token_id", 130001),
    ("pad_token_id", "pad_token_id", 3),
    ("image_length", "image_length", None),
    ("eva_args", "eva_config", None),
    ("qformer_args", "qformer_config", None),
)
# Fields one side has and the other does not: kept under this key on the other side, so a round trip gives the same
# file back. HF's config class keeps unknown fields as attributes; SAT's loader sets them as arguments it ignores.
HF_ONLY_KEY, SAT_ONLY_KEY = "hf_config", "sat_args"
HF_DEFAULTS = {  # what THUDM's config.json files hold beside the sizes (docs/checkpoint-layouts.md section 5)
    "eos_token_id": 130005, "model_type": "chatglm", "position_encoding_2d": True, "quantization_bit": 0,
    "pre_seq_len": None, "prefix_projection": False, "use_cache": True,
}
HF_AUTO_MAP = {
    True: {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
           "AutoModel": "modeling_chatglm.ChatGLMForConditionalGenerationWithImage",
           "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGenerationWithImage"},
    False: {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
}
SAT_DEFAULTS = {True: {"model_class": "VisualGLMModel", "tokenizer_type": "THUDM/chatglm-6b",
                       "layernorm_order": "post", "model_parallel_size": 1},
                False: {"model_class": "ChatGLMModel", "tokenizer_type": "THUDM/chatglm-6b",
                        "layernorm_order": "post", "model_parallel_size": 1}}
# What a user adds to an HF folder porter wrote, from the HF repository, to load it with trust_remote_code.
HF_CODE = {True: ("THUDM/visualglm-6b", ("configuration_chatglm.py", "modeling_chatglm.py", "visual.py",
                                         "quantization.py", "tokenization_chatglm.py", "tokenizer_config.json",
                                         "ice_text.model")),
           False: ("THUDM/chatglm-6b", ("configuration_chatglm.py", "modeling_chatglm.py", "quantization.py",
                                        "tokenization_chatglm.py", "tokenizer_config.json", "ice_text.model"))}
TORCH_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _default(value, sizes: dict):
    return 4 * sizes["hidden_size"] if value == "4h" else value


ABSENT = "porter_absent"  # inside the carried fields: what the other side's file did not have (added here)


def _carried(config: dict, key: str) -> tuple[dict, set[str]]:
    """The other side's fields a file keeps under ``key``, and the list of fields that side did not have; a
    ValueError naming the field if they are not what porter writes there."""
    carried = config.get(key) or {}
    if not isinstance(carried, dict):
        raise ValueError(f"'{key}' is {type(carried).__name__}: expected an object (the other layout's fields)")
    carried = dict(carried)
    absent = carried.pop(ABSENT, []) or []
    if not isinstance(absent, list) or not all(isinstance(a, str) for a in absent):
        raise ValueError(f"'{key}.{ABSENT}' is {absent!r}: expected a list of field names")
    return carried, set(absent)


def config_to_hf(sat: dict, *, visual: bool, dtype: torch.dtype) -> dict:
    """HF config.json from SAT's model_config.json. SAT-only fields go under ``sat_args``; a file porter made from
    an HF config gets that config back exactly (its HF-only fields were kept under ``hf_config``)."""
    carried, absent = _carried(sat, HF_ONLY_KEY)
    # architectures: what the released config.json files say (docs/checkpoint-layouts.md section 5)
    out = {"architectures": ["ChatGLMModel"], "auto_map": HF_AUTO_MAP[visual], **HF_DEFAULTS, **carried}
    for s, h, default in CONFIG_FIELDS:
        if s in sat and sat[s] is not None:
            out[h] = sat[s]
        elif default is not None:
            out[h] = _default(default, sat)
    out["torch_dtype"] = TORCH_DTYPE_NAMES.get(dtype, "float16")
    mapped = {s for s, _, _ in CONFIG_FIELDS}
    rest = {k: v for k, v in sat.items() if k not in mapped and k != HF_ONLY_KEY}
    rest[ABSENT] = [s for s, _, d in CONFIG_FIELDS if d is not None and s not in sat]
    rest[ABSENT] += [] if HF_ONLY_KEY in sat else [HF_ONLY_KEY]
    if SAT_ONLY_KEY not in absent:
        out[SAT_ONLY_KEY] = rest
    return {k: v for k, v in out.items() if k not in absent or k == SAT_ONLY_KEY}


def config_to_sat(hf: dict, *, visual: bool) -> dict:
    """SAT's model_config.json from HF config.json; HF-only fields go under ``hf_config`` (and the reverse of
    :func:`config_to_hf`)."""
    carried, absent = _carried(hf, SAT_ONLY_KEY)
    out = {**SAT_DEFAULTS[visual], **carried}
    for s, h, default in CONFIG_FIELDS:
        if h in hf and hf[h] is not None and not (s in absent and hf[h] == _default(default, hf)):
            out[s] = hf[h]
    mapped = {h for _, h, _ in CONFIG_FIELDS}
    rest = {k: v for k, v in hf.items() if k not in mapped and k != SAT_ONLY_KEY}
    made = ["architectures", "auto_map", "torch_dtype", *HF_DEFAULTS]  # what config_to_hf adds when missing
    rest[ABSENT] = [k for k in made if k not in hf] + [h for _, h, d in CONFIG_FIELDS if d is not None and h not in hf]
    rest[ABSENT] += [] if SAT_ONLY_KEY in hf else [SAT_ONLY_KEY]
    if HF_ONLY_KEY not in absent:
        out[HF_ONLY_KEY] = rest
    return out
