"""What the released VisualGLM-6B checkpoint holds, written down from documented facts, and a tiny folder laid out
the same way, so porter's loader is tested against the release's layout and not only against what porter saved.

Sources (read from THUDM/VisualGLM-6B, THUDM/SwissArmyTransformer and ChatGLM-6B's tokenizer code):
- the folder: ``latest`` ("1"), ``model_config.json`` (SAT's saved arguments), ``1/mp_rank_00_model_states.pt``
  holding ``{"module": state_dict, ...}`` in fp16 (upstream runs it in fp16);
- the architecture and sizes: THUDM/VisualGLM-6B ``model/visualglm.py`` and ``model/blip2.py`` on SAT's
  ``ChatGLMModel``, ``ViTModel`` and ``BaseModel``; SAT's parameter naming (``transformer.layers.N...``,
  ``mixins.<name>...``);
- saved with SAT 0.3.6, whose ChatGLM still had ``transformer.position_embeddings.weight``
  (max_sequence_length x hidden), and SAT's rotary ``inv_freq`` buffer, which SAT saves and never loads.

:func:`release_keys` derives every key and shape from a ``model_config.json`` by SAT's naming rules, without
porter's model code; ``data/release/visualglm-6b-keys.json`` is its output for the 6B release's config
(``python -m porter_visualglm.release`` rewrites it, and a test keeps the two in step).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from .data_paths import PACKAGE_DIR

RELEASE_DIR = PACKAGE_DIR / "data" / "release"
RELEASE_CONFIG = RELEASE_DIR / "model_config.json"  # the 6B release's model_config.json fields and values
RELEASE_KEYS = RELEASE_DIR / "visualglm-6b-keys.json"
STALE_KEY = "transformer.position_embeddings.weight"
INV_FREQ = "mixins.chatglm-attn.rotary_emb.inv_freq"

# The tiny release-layout fixture: the release's fields and structure (post-LN Q-Former with cross-attention
# every second layer, EVA at 224 px, ChatGLM's vocabulary), small widths.
TINY_SIZES = {
    "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "inner_hidden_size": 128,
    "eva_args": {"num_layers": 2, "hidden_size": 48, "num_attention_heads": 4, "inner_hidden_size": 96},
    "qformer_args": {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "is_decoder": [True, False],
                     "cross_attn_hidden_size": 48},
}


def release_config() -> dict:
    return json.loads(RELEASE_CONFIG.read_text())


def tiny_release_config() -> dict:
    config = release_config()
    for key, value in TINY_SIZES.items():
        if isinstance(value, dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def _layer(prefix: str, hidden: int, inner: int, *, cross_from: int | None = None) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}  # shapes: 2 dims for a weight, 1 for a bias or a norm

    def linear(name, out, inp):
        keys[f"{prefix}.{name}.weight"] = (out, inp)
        keys[f"{prefix}.{name}.bias"] = (out,)

    def norm(name, width):
        keys[f"{prefix}.{name}.weight"] = (width,)
        keys[f"{prefix}.{name}.bias"] = (width,)

    norm("input_layernorm", hidden)
    linear("attention.query_key_value", 3 * hidden, hidden)
    linear("attention.dense", hidden, hidden)
    norm("post_attention_layernorm", hidden)
    if cross_from is not None:
        linear("cross_attention.query", hidden, hidden)
        linear("cross_attention.key_value", 2 * hidden, cross_from)
        linear("cross_attention.dense", hidden, hidden)
        norm("post_cross_attention_layernorm", hidden)
    linear("mlp.dense_h_to_4h", inner, hidden)
    linear("mlp.dense_4h_to_h", hidden, inner)
    return keys


def release_keys(config: dict, *, stale: bool = True) -> dict[str, tuple]:
    """Every key of a VisualGLM SAT checkpoint and its shape, from ``model_config.json``'s values."""
    h, vocab = config["hidden_size"], config["vocab_size"]
    keys: dict[str, tuple] = {"transformer.word_embeddings.weight": (vocab, h)}
    if stale:
        keys[STALE_KEY] = (config["max_sequence_length"], h)
    for i in range(config["num_layers"]):
        keys.update(_layer(f"transformer.layers.{i}", h, config["inner_hidden_size"]))
    keys["transformer.final_layernorm.weight"] = keys["transformer.final_layernorm.bias"] = (h,)
    keys[INV_FREQ] = (h // config["num_attention_heads"] // 4,)  # rotary over half a head, one per 2 dims
    keys["mixins.chatglm-final.lm_head.weight"] = (vocab, h)

    eva, vit = config["eva_args"], "mixins.eva.model.vit"
    hv, patch, size = eva["hidden_size"], eva["patch_size"], eva["image_size"][0]
    keys[f"{vit}.transformer.word_embeddings.weight"] = (1, hv)  # the CLS token
    keys[f"{vit}.transformer.position_embeddings.weight"] = (1 + (size // patch) ** 2, hv)
    keys[f"{vit}.mixins.patch_embedding.proj.weight"] = (hv, eva["in_channels"], patch, patch)
    keys[f"{vit}.mixins.patch_embedding.proj.bias"] = (hv,)
    for i in range(eva["num_layers"]):
        keys.update(_layer(f"{vit}.transformer.layers.{i}", hv, eva["inner_hidden_size"]))
    keys[f"{vit}.mixins.cls.ln_vision.weight"] = keys[f"{vit}.mixins.cls.ln_vision.bias"] = (hv,)

    qf, qformer = config["qformer_args"], "mixins.eva.model.qformer"
    hq = qf["hidden_size"]
    keys[f"{qformer}.transformer.word_embeddings.weight"] = (qf["vocab_size"], hq)  # the learnt queries
    for i, cross in enumerate(qf["is_decoder"]):
        keys.update(_layer(f"{qformer}.transformer.layers.{i}", hq, 4 * hq,
                           cross_from=qf["cross_attn_hidden_size"] if cross else None))
    keys[f"{qformer}.transformer.final_layernorm.weight"] = keys[f"{qformer}.transformer.final_layernorm.bias"] = (hq,)
    keys["mixins.eva.model.glm_proj.weight"] = (h, hq)
    keys["mixins.eva.model.glm_proj.bias"] = (h,)
    return keys


def make_release_folder(folder: Path, config: dict | None = None, *, seed: int = 0, stale: bool = True,
                        inv_freq: bool = True, dtype: str = "fp16", weights: dict | None = None) -> Path:
    """A checkpoint folder in the release's layout with random weights (or ``weights``), saved as SAT saves."""
    import torch

    config = copy.deepcopy(config or tiny_release_config())
    folder = Path(folder)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "latest").write_text("1")
    (folder / "model_config.json").write_text(json.dumps(config, indent=4, ensure_ascii=False))
    if weights is None:
        gen = torch.Generator().manual_seed(seed)
        weights = {}
        for name, shape in release_keys(config).items():
            if name.endswith("norm.weight") or name.endswith("ln_vision.weight"):
                weights[name] = 1 + 0.02 * torch.randn(shape, generator=gen)
            else:
                weights[name] = 0.05 * torch.randn(shape, generator=gen)
        head = config["hidden_size"] // config["num_attention_heads"] // 2
        weights[INV_FREQ] = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
        from .checkpoint import DTYPES

        weights = {n: t.to(DTYPES[dtype]) for n, t in weights.items()}
    weights = {n: t for n, t in weights.items() if (stale or n != STALE_KEY) and (inv_freq or n != INV_FREQ)}
    torch.save({"module": weights, "iteration": 1}, folder / "1" / "mp_rank_00_model_states.pt")
    return folder


def write_keys(path: Path = RELEASE_KEYS) -> None:
    keys = release_keys(release_config())
    path.write_text(json.dumps({name: list(shape) for name, shape in keys.items()}, indent=1) + "\n")


if __name__ == "__main__":
    write_keys()
    print(RELEASE_KEYS)
