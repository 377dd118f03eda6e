"""One thread owns the model and answers queued chats in padded batches, streaming each answer's text back to the
event loop that asked.

Chats wait in a bounded queue (``submit`` refuses when it is full, so the server answers 503 instead of
hanging). Continuous batching (the default): between two steps of the running batch the thread takes the chats
that arrived, up to ``max_batch`` rows in all, runs their prompts (one forward per kind: with an image, or text
only) and they ``join`` the running rows (``generate.Decoder.join``); a row leaves the moment its answer ends.
Static batching (``continuous=False``, kept to measure what the other buys): up to ``max_batch`` waiting chats of
one kind are generated together and chats that arrive meanwhile wait for the whole batch to end. Either way a chat
whose client went away is ``cancel``-led and leaves the batch at the next step.

A failure that belongs to one chat (its prompt, its sampling, its text) fails that chat alone: it leaves the
batch with an ``error`` event and the others go on. Only a failure of the shared forward pass fails the whole
batch, since no row can be blamed for it.
"""
from __future__ import annotations

import asyncio
import collections
import sys
import threading
import traceback
from dataclasses import dataclass, field

from ..generate import AnswerText, Decoder, Request


class QueueFull(Exception):
    """More chats waiting than the server takes (``--queue``)."""


@dataclass
class Job:
    """One chat in the engine: what to generate, and where its events go.

    Events, in order: ``("text", piece)`` any number of times, then ``("end", finish_reason)`` ("stop" or
    "length") or ``("error", message)``.
    """
    request: Request
    stop: tuple[str, ...] = ()
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    ended: bool = False  # its last event ("end" or "error") is sent

    @property
    def has_image(self) -> bool:
        return self.request.prompt.has_image and self.request.image is not None

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: str, value) -> None:
        self.ended = self.ended or kind in ("end", "error")
        # the loop defaults to None only so the field can follow ``stop``; every Job is made with the one that reads it
        assert self.loop is not None, "a Job needs the event loop that reads its events"
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop has closed: the server is shutting down
            pass


