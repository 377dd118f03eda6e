"""VisualGLM-6B's chat as upstream's ``model/chat.py`` and ``cli_demo.py`` define it: prompt templates, history,
the English mode, and the post-processing of answers.

- The prompt is ``<img>`` + the image's positions + ``</img>`` when there is an image (on every turn: the
  first turn's image is reused), then one line pair per earlier turn and the question last:
  ``问：{q}\\n答：{a}\\n`` in Chinese, ``Q:{q}\\nA:{a}\\n`` in English. With no image the chat is text only.
- The text before and after the image are encoded separately (each gets sentencepiece's ``▁``), and
  ``[gMASK] <sop>`` ends the prompt.
- English mode samples no Chinese piece (``invalid_slices=[slice(63823, 130000)]``).
- Answers are stripped, and ASCII ``, ! : ; ?`` next to a CJK character become full-width.

Where porter differs on purpose: history that no longer fits ``max_length`` is dropped oldest first
(``trim_history``; upstream fails), and only the answer's ids are decoded (upstream decodes the whole
sequence and keeps what follows the last ``答：``/``A:``, which cuts an answer that itself contains one).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import tokenizer as tok

TEMPLATES = {"zh": ("问：{q}\n答：", "问：{q}\n答：{a}\n"), "en": ("Q:{q}\nA:", "Q:{q}\nA:{a}\n")}
IMAGE_OPEN, IMAGE_CLOSE = "<img>", "</img>"
_CJK = "\u4e00-\u9fff"
_FULL_WIDTH = {",": "，", "!": "！", ":": "：", ";": "；", "?": "？"}
_REPLACE = {"[[训练时间]]": "2023年"}  # a placeholder upstream's model was trained to say


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    pre_image: int  # where the image positions start; 0 and unused for a text-only prompt
    has_image: bool


def prompt_text(query: str, history=(), english: bool = False) -> str:
    """The turns' text: earlier turns, then the question."""
    ask, turn = TEMPLATES["en" if english else "zh"]
    return "".join(turn.format(q=q, a=a) for q, a in history) + ask.format(q=query)


def build_prompt(tokenizer, query: str, history=(), *, image_length: int, has_image: bool = True,
                 english: bool = False) -> Prompt:
    text = prompt_text(query, history, english)
    if not has_image:
        return Prompt(tokenizer.build_inputs(tokenizer.encode(text)), 0, False)
    head = tokenizer.encode(IMAGE_OPEN)
    body = head + [tok.PAD] * image_length + tokenizer.encode(IMAGE_CLOSE + text)
    return Prompt(tokenizer.build_inputs(body), len(head), True)


def trim_history(tokenizer, query: str, history, *, image_length: int, max_length: int, has_image: bool = True,
                 english: bool = False) -> list:
    """Drop the oldest turns until the prompt leaves at least half of ``max_length`` for the answer."""
    history = list(history)
    while history and len(build_prompt(tokenizer, query, history, image_length=image_length, has_image=has_image,
                                       english=english).ids) > max_length // 2:
        history.pop(0)
    return history


def process_response(text: str) -> str:
    """Upstream's ``process_response``: strip, fill the placeholder, full-width punctuation beside CJK."""
    text = text.strip()
    for placeholder, value in _REPLACE.items():
        text = text.replace(placeholder, value)
    for ascii_mark, wide in _FULL_WIDTH.items():
        mark = re.escape(ascii_mark)
        text = re.sub(rf"([{_CJK}]){mark}", rf"\1{wide}", text)
        text = re.sub(rf"{mark}([{_CJK}])", rf"{wide}\1", text)
    return text


def stable_prefix(text: str) -> str:
    """The part of a growing answer that ``process_response`` will not change when more text arrives.

    Held back: trailing whitespace (stripped at the end), a trailing ASCII mark (a CJK character after it
    makes it full-width), and a trailing start of the placeholder.
    """
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] in _FULL_WIDTH):
        end -= 1
    for placeholder in _REPLACE:
        for n in range(len(placeholder) - 1, 0, -1):
            if text[:end].endswith(placeholder[:n]):
                end -= n
                break
    return text[:end]
