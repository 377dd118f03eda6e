"""Sampling from VisualGLM token by token, with ChatGLM's key/value cache, one answer or a padded batch of them,
streaming text as it comes.

Each step follows SAT's ``BaseStrategy`` as upstream's chat uses it: logits of the ids already generated in
this answer divided by ``repetition_penalty`` (SAT divides, whatever the logit's sign), all logits divided by
the temperature, the ``invalid_slices`` banned, then top-k and nucleus (top-p) filtering, then a draw.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

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
    def greedy(cls, max_length: int = 2048, **kw) -> Sampling:
        return cls(max_length=max_length, top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0, seed=0, **kw)


def pick(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None, generated: Sequence[int] = (),
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


class _Extra(TypedDict, total=False):
    """The model's keyword arguments besides ids and cache, each key with its own type."""
    image: torch.Tensor
    pre_image: int | torch.Tensor  # an int for one row (the path training takes), a tensor of offsets for several
    logit_mask: torch.Tensor


@dataclass
class Request:
    """One answer to generate: its prompt, its image (or None for a text-only prompt) and how to sample it."""
    prompt: Prompt
    image: torch.Tensor | None
    sampling: Sampling


class Decoder:
    """Several answers generated together, one token per live answer per ``step()``.

    Prompts are padded on the left with ChatGLM's pad id, which SAT's ChatGLM masks out as keys and starts the
    positions after, so each answer sees exactly what it would see alone: a greedy answer is the same batched
    or not. An answer leaves the batch when it ends (``<eop>``, its ``max_length``) or is ``drop``-ped; the
    padding every remaining answer shares is then cut from the ids and the key/value cache (SAT's one-row path
    attends to every cached position).
    """

    def __init__(self, model, requests: list[Request], allowed: torch.Tensor | None = None,
                 isolate_rows: bool = False):
        kinds = {r.prompt.has_image and r.image is not None for r in requests}
        if len(kinds) > 1:
            raise ValueError("a batch is all image prompts or all text-only prompts")
        for r in requests:
            if len(r.prompt.ids) >= r.sampling.max_length:
                raise ValueError(f"the prompt is {len(r.prompt.ids)} tokens and max_length is "
                                 f"{r.sampling.max_length}: no room for an answer")
        param = next(model.parameters())
        self.model, self.allowed, self.requests = model, allowed, list(requests)
        self.isolate_rows = isolate_rows
        self.failed: dict[int, Exception] = {}  # request index -> why its token was not drawn
        self.live = list(range(len(requests)))  # request index of each batch row
        self.generated: list[list[int]] = [[] for _ in requests]
        self.generators = [torch.Generator().manual_seed(r.sampling.seed) if r.sampling.seed is not None else None
                           for r in requests]
        width = max(len(r.prompt.ids) for r in requests)
        pads = [width - len(r.prompt.ids) for r in requests]
        self.seq = torch.tensor([[tok.PAD] * p + r.prompt.ids for p, r in zip(pads, requests)], device=param.device)
        self.extra: _Extra = {}
        if kinds == {True}:
            # every image is there (kinds says so); the filter only tells mypy
            images = torch.stack([r.image for r in requests if r.image is not None]).to(device=param.device,
                                                                                        dtype=param.dtype)
            offsets = [p + r.prompt.pre_image for p, r in zip(pads, requests)]
            # one row keeps the int offset, the path training and upstream's chat take
            pre = offsets[0] if len(offsets) == 1 else torch.tensor(offsets, device=param.device)
            self.extra = {"image": images, "pre_image": pre}
        self.past: list[tuple[torch.Tensor, ...]] | None = None  # SAT's key/value cache, once the prompt went in

    @property
    def done(self) -> bool:
        return not self.live

    @torch.no_grad()
    def step(self) -> dict[int, int | None]:
        """Request index -> the token it got this step, or None where the answer ended (and left the batch).

        With ``isolate_rows`` a row whose token cannot be drawn (its sampling raised) leaves the batch and its
        error is kept in ``failed`` (request index -> exception): one bad request of a served batch fails alone."""
        last = self._logits()
        out: dict[int, int | None] = {}
        ended: list[int] = []
        picked: list[int] = []
        for row, index in enumerate(self.live):
            token = self._pick(row, index, last)
            picked.append(tok.PAD if token is None else token)  # a failed row's column is dropped below
            if token is None or token == tok.EOS:
                ended.append(index)
                if token is not None:
                    out[index] = None
                continue
            self.generated[index].append(token)
            out[index] = token
            if len(self.requests[index].prompt.ids) + len(self.generated[index]) >= \
                    self.requests[index].sampling.max_length:
                ended.append(index)
        self.seq = torch.cat([self.seq, torch.tensor(picked, device=self.seq.device).unsqueeze(1)], dim=1)
        if ended:
            self.drop(ended)
        return out

    def _logits(self) -> torch.Tensor:
        """The next position's logits for every live row, [rows, vocab]; the key/value cache moves on."""
        extra = self.extra.copy()
        if self.past is None:  # the whole prompt goes in: the vocabulary's logits only at its last position
            mask = torch.zeros_like(self.seq, dtype=torch.bool)
            mask[:, -1] = True
            extra["logit_mask"] = mask
        else:
            extra = {}
        logits, *layers = self.model(input_ids=self.seq, past_key_values=self.past, **extra)
        self.past = [layer["past_key_values"] for layer in layers]
        return logits[:, -1] if logits.dim() == 3 else logits  # [rows, vocab] either way

    def _pick(self, row: int, index: int, last: torch.Tensor) -> int | None:
        request = self.requests[index]
        try:
            return pick(last[row].cpu(), request.sampling, self.generators[index], self.generated[index],
                        self.allowed)
        except Exception as exc:
            if not self.isolate_rows:
                raise
            self.failed[index] = exc
            return None

    def drop(self, indices) -> None:
        """Stop generating for these request indices (ended, stopped by a stop string, or cancelled)."""
        keep = [row for row, index in enumerate(self.live) if index not in set(indices)]
        if len(keep) == len(self.live):
            return
        self.live = [self.live[row] for row in keep]
        if not keep:
            return
        rows = torch.tensor(keep, device=self.seq.device)
        self.seq = self.seq.index_select(0, rows)
        shared_pad = int((self.seq != tok.PAD).long().argmax(dim=1).min())
        self.seq = self.seq[:, shared_pad:]
        if self.past is not None:  # SAT's cache: (key, value) per layer, each [positions, batch, heads, dim]
            self.past = [tuple(t.index_select(1, rows)[shared_pad:] for t in kv) for kv in self.past]
        if "pre_image" in self.extra and self.past is None:  # not started yet: the images follow their rows
            pre = self.extra["pre_image"]
            offsets = (pre if torch.is_tensor(pre) else torch.tensor([pre])).index_select(0, rows.cpu()) - shared_pad
            self.extra = {"image": self.extra["image"].index_select(0, rows),
                          "pre_image": int(offsets[0]) if len(keep) == 1 else offsets}


