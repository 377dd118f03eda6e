"""Stand-ins for what upstream VisualGLM-6B downloads on first use, written locally from documented facts:

- ``$SAT_HOME/visualglm-6b``: the checkpoint ``VisualGLMModel.from_pretrained('visualglm-6b', args)`` reads
  (upstream ``model/infer_util.py``). SAT's ``auto_create`` (``sat/resources/download.py``, SAT 0.4.12) returns
  ``$SAT_HOME/<name>`` without downloading when that folder exists and the name's URL is an ``r2://....zip``, which
  upstream's ``model/visualglm.py`` registers (``MODEL_URLS['visualglm-6b'] = 'r2://visualglm-6b.zip'``). Inside, the
  release's layout (``porter_visualglm.release``): ``latest``, ``model_config.json``, ``1/mp_rank_00_model_states.pt``.
- the ``THUDM/chatglm-6b`` tokenizer ``AutoTokenizer.from_pretrained("THUDM/chatglm-6b", trust_remote_code=True)``
  loads: a Hugging Face hub cache (``huggingface_hub``'s layout: ``models--THUDM--chatglm-6b/{blobs,refs/main,
  snapshots/<revision>}``) whose snapshot holds ``config.json``, ``tokenizer_config.json`` (``auto_map`` ->
  ``tokenization_chatglm.ChatGLMTokenizer``), that module (``chatglm_standin_tokenizer.py`` beside this file) and
  the stand-in ``ice_text.model``; read with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

HERE = Path(__file__).parent
UPSTREAM_ENV = "PORTER_VISUALGLM_UPSTREAM"
UPSTREAM_REPO = "THUDM/VisualGLM-6B"
UPSTREAM_COMMIT = "e314fb9c4e778851414f39784317c72765acec47"
MODEL_NAME = "visualglm-6b"  # the name upstream's get_infer_setting passes to from_pretrained
TOKENIZER_REPO = "THUDM/chatglm-6b"
# Not THUDM/chatglm-6b's real revision: any 40-hex commit id that refs/main names does.
TOKENIZER_REVISION = hashlib.sha1(b"porter stand-in for THUDM/chatglm-6b").hexdigest()


def standin_config() -> dict:
    """The release's model_config.json at small sizes, except the widths upstream's code fixes: ``model/blip2.py``
    builds ``glm_proj = nn.Linear(768, 4096)``, so the Q-Former is 768 wide and ChatGLM 4096; ``model/chat.py``
    sizes images for 224 px (``BlipImageEvalProcessor(224)``), the release's ``eva_args.image_size``; the Q-Former
    reads 32 queries (``torch.arange(32)``), the release's ``qformer_args.vocab_size`` and ``image_length``. The
    vocabulary stays ChatGLM's (130,528 rows): the tokenizer's ids reach 130005."""
    from porter_visualglm.release import tiny_release_config

    config = copy.deepcopy(tiny_release_config())
    config.update(num_layers=1, hidden_size=4096, num_attention_heads=32, inner_hidden_size=256)
    config["qformer_args"].update(hidden_size=768, num_attention_heads=12, num_layers=2, is_decoder=[True, False],
                                  cross_attn_hidden_size=config["eva_args"]["hidden_size"])
    return config


def _weights(config: dict, seed: int) -> dict:
    """Random fp16 weights for every key of the release (``porter_visualglm.release.release_keys``). ChatGLM's two
    130,528 x 4096 matrices are overlapping windows of one random vector (row i = v[i:i+4096], distinct rows):
    ``torch.save`` keeps the view, so the file holds 135k numbers instead of 1.07e9, and loading copies the view
    into the model's own full-size parameters."""
    import torch
    from porter_visualglm.release import INV_FREQ, release_keys

    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in release_keys(config).items():
        rows, cols = (shape + (0,))[:2]
        if len(shape) == 2 and rows * cols > 50_000_000:
            flat = 0.05 * torch.randn(rows + cols, generator=gen)
            weights[name] = flat.half().as_strided((rows, cols), (1, 1))
        elif name.endswith("norm.weight") or name.endswith("ln_vision.weight"):
            weights[name] = (1 + 0.02 * torch.randn(shape, generator=gen)).half()
        else:
            weights[name] = (0.05 * torch.randn(shape, generator=gen)).half()
    head = config["hidden_size"] // config["num_attention_heads"] // 2
    weights[INV_FREQ] = (1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))).half()
    return weights


def write_sat_home(sat_home: Path, *, seed: int = 0) -> Path:
    """``sat_home/visualglm-6b`` in the release's layout; returns ``sat_home``."""
    from porter_visualglm.release import make_release_folder

    config = standin_config()
    make_release_folder(Path(sat_home) / MODEL_NAME, config, weights=_weights(config, seed))
    return Path(sat_home)


def _tokenizer_files() -> dict[str, bytes]:
    from porter_visualglm import tokenizer as glm
    from porter_visualglm.standin_tokenizer import standin_tokenizer_dir

    # The ids are porter_visualglm.tokenizer's (ChatGLM-6B's config.json: bos 130004, eos 130005, mask 130000,
    # gmask 130001, pad 3).
    config = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "vocab_size": glm.VOCAB_SIZE,
              "bos_token_id": glm.BOS, "eos_token_id": glm.EOS, "mask_token_id": glm.MASK,
              "gmask_token_id": glm.GMASK, "pad_token_id": glm.PAD, "hidden_size": 4096}
    tokenizer_config = {"name_or_path": TOKENIZER_REPO, "tokenizer_class": "ChatGLMTokenizer",
                        "bos_token": "<sop>", "eos_token": "<eop>", "mask_token": "[MASK]", "pad_token": "<pad>",
                        "unk_token": "<unk>", "padding_side": "left",
                        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode(),
        "tokenization_chatglm.py": (HERE / "chatglm_standin_tokenizer.py").read_bytes(),
        glm.MODEL_FILE: (standin_tokenizer_dir() / glm.MODEL_FILE).read_bytes(),
    }


def write_hf_home(hf_home: Path) -> dict[str, str]:
    """A Hugging Face home whose hub cache holds the stand-in ``THUDM/chatglm-6b``; returns the environment that
    makes transformers read it, offline (the dynamic module is copied under ``hf_home/modules``)."""
    hf_home = Path(hf_home)
    repo = hf_home / "hub" / ("models--" + TOKENIZER_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / TOKENIZER_REVISION
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(TOKENIZER_REVISION)
    for name, data in _tokenizer_files().items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
