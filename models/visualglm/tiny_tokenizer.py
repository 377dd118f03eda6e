"""A small ChatGLM-style tokenizer for the `tiny` preset, trained on the shipped captions.

It has the layout of a ChatGLM-6B tokenizer folder (one ``ice_text.model``), so the same
:class:`~porter_visualglm.tokenizer.ChatGLMTokenizer` code reads it. Its pieces are few, but byte fallback
means any text round-trips. It is built on first use into a cache folder named by a hash of its inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .data_paths import SHAPES_DIR
from .tokenizer import MAX_BLANK, MODEL_FILE, NEWLINE, TAB, blank_piece

EXTRA_TEXT = [  # beyond the captions: the prompt template and everyday words the demo and tests use
    "<img></img>问：图片里有什么？\n答：", "What's in the image?", "Describe the image.", "这张图片的背景是什么颜色？",
    "Hello, world! porter runs VisualGLM on NPU, CUDA and CPU.", "你好，世界！",
]
VOCAB = 600


def cache_root() -> Path:
    return Path(os.environ.get("PORTER_CACHE", Path.home() / ".cache" / "porter"))


def corpus() -> list[str]:
    lines = list(EXTRA_TEXT)
    for split in ("train", "val"):
        for record in json.loads((SHAPES_DIR / "fewshot" / f"{split}.json").read_text(encoding="utf-8")):
            lines += [record["prompt"], record["label"]]
    return lines


def tiny_tokenizer_dir() -> Path:
    """The folder holding the tiny ``ice_text.model``, built if it is not there yet."""
    lines = corpus()
    key = hashlib.sha256(json.dumps([VOCAB, lines], ensure_ascii=False).encode()).hexdigest()[:16]
    folder = cache_root() / "visualglm" / f"tiny-tokenizer-{key}"
    if (folder / MODEL_FILE).exists():
        return folder
    import sentencepiece as spm

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tiny-tokenizer-", dir=folder.parent))
    try:
        text = work / "corpus.txt"
        # the corpus in ChatGLM's normalised form, so <n>, <|tab|> and blanks are learnt as pieces
        text.write_text("\n".join(line.replace("\n", NEWLINE) for line in lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.Train(
            input=str(text), model_prefix=str(work / "ice_text"), vocab_size=VOCAB, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, hard_vocab_limit=False, num_threads=1,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
            user_defined_symbols=[NEWLINE, TAB] + [blank_piece(n) for n in range(2, MAX_BLANK + 1)],
            minloglevel=2)
        (work / "ice_text.vocab").unlink()
        (work / "corpus.txt").unlink()
        try:
            work.rename(folder)  # atomic: another process may have won the race, which is fine
        except OSError:
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder
