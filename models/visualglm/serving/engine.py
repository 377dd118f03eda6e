"""One thread owns the model and answers queued chats in padded batches, streaming each answer's text back to the
event loop that asked.

Chats wait in a bounded queue (``submit`` refuses when it is full, so the server answers 503 instead of
hanging). The thread takes up to ``max_batch`` waiting chats of one kind (with an image, or text only) and
generates them together with ``generate.Decoder``; chats that arrive meanwhile wait for the next batch (the
key/value caches of a running batch are not merged with new prompts). A chat whose client went away is
``cancel``-led and leaves the batch at the next step.

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
    def __init__(self, model, tokenizer, *, max_batch: int = 8, max_waiting: int = 32):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.running = 0
        self.batches = 0  # counters for /health: batches run, tokens generated, chats stopped for a gone client
        self.tokens = 0
        self.cancelled = 0
        self._thread = threading.Thread(target=self._serve, name="porter-engine", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
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

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._closed and not any(not j.cancelled.is_set() for j in self._waiting):
                self._waiting.clear()  # only cancelled ones, if any
                self._cond.wait()
            if self._closed:
                return []
            live = [j for j in self._waiting if not j.cancelled.is_set()]
            kind = live[0].has_image
            batch = [j for j in live if j.has_image == kind][: self.max_batch]
            taken = {id(j) for j in batch}
            self._waiting = collections.deque(j for j in live if id(j) not in taken)
            self.running = len(batch)
            return batch

    def _serve(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            try:
                self._run(batch)
            except Exception as exc:  # the shared forward pass failed: every chat still open fails, never the server
                traceback.print_exc(file=sys.stderr)
                for job in batch:
                    _fail(job, exc, log=False)
            finally:
                with self._cond:
                    self.running = 0
                    self.batches += 1

    def _decoder(self, batch: list[Job]) -> tuple[list[Job], Decoder | None]:
        """The batch's decoder; a chat the decoder refuses (its prompt, its image) fails alone."""
        try:
            return batch, Decoder(self.model, [job.request for job in batch], self.allowed, isolate_rows=True)
        except Exception:
            if len(batch) == 1:
                raise
        kept = []
        for job in batch:
            try:
                Decoder(self.model, [job.request], self.allowed, isolate_rows=True)
                kept.append(job)
            except Exception as exc:
                _fail(job, exc)
        return kept, (Decoder(self.model, [job.request for job in kept], self.allowed, isolate_rows=True) if kept else None)

    def _run(self, batch: list[Job]) -> None:
        batch, decoder = self._decoder(batch)
        texts = [AnswerText(self.tokenizer, job.stop) for job in batch]
        while decoder is not None and not decoder.done:
            gone = [i for i in decoder.live if batch[i].cancelled.is_set()]
            if gone:
                self.cancelled += len(gone)
                decoder.drop(gone)
                if decoder.done:
                    return
            tokens = decoder.step()
            for i, exc in decoder.failed.items():
                _fail(batch[i], exc)
            decoder.failed.clear()
            for i, token in tokens.items():
                try:
                    self._take_token(batch[i], texts[i], token, decoder, i)
                except Exception as exc:  # this chat's text (the tokenizer): it alone fails
                    decoder.drop([i])
                    _fail(batch[i], exc)

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