@torch.no_grad()
def tokens(model, prompt: Prompt, image: torch.Tensor | None, sampling: Sampling, allowed=None) -> Iterator[int]:
    """The answer's ids, one at a time, until <eop> or ``max_length``."""
    decoder = Decoder(model, [Request(prompt, image, sampling)], allowed)
    while not decoder.done:
        token = decoder.step()[0]
        if token is None:
            return
        yield token


class AnswerText:
    """An answer's text as its tokens arrive: the post-processed answer in pieces that never change later.

    ``stop`` strings end the answer where the first of them appears; the answer excludes it (as OpenAI's
    ``stop``). Text that may be the start of a stop string is held back until it is known not to be.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.said = ""
        self.stopped = False

    def _cut(self, text: str) -> str | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(hits)] if hits else None

    def add(self, token: int) -> str:
        """The new text this token makes certain ('' when none); sets ``stopped`` when a stop string appeared."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # wait for whole multi-byte characters
            return ""
        processed = process_response(text)
        cut = self._cut(processed)
        if cut is not None:
            self.stopped = True
            return self._say(cut)
        ready = stable_prefix(processed)
        for s in self.stop:  # hold back a tail that could still become a stop string
            for n in range(min(len(s) - 1, len(ready)), 0, -1):
                if ready.endswith(s[:n]):
                    ready = ready[:-n]
                    break
        return self._say(ready)

    def _say(self, text: str) -> str:
        if len(text) > len(self.said) and text.startswith(self.said):
            piece, self.said = text[len(self.said):], text
            return piece
        return ""

    def finish(self) -> str:
        """The rest of the answer, once no more tokens come."""
        if self.stopped:
            return ""
        final = process_response(self.tokenizer.decode(self.ids))
        cut = self._cut(final)
        return self._say(final if cut is None else cut)

def stream(model, tokenizer, prompt: Prompt, image: torch.Tensor | None, sampling: Sampling | None = None
           ) -> Iterator[str]:
    """Yield the post-processed answer piece by piece; joined, the pieces are exactly the final answer."""
    sampling = sampling or Sampling()
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    answer = AnswerText(tokenizer)
    for token in tokens(model, prompt, image, sampling, allowed):
        piece = answer.add(token)
        if piece:
            yield piece
    tail = answer.finish()
    if tail:
        yield tail
