"""How good the answers are: caption metrics from pycocoevalcap's scorers (BLEU-4, ROUGE-L, CIDEr), and, on the
shipped shapes set, how often the colour and the shape are named right.

pycocoevalcap tokenises with Stanford's PTB tokenizer, which needs Java. porter does what that step does to
COCO captions (lower case, punctuation dropped, split on spaces) in Python, so scores do not depend on a JVM
being installed, and it splits Chinese into characters, which the PTB tokenizer leaves whole.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
# the PTB tokenizer's punctuation that COCO's evaluation removes, and the full-width forms VisualGLM writes
_PUNCTUATION = re.compile(r"[.?!,:;\-\"'`()\[\]{}…。？！，：；、“”‘’（）《》]+")
_CJK = re.compile(r"([\u3400-\u9fff])")


def caption_tokens(text: str) -> str:
    """``text`` as the scorers want it: lower-case words and Chinese characters separated by single spaces."""
    text = _PUNCTUATION.sub(" ", text.lower())
    return " ".join(_CJK.sub(r" \1 ", text).split())


@dataclass
class Answer:
    """One question about one image: the references and the model's answer."""
    image: str
    prompt: str
    references: list[str]
    answer: str

    def named(self, table: dict) -> tuple[set, set]:
        def found(text):
            return {k for k, zh in table.items() if k in text or zh in text}
        wanted = set().union(*(found(r) for r in self.references)) if self.references else set()
        return wanted, found(self.answer)

    @property
    def colour_right(self) -> bool:
        want, got = self.named(COLOURS)
        return bool(want) and got == want

    @property
    def shape_right(self) -> bool:
        want, got = self.named(SHAPES)
        return bool(want) and got == want


def caption_scores(answers: list[Answer]) -> dict:
    """BLEU-1..4, ROUGE-L and CIDEr over ``answers`` (pycocoevalcap's scorers; corpus-level, as COCO reports)."""
    # pycocoevalcap ships no type stubs
    from pycocoevalcap.bleu.bleu import Bleu  # type: ignore[import-untyped]
    from pycocoevalcap.cider.cider import Cider  # type: ignore[import-untyped]
    from pycocoevalcap.rouge.rouge import Rouge  # type: ignore[import-untyped]

    if not answers:
        return {}
    refs = {i: [caption_tokens(r) for r in a.references] for i, a in enumerate(answers)}
    hyps = {i: [caption_tokens(a.answer)] for i, a in enumerate(answers)}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its counts
        bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
        rouge, _ = Rouge().compute_score(refs, hyps)
        cider, _ = Cider().compute_score(refs, hyps)
    return {"BLEU-1": bleu[0], "BLEU-4": bleu[3], "ROUGE-L": float(rouge), "CIDEr": float(cider)}


def shape_scores(answers: list[Answer]) -> dict:
    """Colour and shape accuracy over the answers whose references name one (the shapes set's captions)."""
    judged = [a for a in answers if a.named(COLOURS)[0] and a.named(SHAPES)[0]]
    if not judged:
        return {}
    n = len(judged)
    return {"answers": n, "colour": sum(a.colour_right for a in judged) / n,
            "shape": sum(a.shape_right for a in judged) / n,
            "colour_or_shape": sum(a.colour_right or a.shape_right for a in judged) / n,
            "both": sum(a.colour_right and a.shape_right for a in judged) / n}