class Engine:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, max_waiting: int = 32, continuous: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_waiting, self.continuous = max_batch, max_waiting, continuous
        self.allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.running = 0
        # counters for /health: prompt batches run (a static batch, or the chats that joined at one step),
        # decode steps, tokens generated, chats stopped for a gone client
        self.batches = 0
        self.steps = 0
        self.tokens = 0
        self.cancelled = 0
        self._thread = threading.Thread(target=self._serve, name="porter-engine", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._cond.notify_all()
        for job in waiting:  # their readers would otherwise wait for ever
            _fail(job, RuntimeError("the server is shutting down"), log=False)
        self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> Job:
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} chats are waiting (--queue {self.max_waiting})")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def _serve(self) -> None:
        run = _Running()
        while True:
            with self._cond:
                while not self._closed and not run.live and not any(not j.cancelled.is_set() for j in self._waiting):
                    self._waiting.clear()  # only cancelled ones, if any
                    self._cond.wait()
                if self._closed:
                    for job in run.jobs:
                        _fail(job, RuntimeError("the server is shutting down"), log=False)
                    return
                fresh = self._pop(run)
                self.running = len(run.live) + len(fresh)
            if fresh:
                self._admit(run, fresh)
            if run.live:
                self._advance(run)
            with self._cond:
                self.running = len(run.live)

    def _admit(self, run: _Running, jobs: list[Job]) -> None:
        """Run the new chats' prompts, one forward per kind, and add their rows to the running batch."""
        for kind in (True, False):
            group = [j for j in jobs if j.has_image == kind]
            if not group:
                continue
            try:
                self._join(run, group)
            except ValueError as exc:  # the decoder refused a prompt: find which, the others still join
                if len(group) == 1:
                    _fail(group[0], exc)
                    continue
                for job in group:
                    try:
                        self._join(run, [job])
                    except Exception as exc:
                        _fail(job, exc)
            except Exception as exc:  # their prompts' forward pass: it was theirs alone
                traceback.print_exc(file=sys.stderr)
                for job in group:
                    _fail(job, exc, log=False)

    def _join(self, run: _Running, group: list[Job]) -> None:
        requests = [job.request for job in group]
        if run.decoder is None or run.decoder.done:  # a fresh batch: nothing of the last one is kept
            decoder = Decoder(self.model, requests, self.allowed, isolate_rows=True)
            first = decoder.step()
            run.decoder, run.jobs, run.texts = decoder, [], []
        else:
            first = run.decoder.join(requests)
        run.jobs += group
        run.texts += [AnswerText(self.tokenizer, job.stop) for job in group]
        with self._cond:
            self.batches += 1
        self._handle(run, first)

    def _advance(self, run: _Running) -> None:
        """One step of every running row; a failed forward pass fails every chat in it (no row can be blamed)."""
        decoder = run.decoder
        assert decoder is not None
        gone = [i for i in decoder.live if run.jobs[i].cancelled.is_set()]
        if gone:
            self.cancelled += len(gone)
            decoder.drop(gone)
            if decoder.done:
                return
        try:
            tokens = decoder.step()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            for i in decoder.live:
                _fail(run.jobs[i], exc, log=False)
            run.decoder, run.jobs, run.texts = None, [], []
            return
        self.steps += 1
        self._handle(run, tokens)
        if len(decoder.requests) > 4 * self.max_batch:  # forget the chats that ended, now and then
            kept = decoder.compact()
            run.jobs = [run.jobs[i] for i in kept]
            run.texts = [run.texts[i] for i in kept]

    def _handle(self, run: _Running, tokens: dict[int, int | None]) -> None:
        decoder = run.decoder
        assert decoder is not None
        for i, exc in decoder.failed.items():
            _fail(run.jobs[i], exc)
        decoder.failed.clear()
        for i, token in tokens.items():
            try:
                self._take_token(run.jobs[i], run.texts[i], token, decoder, i)
            except Exception as exc:  # this chat's text (the tokenizer): it alone fails
                decoder.drop([i])
                _fail(run.jobs[i], exc)

    def _pop(self, run: _Running) -> list[Job]:
        """The waiting chats that start now, oldest first; the cancelled ones are forgotten. Continuous: as many
        as there is room for beside the running rows. Static: none while a batch runs, then up to ``max_batch``
        of the oldest chat's kind. Called with the lock held."""
        live = [j for j in self._waiting if not j.cancelled.is_set()]
        if self.continuous:
            taken = live[:max(self.max_batch - len(run.live), 0)]
        elif run.live or not live:
            taken = []
        else:
            taken = [j for j in live if j.has_image == live[0].has_image][:self.max_batch]
        ids = {id(j) for j in taken}
        self._waiting = collections.deque(j for j in live if id(j) not in ids)
        return taken

    def _take_token(self, job: Job, text: AnswerText, token: int | None, decoder: Decoder, i: int) -> None:
        if token is None:  # <eop>
            self._end(job, text, "stop")
            return
        job.completion_tokens += 1
        self.tokens += 1
        piece = text.add(token)
        if piece:
            job.emit("text", piece)
        if text.stopped:  # a stop string: the answer ends before it
            decoder.drop([i])
            job.emit("end", "stop")
        elif i not in decoder.live:  # its max_length
            self._end(job, text, "length")

    @staticmethod
    def _end(job: Job, text: AnswerText, reason: str) -> None:
        tail = text.finish()
        if tail:
            job.emit("text", tail)
        job.emit("end", reason)


@dataclass
class _Running:
    """The running batch of the continuous engine: its decoder, and by request index its chat and text."""
    decoder: Decoder | None = None
    jobs: list[Job] = field(default_factory=list)
    texts: list[AnswerText] = field(default_factory=list)

    @property
    def live(self) -> list[int]:
        return self.decoder.live if self.decoder is not None else []


def _fail(job: Job, exc: Exception, log: bool = True) -> None:
    """End ``job`` with its error (unless it ended already); the client reads one line, the log the traceback."""
    if job.ended:
        return
    if log:
        traceback.print_exception(exc, file=sys.stderr)
    job.emit("error", f"generation failed: {one_line(exc)}")


def one_line(exc: BaseException) -> str:
    """An exception as a client reads it: its type and the first line of its message (torch's run to pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
