"""Tiny checkpoints in the layouts users bring, written from documented names, not by porter's converter.

The converter is tested against these; were they written by the converter, a wrong mapping would agree with itself.

- **Hugging Face** (THUDM/visualglm-6b and THUDM/chatglm-6b): ``config.json`` whose ``auto_map`` names the remote
  code's classes, weights in shards with ``model.safetensors.index.json`` (or ``pytorch_model-0000K-of-0000N.bin``
  with ``pytorch_model.bin.index.json``). Names from the HF model's module tree (``ChatGLMForConditionalGeneration``:
  ``transformer.{word_embeddings, layers.N.{input_layernorm, attention.{rotary_emb, query_key_value, dense},
  post_attention_layernorm, mlp.{dense_h_to_4h, dense_4h_to_h}}, final_layernorm}``, ``lm_head``; the image
  model's ``image_encoder`` is BLIP-2 built from SAT's own classes, so its inner names are SAT's); each layer stores
  its rotary ``inv_freq`` in fp16. Sources and what is not verified: ``docs/checkpoint-layouts.md`` sections 1, 2, 5.
- **query_key_value rows**: HF keeps each head's q, k and v together (row ``h*3d + p*d + i``); the generator lays
  them out from a per-(head, part) table itself, so a test can build rows it can tell apart.
- **Model-parallel SAT** folders and **LoRA** fine-tunes come from SAT itself in the tests (SAT's partition
  arithmetic; porter's training), not from here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .release import release_keys, tiny_release_config

HF_AUTO_MAP = {  # the remote code's classes, as the released config.json names them
    "visualglm": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                  "AutoModel": "modeling_chatglm.ChatGLMForConditionalGenerationWithImage",
                  "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGenerationWithImage"},
    "chatglm": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
}


def hf_config(sat_config: dict | None = None, *, text_only: bool = False) -> dict:
    """A ``config.json`` as the HF repositories write it, with the sizes of a SAT ``model_config.json``."""
    c = sat_config or tiny_release_config()
    out = {
        "_name_or_path": "THUDM/chatglm-6b" if text_only else "THUDM/visualglm-6b",
        "architectures": ["ChatGLMModel"],  # as the released config.json files say
        "auto_map": HF_AUTO_MAP["chatglm" if text_only else "visualglm"],
        "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000, "gmask_token_id": 130001,
        "pad_token_id": 3, "hidden_size": c["hidden_size"], "inner_hidden_size": c["inner_hidden_size"],
        "layernorm_epsilon": 1e-05, "max_sequence_length": c["max_sequence_length"], "model_type": "chatglm",
        "num_attention_heads": c["num_attention_heads"], "num_layers": c["num_layers"],
        "position_encoding_2d": True, "torch_dtype": "float16", "transformers_version": "4.27.1",
        "use_cache": True, "vocab_size": c["vocab_size"], "quantization_bit": 0, "pre_seq_len": None,
        "prefix_projection": False,
    }
    if not text_only:
        out.update({"image_length": c.get("image_length", 32), "eva_config": dict(c["eva_args"]),
                    "qformer_config": dict(c["qformer_args"])})
    return out


def hf_inv_freq(hidden: int, heads: int):
    """HF ChatGLM's rotary table: 2-D rotary over half of each head's dims, one frequency per two dims, in fp16."""
    import torch

    dim = hidden // (heads * 2)
    return (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half()


def hf_keys(config: dict, *, text_only: bool = False) -> dict[str, tuple]:
    """Every key of an HF checkpoint for ``config`` (HF config.json fields) and its shape."""
    h, heads, inner, vocab = (config["hidden_size"], config["num_attention_heads"], config["inner_hidden_size"],
                              config["vocab_size"])
    keys: dict[str, tuple] = {"transformer.word_embeddings.weight": (vocab, h)}
    for n in range(config["num_layers"]):
        p = f"transformer.layers.{n}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            keys[f"{p}.{norm}.weight"] = keys[f"{p}.{norm}.bias"] = (h,)
        keys[f"{p}.attention.rotary_emb.inv_freq"] = (h // (heads * 2) // 2,)
        for name, out, inp in (("attention.query_key_value", 3 * h, h), ("attention.dense", h, h),
                               ("mlp.dense_h_to_4h", inner, h), ("mlp.dense_4h_to_h", h, inner)):
            keys[f"{p}.{name}.weight"], keys[f"{p}.{name}.bias"] = (out, inp), (out,)
    keys["transformer.final_layernorm.weight"] = keys["transformer.final_layernorm.bias"] = (h,)
    keys["lm_head.weight"] = (vocab, h)
    if not text_only:  # HF's visual.py builds SAT's ViT and Q-Former: SAT's inner names under image_encoder.
        sat = {**config, "eva_args": config["eva_config"], "qformer_args": config["qformer_config"]}
        for name, shape in release_keys(sat, stale=False).items():
            if name.startswith("mixins.eva.model."):
                keys["image_encoder." + name.removeprefix("mixins.eva.model.")] = shape
    return keys


def per_head_qkv(q, k, v, heads: int):
    """HF's query_key_value rows from separate q, k, v ([heads*d, ...] each): head by head, q then k then v."""
    import torch

    d = q.shape[0] // heads
    parts = [t.reshape(heads, d, *t.shape[1:]) for t in (q, k, v)]
    return torch.stack(parts, dim=1).reshape(3 * heads * d, *q.shape[1:])


def random_hf_weights(config: dict, *, text_only: bool = False, seed: int = 0, dtype: str = "fp16") -> dict:
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in hf_keys(config, text_only=text_only).items():
        if name.endswith("inv_freq"):
            out[name] = hf_inv_freq(config["hidden_size"], config["num_attention_heads"])
            continue
        scale = 0.02 if name.endswith(("norm.weight", "ln_vision.weight")) else 0.05
        base = 1.0 if name.endswith(("norm.weight", "ln_vision.weight")) else 0.0
        out[name] = (base + scale * torch.randn(shape, generator=gen)).to(torch_dtype)
    return out


def make_hf_folder(folder: Path, config: dict | None = None, *, weights: dict | None = None, shards: int = 2,
                   fmt: str = "safetensors", text_only: bool = False, seed: int = 0, dtype: str = "fp16") -> Path:
    """An HF checkpoint folder: config.json, the weights in ``shards`` files (``fmt`` safetensors or bin) and the
    index naming each tensor's file, as ``save_pretrained`` lays them out (names ``model-0000K-of-0000N.safetensors``
    or ``pytorch_model-0000K-of-0000N.bin``; one file and no index when ``shards`` is 1)."""
    import torch

    config = config or hf_config(text_only=text_only)
    weights = weights if weights is not None else random_hf_weights(config, text_only=text_only, seed=seed,
                                                                      dtype=dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    names = list(weights)
    per = math.ceil(len(names) / shards)
    stem, suffix = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map, total = {}, 0
    for k in range(shards):
        part = {n: weights[n].contiguous() for n in names[k * per:(k + 1) * per]}
        file = f"{stem}.{suffix}" if shards == 1 else f"{stem}-{k + 1:05d}-of-{shards:05d}.{suffix}"
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(part, str(folder / file), metadata={"format": "pt"})
        else:
            torch.save(part, folder / file)
        weight_map.update({n: file for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    if shards > 1:
        index = f"{stem}.{suffix}.index.json"
        (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                               indent=2) + "\n")
    return folder
