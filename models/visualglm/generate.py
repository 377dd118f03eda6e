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
    token = pick_rows(logits.unsqueeze(0), [s], [generator], [generated], allowed)[0]
    if isinstance(token, Exception):
        raise token
    return token


def pick_rows(logits: torch.Tensor, samplings: Sequence[Sampling], generators: Sequence[torch.Generator | None],
              generated: Sequence[Sequence[int]], allowed: torch.Tensor | None = None) -> list[int | Exception]:
    """One token per row of ``logits`` [rows, vocab], each row with its own sampling; a row whose draw raised
    gets its exception instead of a token (the caller decides whether that fails the others).

    The work over the whole vocabulary (130,528 ids) is done once for all rows: the bans, then one ``topk`` of
    the largest ``top_k``. The temperature, top-p and the draw then look at each row's ``top_k`` candidates only,
    which is the distribution SAT's ``BaseStrategy`` draws from (everything outside the top k has probability 0
    there; dividing by the temperature does not change which ids are the top k), at a fraction of the cost of
    dividing, sorting and drawing over the whole vocabulary per row.
    """
    logits = logits.detach().to(device="cpu", dtype=torch.float32)
    # a new tensor either way (the rows below are changed in place); where() keeps a transposed input's layout
    # instead of copying it (``sat_model.few_rows_logits`` gives one)
    scores = (torch.where(allowed, logits, float("-inf")) if allowed is not None
              else logits.clone(memory_format=torch.preserve_format))
    for row, (s, seen) in enumerate(zip(samplings, generated)):
        line = scores[row]
        if seen and s.repetition_penalty != 1.0:
            ids = torch.tensor(sorted(set(seen)), dtype=torch.long)
            line[ids] = line[ids] / s.repetition_penalty  # SAT divides, whatever the logit's sign
        for banned in s.invalid_slices:
            line[banned] = float("-inf")
    vocab = scores.shape[1]
    wanted = [s.top_k if 0 < s.top_k < vocab else vocab for s in samplings]
    out: list[int | Exception] = [0] * len(samplings)
    sampled = [row for row, s in enumerate(samplings) if s.top_k != 1]
    greedy = [row for row, s in enumerate(samplings) if s.top_k == 1]
    # (rows of one kind are usually all of them: then no gathered copy of [rows, vocab])
    if greedy:
        rows = scores if len(greedy) == len(samplings) else scores[greedy]
        for row, token in zip(greedy, rows.argmax(dim=1).tolist()):
            out[row] = token
    if sampled:
        rows = scores if len(sampled) == len(samplings) else scores[sampled]
        values, ids = torch.topk(rows, max(wanted[row] for row in sampled), dim=1)  # sorted, largest first
        for i, row in enumerate(sampled):
            k = wanted[row]
            try:
                out[row] = draw(values[i, :k], ids[i, :k], samplings[row], generators[row])
            except Exception as exc:
                out[row] = exc
    return out


