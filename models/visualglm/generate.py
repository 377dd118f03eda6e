"""Sampling from VisualGLM token by token, with ChatGLM's key/value cache, streaming text as it comes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from . import tokenizer as tok
from .data import build_prompt


@dataclass
class Sampling:
    max_length: int = 2048  # prompt + answer, in tokens
    top_p: float = 0.4
    top_k: int = 100
    temperature: float = 0.8
    seed: int | None = None


def chat_prompt(query: str, history: list[tuple[str, str]] = ()) -> tuple[str, str]:
    """Text before and after the image for a query with earlier turns: ``<img>`` image ``</img>`` + turns."""
    before, _ = build_prompt(query)
    turns = "".join(f"问：{q}\n答：{a}\n" for q, a in history)
    return before, f"</img>{turns}问：{query}\n答："


def prompt_ids(tokenizer, image_length: int, query: str, history=()) -> tuple[list[int], int]:
    before, after = chat_prompt(query, history)
    head = tokenizer.encode(before)
    return head + [tok.PAD] * image_length + tokenizer.encode(after) + [tok.GMASK, tok.BOS], len(head)


def fit_history(tokenizer, image_length: int, query: str, history, max_length: int) -> list:
    """Drop the oldest turns until the prompt leaves at least half of ``max_length`` for the answer."""
    history = list(history)
    while history and len(prompt_ids(tokenizer, image_length, query, history)[0]) > max_length // 2:
        history.pop(0)
    return history


def pick(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None,
         allowed: torch.Tensor | None = None) -> int:
    """Temperature, then top-k, then nucleus (top-p) sampling over one row of logits (``allowed`` ids only)."""
    logits = logits.float() / max(s.temperature, 1e-5)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < s.top_p  # always keeps the most likely
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@torch.no_grad()
def stream(model, tokenizer, image: torch.Tensor | None, query: str, history=(), sampling: Sampling = Sampling()
           ) -> Iterator[str]:
    """Yield the answer's text piece by piece (each yield is what the newest token added)."""
    image_length = model.image_length
    ids, pre_image = prompt_ids(tokenizer, image_length, query, history)
    if len(ids) >= sampling.max_length:
        raise ValueError(f"the prompt is {len(ids)} tokens, --max_length is {sampling.max_length}")
    param = next(model.parameters())
    device = param.device
    generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
    seq = torch.tensor([ids], device=device)
    extra = {}
    if image is not None:
        extra = {"image": image.unsqueeze(0).to(device=device, dtype=param.dtype), "pre_image": pre_image}
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    answer, said, past = [], "", None
    while seq.shape[1] < sampling.max_length:
        logits, *layers = model(input_ids=seq, past_key_values=past, **(extra if past is None else {}))
        past = [layer["past_key_values"] for layer in layers]
        token = pick(logits[0, -1].cpu(), sampling, generator, allowed)
        if token == tok.EOS:
            break
        answer.append(token)
        seq = torch.cat([seq, torch.tensor([[token]], device=device)], dim=1)
        text = tokenizer.decode(answer)
        if len(text) > len(said) and not text.endswith("\ufffd"):  # wait for whole multi-byte characters
            yield text[len(said):]
            said = text
    text = tokenizer.decode(answer)
    if len(text) > len(said):
        yield text[len(said):]
