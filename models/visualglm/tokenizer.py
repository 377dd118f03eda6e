"""The ChatGLM-6B tokenizer, on sentencepiece alone: no remote code, no transformers version to match.

It reads the folder that holds ``ice_text.model`` (``--chatglm_path``) and produces ChatGLM-6B's ids: a
sentencepiece id plus 20,000 (the ids below belong to image tokens), with the special tokens at
MASK 130000, gMASK 130001, BOS ``<sop>`` 130004, EOS ``<eop>`` 130005, and pad 3. Text is normalised as
ChatGLM-6B does it: a newline becomes ``<n>``, a tab ``<|tab|>``, a run of 2..80 spaces ``<|blank_N|>``,
and decoding turns them back.
"""
from __future__ import annotations

import re
from pathlib import Path

from porter.errors import NotFoundError, PorterError

MODEL_FILE = "ice_text.model"
IMAGE_TOKENS = 20000
MASK, GMASK, SMASK, BOS, EOS, PAD = 130000, 130001, 130002, 130004, 130005, 3
SPECIAL = {"[MASK]": MASK, "[gMASK]": GMASK, "[sMASK]": SMASK, "<sop>": BOS, "<eop>": EOS}
VOCAB_SIZE = 130528
MAX_BLANK = 80
NEWLINE, TAB = "<n>", "<|tab|>"
_SPACES = re.compile(r" {2,%d}" % MAX_BLANK)
_BLANK = re.compile(r"<\|blank_(\d+)\|>")


def blank_piece(n: int) -> str:
    return f"<|blank_{n}|>"


def normalise(text: str) -> str:
    """ChatGLM-6B's pre-processing: newlines, tabs and runs of spaces become their own pieces."""
    text = text.replace("\n", NEWLINE).replace("\t", TAB)
    return _SPACES.sub(lambda m: blank_piece(len(m.group(0))), text)


def denormalise(text: str) -> str:
    text = text.replace(NEWLINE, "\n").replace(TAB, "\t")
    return _BLANK.sub(lambda m: " " * int(m.group(1)), text)


class ChatGLMTokenizer:
    """Encode and decode text with ChatGLM-6B's ids."""

    def __init__(self, folder: str | Path):
        import sentencepiece

        self.folder = Path(folder)
        path = self.folder / MODEL_FILE
        if not path.is_file():
            raise NotFoundError(f"{path}: no {MODEL_FILE} here",
                                hint="--chatglm_path is the folder that holds ChatGLM-6B's ice_text.model "
                                     "(e.g. the THUDM/chatglm-6b download)")
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except Exception as exc:  # sentencepiece raises OSError/RuntimeError with its own text
            raise PorterError(f"{path}: not a sentencepiece model ({exc})") from None
        for piece, wanted in SPECIAL.items():
            pid = self.sp.PieceToId(piece)
            # A full ChatGLM-6B model carries the specials as pieces; they must land on ChatGLM's ids.
            if pid != self.sp.unk_id() and pid + IMAGE_TOKENS != wanted:
                raise PorterError(f"{path}: piece {piece} has id {pid + IMAGE_TOKENS}, ChatGLM-6B uses {wanted}",
                                  hint="this is not ChatGLM-6B's ice_text.model")
        self._special_by_id = {v: k for k, v in SPECIAL.items()}

    # -- ids ------------------------------------------------------------------------------------------
    vocab_size = VOCAB_SIZE
    pad_token_id, bos_token_id, eos_token_id, mask_token_id, gmask_token_id = PAD, BOS, EOS, MASK, GMASK

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        if not text:
            return []
        return [i + IMAGE_TOKENS for i in self.sp.EncodeAsIds(normalise(text))]

    def decode(self, ids) -> str:
        """Text of ``ids``; image-token ids (pad included) are dropped, special tokens are written out."""
        pieces, text_ids = [], []

        def flush():
            if text_ids:
                pieces.append(self.sp.DecodeIds(text_ids))
                text_ids.clear()

        for i in (int(x) for x in ids):
            if i in self._special_by_id:
                flush()
                pieces.append(self._special_by_id[i])
            elif IMAGE_TOKENS <= i < IMAGE_TOKENS + self.sp.GetPieceSize():
                text_ids.append(i - IMAGE_TOKENS)
        flush()
        return denormalise("".join(pieces))

    def sampleable(self, vocab_size: int) -> "torch.Tensor":
        """A bool mask over the model's vocabulary: the ids this tokenizer can decode as text, and <eop>."""
        import torch

        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[IMAGE_TOKENS: min(vocab_size, IMAGE_TOKENS + self.sp.GetPieceSize())] = True
        for special in SPECIAL.values():
            mask[special] = False
        mask[EOS] = True
        return mask

    def prompt_ids(self, text: str) -> list[int]:
        """A generation prompt as ChatGLM-6B builds it: the text, then [gMASK] <sop>."""
        return self.encode(text) + [GMASK, BOS]
