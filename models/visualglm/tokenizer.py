"""The ChatGLM-6B tokenizer, on sentencepiece alone: no remote code, no transformers version to match.

It reads the folder that holds ``ice_text.model`` (``--chatglm_path``) and produces the ids of ChatGLM-6B's
current tokenizer, the one VisualGLM-6B was trained with: sentencepiece piece ids as they are (no offset;
the offset of 20,000 image tokens went with ChatGLM-6B's "slim" update). The specials are pieces of the file:
``[MASK]`` 130000, ``[gMASK]`` 130001, ``<sop>`` (BOS) 130004, ``<eop>`` (EOS) 130005; pad is ``<pad>``, 3.

The rules, as ChatGLM-6B's ``tokenization_chatglm.py`` applies them:
- encode: a newline becomes ``<n>``, a tab ``<|tab|>``, a run of 2..80 spaces ``<|blank_N|>`` (longest
  first), then sentencepiece (which adds its dummy-prefix ``▁``); specials written in the text are one piece;
- decode: pad ids are dropped, the rest become pieces decoded in one call (so a ``▁`` after a special or
  ``<n>`` stays a space), the replacements are undone, then transformers' clean-up of spaces before
  punctuation (``" ."`` -> ``"."``, ``" n't"`` -> ``"n't"`` ...).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from porter.errors import InputError

if TYPE_CHECKING:
    import torch

MODEL_FILE = "ice_text.model"
MASK, GMASK, SMASK, BOS, EOS, PAD = 130000, 130001, 130002, 130004, 130005, 3
SPECIAL = {"[MASK]": MASK, "[gMASK]": GMASK, "[sMASK]": SMASK, "<sop>": BOS, "<eop>": EOS}
VOCAB_SIZE = 130528  # the model's embedding rows; the file has 130,344 pieces, the rest is padding
PIECES = 130344
ENGLISH_BAN = slice(63823, 130000)  # cli_demo.py's invalid_slices in English mode: the Chinese pieces
MAX_BLANK = 80
NEWLINE, TAB = "<n>", "<|tab|>"
_SPACES = re.compile(rf" {{2,{MAX_BLANK}}}")
_BLANK = re.compile(r"<\|blank_(\d+)\|>")
# transformers' PreTrainedTokenizer.clean_up_tokenization, which ChatGLM-6B's decode goes through
_CLEAN_UP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


class TokenizerError(InputError):
    pass


def blank_piece(n: int) -> str:
    return f"<|blank_{n}|>"


def normalise(text: str) -> str:
    """ChatGLM-6B's pre-processing: newlines, tabs and runs of spaces become their own pieces."""
    text = text.replace("\n", NEWLINE).replace("\t", TAB)
    # a regex of 2..80 greedy matches splits a longer run as replacing 80, 79, ... 2 in turn does
    return _SPACES.sub(lambda m: blank_piece(len(m.group(0))), text)


def denormalise(text: str) -> str:
    text = text.replace(NEWLINE, "\n").replace(TAB, "\t")
    return _BLANK.sub(lambda m: " " * int(m.group(1)) if 2 <= int(m.group(1)) <= MAX_BLANK else m.group(0), text)


def clean_up_spaces(text: str) -> str:
    for before, after in _CLEAN_UP:
        text = text.replace(before, after)
    return text


def check_layout(sp, path: Path) -> None:
    """Refuse a model whose ids are not ChatGLM-6B's current ones, saying which layout it has."""
    if sp.PieceToId("[gMASK]") == sp.unk_id():
        raise TokenizerError(
            f"{path}: no [gMASK] piece: this is the first ChatGLM-6B release's ice_text.model (ids offset by 20,000 "
            f"image tokens, vocabulary 150,528), not the one VisualGLM-6B uses (130,528)",
            hint="download the current THUDM/chatglm-6b tokenizer (ice_text.model of 130,344 pieces)")
    for piece, wanted in SPECIAL.items():
        if sp.PieceToId(piece) != wanted:
            raise TokenizerError(f"{path}: piece {piece} has id {sp.PieceToId(piece)}, ChatGLM-6B uses {wanted}",
                                 hint="this is not ChatGLM-6B's ice_text.model")
    if sp.IdToPiece(PAD) != "<pad>":
        raise TokenizerError(f"{path}: id {PAD} is {sp.IdToPiece(PAD)!r}, ChatGLM-6B's pad is '<pad>'")
    if not sp.GetPieceSize() <= VOCAB_SIZE:
        raise TokenizerError(f"{path}: {sp.GetPieceSize():,} pieces, more than VisualGLM's {VOCAB_SIZE:,} embeddings")


def load_sentencepiece(folder: str | Path):
    import sentencepiece

    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise TokenizerError(f"{path}: no {MODEL_FILE} here",
                             hint="--chatglm_path is the folder that holds ChatGLM-6B's ice_text.model "
                                  "(e.g. the THUDM/chatglm-6b download)")
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except Exception as exc:  # sentencepiece raises OSError/RuntimeError with its own text
        raise TokenizerError(f"{path}: not a sentencepiece model ({exc})") from None
    return sp, path


class ChatGLMTokenizer:
    """Encode and decode text with ChatGLM-6B's ids."""

    vocab_size = VOCAB_SIZE
    pad_token_id, bos_token_id, eos_token_id, mask_token_id, gmask_token_id = PAD, BOS, EOS, MASK, GMASK

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.sp, path = load_sentencepiece(folder)
        check_layout(self.sp, path)
        self.pieces = self.sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return list(self.sp.EncodeAsIds(normalise(text))) if text else []

    def decode(self, ids) -> str:
        """Text of ``ids``: pad dropped, everything else (specials too) written out."""
        pieces = [self.sp.IdToPiece(i) for i in (int(x) for x in ids) if i != PAD and 0 <= i < self.pieces]
        return clean_up_spaces(denormalise(self.sp.DecodePieces(pieces)))

    def build_inputs(self, ids: list[int], answer: list[int] | None = None) -> list[int]:
        """``build_inputs_with_special_tokens``: ids [gMASK] <sop>, then answer <eop> when there is one."""
        out = list(ids) + [GMASK, BOS]
        return out + list(answer) + [EOS] if answer is not None else out

    def sampleable(self, vocab_size: int) -> torch.Tensor:
        """A bool mask over the model's vocabulary: ids that are pieces of the file, specials but <eop> excluded.

        The embedding rows past the file are padding a trained model never picks; a random or barely trained one
        could, and they decode to nothing.
        """
        import torch

        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[: min(vocab_size, self.pieces)] = True
        for special in (*SPECIAL.values(), 130003, 130006, 130007):
            if special < vocab_size:
                mask[special] = False
        mask[EOS] = True
        mask[PAD] = False
        return mask

    def prompt_ids(self, text: str) -> list[int]:
        """A generation prompt as ChatGLM-6B builds it: the text, then [gMASK] <sop>."""
        return self.build_inputs(self.encode(text))
