"""A stand-in for ChatGLM-6B's ``ice_text.model`` with the real file's id layout, built from documented facts.

The real file cannot be downloaded here, so this writes a sentencepiece model that has its layout piece for
piece where the layout is documented, and the tiny preset uses it, so tests and the demo run the same
tokenizer code path as a user with the released file.

What is documented, and where:

- 130,344 pieces (ChatGLM-6B issue #776): icetk's 130,000 text pieces, then the 8 specials ``[MASK]``
  ``[gMASK]`` ``[sMASK]`` ``<unused_0>`` ``<sop>`` ``<eop>`` ``<ENC>`` ``<dBLOCK>`` (ids 130000..130007),
  ``<|tab|>``, ``<|blank_2|>``..``<|blank_80|>`` and the 256 byte pieces ``<0x00>``..``<0xFF>``; the order of the
  last three groups is the order ChatGLM-6B's first tokenizer appended them in (``SPTokenizer._configure_tokenizer``).
- ids are piece ids, no offset, since ChatGLM-6B's "slim" update; ``config.json``: bos 130004, eos 130005,
  mask 130000, gmask 130001, pad 3.
- published encodes of the slim tokenizer: ``"你好"`` -> ``[5, 74874]`` (+ gMASK, sop), ``"74815"`` ->
  ``[5, 25, 16, 23, 9, 15]``, ``▁Hello`` is 19316.
- VisualGLM's English mode bans ``slice(63823, 130000)`` (``cli_demo.py``): the Chinese pieces lie there.

What is not documented and chosen here (a real file may differ; no porter code depends on it): ids 0..2
(``<unk>``, ``<s>``, ``</s>``), ``<n>`` at id 4, the text pieces other than those above (ASCII, a list of English
words, CJK characters; the rest are fillers from Unicode's private use area that no text contains), piece
scores (each text piece costs the same, so encoding takes the fewest pieces), the specials' piece type
(user-defined: written in text they are one piece, and they decode as written).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .data_paths import SHAPES_DIR

MODEL_FILE = "ice_text.model"
PIECES = 130_344
TEXT_PIECES = 130_000
CHINESE_FROM = 63_823
SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
MAX_BLANK = 80
# Documented ids (see the module docstring); everything else is placed around them.
FIXED = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<n>": 4, "\u2581": 5, "1": 9, "5": 15, "4": 16, "8": 23,
         "7": 25, "\u2581Hello": 19316, "你好": 74874}
WORDS = """the a an of and to in is it that on with as for was are be this by at from or not but have has
had were what which who when where why how all any each few more most other some such no nor only own same so
than too very can will just should now i you he she we they me him her us them my your his its our their image
picture photo shows show there here one two three four five six seven eight nine ten red green blue yellow
purple orange white black grey gray brown pink colour color shape circle square triangle rectangle background
foreground small large big little left right top bottom middle centre center side describe describes
describing hello world porter runs run visualglm npu cuda cpu man woman people person dog cat car street
table sitting standing looking holding water sky tree building room wall window door light dark bright day
night answer question yes please thank thanks good well new old first last long short high low up down out
over under about into through after before again then once do does did doing done make made see seen look
like also may might must would could use used using text word words sentence model train training data""".split()
CJK_PUNCT = "，。！？；：、“”‘’（）《》【】—…·「」『』〈〉〔〕～"
CAPTIONS = SHAPES_DIR / "fewshot"


def _english_pieces() -> list[str]:
    words = list(WORDS)
    for split in ("train", "val"):  # the shipped captions' words, so the demo's text is a few pieces a caption
        for record in json.loads((CAPTIONS / f"{split}.json").read_text(encoding="utf-8")):
            for text in (record["prompt"], record["label"]):
                words += [w.strip(".,!?'\"").lower() for w in text.split() if w.isascii()]
    ascii_chars = [chr(c) for c in range(33, 127)]
    pieces = ascii_chars + ["\u2581" + c for c in ascii_chars if not c.isdigit()]
    for w in dict.fromkeys(w for w in words if w):
        pieces += ["\u2581" + w, "\u2581" + w.capitalize(), w]
    return list(dict.fromkeys(pieces))


def _chinese_pieces() -> list[str]:
    words = []
    for split in ("train", "val"):
        for record in json.loads((CAPTIONS / f"{split}.json").read_text(encoding="utf-8")):
            for text in (record["prompt"], record["label"]):
                run = ""
                for ch in text + " ":  # CJK runs of 2..4 characters become pieces, like icetk's words
                    if "\u4e00" <= ch <= "\u9fff":
                        run += ch
                        continue
                    words += [run[i:i + n] for n in (2, 3, 4) for i in range(len(run) - n + 1)]
                    run = ""
    chars = [chr(c) for c in range(0x4E00, 0xA000)]
    return list(dict.fromkeys(list(CJK_PUNCT) + words + ["问", "答"] + chars))


def _fillers():
    """Pieces no text contains: two characters from Unicode's private use area."""
    for a in range(0xE000, 0xF900):
        for b in range(0xE000, 0xF900):
            yield chr(a) + chr(b)


