"""Held-out answers beside the expected captions, and how often the colour and the shape are right.

Scores apply to the shipped shapes data set, whose captions name one colour and one shape.
"""
from __future__ import annotations

from dataclasses import dataclass

from .data_paths import SHAPES_DIR

COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}


@dataclass
class Row:
    image: str
    prompt: str
    expected: str
    answer: str

    def named(self, table: dict) -> tuple[set, set]:
        def found(text):
            return {k for k, zh in table.items() if k in text or zh in text}
        return found(self.expected), found(self.answer)

    @property
    def colour_right(self) -> bool:
        want, got = self.named(COLOURS)
        return bool(want) and got == want

    @property
    def shape_right(self) -> bool:
        want, got = self.named(SHAPES)
        return bool(want) and got == want


def held_out(split: str = "val"):
    from .data import load_records

    return load_records(SHAPES_DIR / "fewshot" / f"{split}.json", "fewshot").records


def answer_all(model, tokenizer, records, image_size: int, max_length: int = 128) -> list[Row]:
    """Greedy answers, asked as the model was fine-tuned (upstream's Chinese template, whatever the language)."""
    from .chat import build_prompt
    from .generate import Sampling, stream
    from .images import load_image

    rows = []
    for record in records:
        image = load_image(record.image, image_size)
        prompt = build_prompt(tokenizer, record.prompt, image_length=model.image_length)
        text = "".join(stream(model, tokenizer, prompt, image, Sampling.greedy(max_length)))
        rows.append(Row(record.image.name, record.prompt, record.answer, text))
    return rows


def score(rows: list[Row]) -> dict:
    n = len(rows) or 1
    return {"answers": len(rows), "colour": sum(r.colour_right for r in rows) / n,
            "shape": sum(r.shape_right for r in rows) / n,
            "colour_or_shape": sum(r.colour_right or r.shape_right for r in rows) / n,
            "both": sum(r.colour_right and r.shape_right for r in rows) / n}