def draw(values: torch.Tensor, ids: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    """A draw among one row's top-k candidates (``values`` sorted, largest first, ``ids`` their token ids)."""
    ids, probs = nucleus(values, ids, s)
    return int(ids[torch.multinomial(probs, 1, generator=generator)])


def nucleus(values: torch.Tensor, ids: torch.Tensor, s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates a draw chooses among and their probabilities (summing to 1): the softmax of the top-k
    ``values`` over the temperature, cut to the smallest head whose probabilities reach ``top_p`` (the most likely
    always stays)."""
    probs = torch.softmax(values / max(s.temperature, 1e-5), dim=-1)
    if 0.0 < s.top_p < 1.0:
        keep = torch.cumsum(probs, dim=-1) - probs < s.top_p
        probs, ids = probs[keep], ids[keep]
    return ids, probs / probs.sum()


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
    """Several answers generated together, one token per live answer per ``step()``; more can ``join`` between
    steps (continuous batching).

    Prompts are padded on the left with ChatGLM's pad id, which SAT's ChatGLM masks out as keys and starts the
    positions after, so each answer sees exactly what it would see alone: a greedy answer is the same batched
    or not. An answer leaves the batch when it ends (``<eop>``, its ``max_length``) or is ``drop``-ped; the
    padding every remaining answer shares is then cut from the ids and the key/value cache (SAT's one-row path
    attends to every cached position).

    The prompt goes through SAT's own ``get_inputs`` (its mask and 2-D positions). After it, each step passes
    the one new position's mask and positions itself: SAT would rebuild a rows x length x length mask and walk
    every row's ids in Python per token, to keep one row of it. The values are SAT's (``step_inputs``); a test
    compares the logits of both paths at every step of a padded batch.
    """

    def __init__(self, model, requests: list[Request], allowed: torch.Tensor | None = None,
                 isolate_rows: bool = False, sat_inputs: bool = False):
        kinds = {r.prompt.has_image and r.image is not None for r in requests}
        if len(kinds) > 1:
            raise ValueError("a batch is all image prompts or all text-only prompts")
        for r in requests:
            if len(r.prompt.ids) >= r.sampling.max_length:
                raise ValueError(f"the prompt is {len(r.prompt.ids)} tokens and max_length is "
                                 f"{r.sampling.max_length}: no room for an answer")
        param = next(model.parameters())
        self.model, self.allowed, self.requests = model, allowed, list(requests)
        self.isolate_rows, self.sat_inputs = isolate_rows, sat_inputs
        self.failed: dict[int, Exception] = {}  # request index -> why its token was not drawn
        self.live = list(range(len(requests)))  # request index of each batch row
        self.generated: list[list[int]] = [[] for _ in requests]
        self.generators = [torch.Generator().manual_seed(r.sampling.seed) if r.sampling.seed is not None else None
                           for r in requests]
        self.anchors = [_anchors(r.prompt.ids) for r in requests]  # (mask position, context length) per request
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
        drawn = pick_rows(last, [self.requests[i].sampling for i in self.live],
                          [self.generators[i] for i in self.live], [self.generated[i] for i in self.live],
                          self.allowed)
        for index, token in zip(self.live, drawn):
            if isinstance(token, Exception):
                if not self.isolate_rows:
                    raise token
                self.failed[index] = token
                picked.append(tok.PAD)  # a failed row's column is dropped below
                ended.append(index)
                continue
            picked.append(token)
            if token == tok.EOS:
                ended.append(index)
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
        extra: dict = dict(self.extra)
        if self.past is None:  # the whole prompt goes in: the vocabulary's logits only at its last position
            mask = torch.zeros_like(self.seq, dtype=torch.bool)
            mask[:, -1] = True
            extra["logit_mask"] = mask
        elif self.sat_inputs:
            extra = {}
        else:
            extra = self.step_inputs()
        logits, *layers = self.model(input_ids=self.seq, past_key_values=self.past, **extra)
        self.past = [layer["past_key_values"] for layer in layers]
        self.extra = {}  # the images went in with the prompt; later steps only read the key/value cache
        return logits[:, -1] if logits.dim() == 3 else logits  # [rows, vocab] either way

    def step_inputs(self) -> dict[str, torch.Tensor]:
        """The last position's attention mask and positions for every live row, as SAT's ``get_inputs`` computes
        them over the whole padded batch and then keeps (``ChatGLMModel.forward`` cuts them to the last position):

        - the mask, [rows, 1, 1, length], 1 where a key is the row's own (its leading pads are 0); one row has
          no pads and SAT gives it a mask of ones;
        - positions, [rows, 2, 1]: ChatGLM's first coordinate is the ``[gMASK]``'s index in the row's own ids for
          every generated position, the second counts from 1 at ``<sop>`` (the context's end). Both are counted
          from the row's first real id, so they do not depend on the padding.
        """
        device, width = self.seq.device, self.seq.shape[1]
        lengths = [len(self.requests[i].prompt.ids) + len(self.generated[i]) for i in self.live]
        first = torch.tensor([width - n for n in lengths], device=device)
        dtype = next(self.model.parameters()).dtype
        mask = (torch.arange(width, device=device).unsqueeze(0) >= first.unsqueeze(1)).to(dtype)
        positions = torch.tensor([[self.anchors[i][0], n - self.anchors[i][1]] for i, n in zip(self.live, lengths)],
                                 device=device).unsqueeze(2)
        return {"attention_mask": mask[:, None, None, :], "position_ids": positions}

    def join(self, requests: list[Request]) -> dict[int, int | None]:
        """Add answers to a running batch: their prompts go through the model on their own (as they would
        alone), then their rows, ids and key/value cache join the others, left-padded to a common length, and
        the next ``step`` moves all of them. Returns their first tokens as ``step`` does, by their new request
        indices (``len(requests)`` before the call, and on). All or nothing: if it raises, the running batch is
        as it was."""
        if self.live and self.past is None:  # joined before this batch's own prompt ran: not a state join is for
            raise RuntimeError("join() needs a batch that has run its first step")
        newcomer = Decoder(self.model, requests, self.allowed, self.isolate_rows, self.sat_inputs)
        first = newcomer.step()
        base = len(self.requests)
        seq, past, extra = newcomer.seq, newcomer.past, self.extra
        if self.live and not newcomer.done:
            assert self.past is not None and newcomer.past is not None
            width = max(self.seq.shape[1], newcomer.seq.shape[1])
            seq = torch.cat([_pad_left(self.seq, width, tok.PAD, 1), _pad_left(newcomer.seq, width, tok.PAD, 1)])
            past = [tuple(torch.cat([_pad_left(mine, width - 1, 0, 0), _pad_left(theirs, width - 1, 0, 0)], dim=1)
                          for mine, theirs in zip(ours, new))
                    for ours, new in zip(self.past, newcomer.past)]
        elif self.live:  # every newcomer ended on its first token: the running rows stay as they are
            seq, past = self.seq, self.past
        else:
            extra = {}
        # nothing below can fail: the batch changes all at once
        self.requests += newcomer.requests
        self.generated += newcomer.generated
        self.generators += newcomer.generators
        self.anchors += newcomer.anchors
        self.failed.update({base + i: exc for i, exc in newcomer.failed.items()})
        self.seq, self.past, self.extra = seq, past, extra
        self.live += [base + i for i in newcomer.live]
        return {base + i: token for i, token in first.items()}

    def compact(self) -> list[int]:
        """Forget the answers that left the batch (a server's decoder runs as long as chats keep coming): the live
        ones are renumbered 0, 1, ... in their order. Returns their old request indices, in the new order."""
        kept = list(self.live)
        self.requests = [self.requests[i] for i in kept]
        self.generated = [self.generated[i] for i in kept]
        self.generators = [self.generators[i] for i in kept]
        self.anchors = [self.anchors[i] for i in kept]
        self.failed = {kept.index(i): exc for i, exc in self.failed.items() if i in kept}
        self.live = list(range(len(kept)))
        return kept

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


def _anchors(ids: list[int]) -> tuple[int, int]:
    """(the index of the ``[gMASK]``, or of ``[MASK]`` where there is none; the index of ``<sop>``) in a prompt:
    what ChatGLM's positions count from (SAT's ``get_position_ids``); -1 where absent (SAT's own prompt path
    then refuses it)."""
    mask = tok.GMASK if tok.GMASK in ids else tok.MASK
    return (ids.index(mask) if mask in ids else -1, ids.index(tok.BOS) if tok.BOS in ids else -1)


def _pad_left(t: torch.Tensor, width: int, value: int, dim: int) -> torch.Tensor:
    """``t`` with ``value`` put before it along ``dim`` up to ``width``."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_full(shape, value), t], dim=dim)


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
