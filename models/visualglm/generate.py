"""Sampling from VisualGLM token by token, with ChatGLM's key/value cache, streaming text as it comes.

Each step follows SAT's ``BaseStrategy`` as upstream's chat uses it: logits of the ids already generated in
this answer divided by ``repetition_penalty`` (SAT divides, whatever the logit's sign), all logits divided by
the temperature, the ``invalid_slices`` banned, then top-k and nucleus (top-p) filtering, then a draw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from . import tokenizer as tok
from .chat import Prompt, process_response, stable_prefix


@dataclass
class Sampling:
    max_length: int = 2048  # prompt + answer, in tokens
    top_p: float = 0.4
    top_k: int = 100
    temperature: float = 0.8
    repetition_penalty: float = 1.2
    invalid_slices: list[slice] = field(default_factory=list)
    seed: int | None = None

    @classmethod
    def greedy(cls, max_length: int = 2048, **kw) -> "Sampling":
        return cls(max_length=max_length, top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0, seed=0, **kw)


def pick(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None, generated: list[int] = (),
         allowed: torch.Tensor | None = None) -> int:
    """One token from one row of logits."""
    logits = logits.float().clone()
    if generated and s.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(generated)), dtype=torch.long)
        logits[seen] = logits[seen] / s.repetition_penalty
    logits = logits / max(s.temperature, 1e-5)
    for banned in s.invalid_slices:
        logits[banned] = float("-inf")
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if 0.0 < s.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < s.top_p  # always keeps the most likely
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    if s.top_k == 1:
        return int(torch.argmax(probs))
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@torch.no_grad()
def tokens(model, prompt: Prompt, image: torch.Tensor | None, sampling: Sampling, allowed=None) -> Iterator[int]:
    """The answer's ids, one at a time, until <eop> or ``max_length``."""
    if len(prompt.ids) >= sampling.max_length:
        raise ValueError(f"the prompt is {len(prompt.ids)} tokens and max_length is {sampling.max_length}: "
                         f"no room for an answer")
    param = next(model.parameters())
    device = param.device
    generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
    seq = torch.tensor([prompt.ids], device=device)
    extra = {}
    if prompt.has_image and image is not None:
        extra = {"image": image.unsqueeze(0).to(device=device, dtype=param.dtype), "pre_image": prompt.pre_image}
    generated: list[int] = []
    past = None
    while seq.shape[1] < sampling.max_length:
        logits, *layers = model(input_ids=seq, past_key_values=past, **(extra if past is None else {}))
        past = [layer["past_key_values"] for layer in layers]
        token = pick(logits[0, -1].cpu(), sampling, generator, generated, allowed)
        if token == tok.EOS:
            return
        generated.append(token)
        yield token
        seq = torch.cat([seq, torch.tensor([[token]], device=device)], dim=1)


def stream(model, tokenizer, prompt: Prompt, image: torch.Tensor | None, sampling: Sampling = Sampling()
           ) -> Iterator[str]:
    """Yield the post-processed answer piece by piece; joined, the pieces are exactly the final answer."""
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    answer, said = [], ""
    for token in tokens(model, prompt, image, sampling, allowed):
        answer.append(token)
        text = tokenizer.decode(answer)
        if text.endswith("\ufffd"):  # wait for whole multi-byte characters
            continue
        ready = stable_prefix(process_response(text))
        if len(ready) > len(said) and ready.startswith(said):
            yield ready[len(said):]
            said = ready
    final = process_response(tokenizer.decode(answer))
    if final.startswith(said) and len(final) > len(said):
        yield final[len(said):]