def layout() -> list[tuple[str, str]]:
    """(piece, type) for every id, type one of normal, unknown, control, user, byte."""
    table: list[tuple[str, str] | None] = [None] * PIECES
    kinds = {"<unk>": "unknown", "<s>": "control", "</s>": "control", "<pad>": "control", "<n>": "user"}
    for piece, pid in FIXED.items():
        table[pid] = (piece, kinds.get(piece, "normal"))
    tail = SPECIALS + ["<|tab|>"] + [f"<|blank_{n}|>" for n in range(2, MAX_BLANK + 1)]
    for offset, piece in enumerate(tail):
        table[TEXT_PIECES + offset] = (piece, "user")
    for byte in range(256):
        table[TEXT_PIECES + len(tail) + byte] = (f"<0x{byte:02X}>", "byte")
    fixed = set(FIXED)
    fillers = _fillers()

    def fill(start: int, stop: int, pieces: list[str]) -> None:
        queue = iter(p for p in pieces if p not in fixed)
        for pid in range(start, stop):
            if table[pid] is None:
                table[pid] = (next(queue, None) or next(fillers), "normal")

    fill(0, CHINESE_FROM, _english_pieces())
    fill(CHINESE_FROM, TEXT_PIECES, _chinese_pieces())
    # the fixed ids, the two fills (0..TEXT_PIECES) and the tail (TEXT_PIECES..PIECES) leave no id empty
    filled = [entry for entry in table if entry is not None]
    assert len(filled) == PIECES, f"{PIECES - len(filled)} ids without a piece"
    return filled


def build(path: Path) -> None:
    """Write the stand-in ``ice_text.model`` to ``path``."""
    from sentencepiece import sentencepiece_model_pb2

    # protobuf's generated module makes its message classes when it runs, so mypy sees none of them
    pb: Any = sentencepiece_model_pb2

    kind = pb.ModelProto.SentencePiece.Type
    types = {"normal": kind.NORMAL, "unknown": kind.UNKNOWN, "control": kind.CONTROL, "user": kind.USER_DEFINED,
             "byte": kind.BYTE}
    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = PIECES
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, 1, 2
    model.trainer_spec.pad_id = 3
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    for pid, (piece, kind_name) in enumerate(layout()):
        # equal cost per text piece (tiny tie-break by id): the fewest pieces win, as in a trained vocabulary
        score = -1.0 - pid * 1e-7 if kind_name == "normal" else 0.0
        model.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=score, type=types[kind_name]))
    path.write_bytes(model.SerializeToString())


def cache_root() -> Path:
    return Path(os.environ.get("PORTER_CACHE", Path.home() / ".cache" / "porter"))


def standin_tokenizer_dir() -> Path:
    """The folder holding the stand-in ``ice_text.model``, built on first use (about a second)."""
    source = Path(__file__).read_bytes() + (CAPTIONS / "train.json").read_bytes() + (CAPTIONS / "val.json").read_bytes()
    folder = cache_root() / "visualglm" / f"chatglm-standin-{hashlib.sha256(source).hexdigest()[:16]}"
    if (folder / MODEL_FILE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        build(Path(tmp))
        os.replace(tmp, folder / MODEL_FILE)  # atomic: a racing process writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return folder


if __name__ == "__main__":  # python -m porter_visualglm.standin_tokenizer DIR
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    build(out / MODEL_FILE)
    print(out / MODEL_FILE)
