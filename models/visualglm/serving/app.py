"""The FastAPI application: routes, request checking, streaming, and errors as OpenAI-style JSON bodies.

Routes: ``POST /v1/chat/completions`` (OpenAI), ``GET /v1/models``, ``POST /`` and ``POST /v1/visual_glm``
(upstream's ``api.py``, current and first version), ``GET /health``, and the chat page at ``GET /``.
Every request ends in an answer: a fault in the request is a 400 or 413 naming the field, a full queue a 503
with Retry-After, and anything unexpected a 500 with the error's one line (the traceback goes to the log).
"""
from __future__ import annotations

import asyncio
import datetime
import json
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..chat import build_prompt
from ..generate import Request as Generation
from ..generate import Sampling
from ..tokenizer import ENGLISH_BAN
from .engine import Engine, Job, QueueFull
from .image_input import image_tensor
from .protocol import APIError, Chat, Limits, bad, parse_legacy, parse_openai

STATIC = Path(__file__).parent / "static"
RETRY_AFTER_S = 2


@dataclass
class Served:
    """What the routes need: the engine and the model's facts."""
    engine: Engine
    tokenizer: object
    limits: Limits
    image_size: int
    image_length: int
    image_timeout: float = 10.0


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def create_app(served: Served) -> FastAPI:
    app = FastAPI(title="porter: VisualGLM", docs_url="/docs", redoc_url=None)
    app.state.served = served

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request, exc):
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        traceback.print_exception(exc, file=sys.stderr)
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}").body(), status_code=500)

    @app.get("/health")
    async def health():
        e = served.engine
        return {"status": "ok", "model": served.limits.model_id, "waiting": e.waiting, "running": e.running,
                "max_batch": e.max_batch, "max_waiting": e.max_waiting, "batches": e.batches, "tokens": e.tokens,
                "cancelled": e.cancelled}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.limits.model_id, "object": "model", "created": 0,
                                            "owned_by": "porter"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat = parse_openai(await _json(request, served.limits), served.limits)
        job, prompt_tokens = await _start(served, chat)
        reply = _Reply(served.limits.model_id, prompt_tokens)
        if chat.stream:
            return StreamingResponse(reply.events(job, chat.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text, reason = await _collect(job, request)
        return reply.completion(text, reason, job.completion_tokens)

    async def legacy(request: Request, image_field: str):
        chat = parse_legacy(await _json(request, served.limits), served.limits, image_field)
        job, _ = await _start(served, chat)
        text, _reason = await _collect(job, request)
        return {"result": text, "history": [[q, a] for q, a in chat.history] + [[chat.question, text]],
                "status": 200, "time": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}

    @app.post("/")
    async def api_py(request: Request):
        return await legacy(request, "image")

    @app.post("/v1/visual_glm")
    async def api_py_first(request: Request):
        return await legacy(request, "image_prompt")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _json(request: Request, limits: Limits):
    cap = limits.max_image_bytes * 4 // 3 + 2 ** 20  # a base64 image at the cap, and the rest of a chat

    def refuse_over_cap(size: int) -> None:
        if size > cap:
            raise APIError(413, f"the request is {size:,} bytes; this server takes up to {cap:,}", None,
                           "request_too_large")

    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        refuse_over_cap(int(declared))  # before reading it
    raw = await request.body()
    refuse_over_cap(len(raw))
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"malformed JSON: {exc}", None, "invalid_json") from None


def sampling_for(chat: Chat, prompt_tokens: int, limits: Limits) -> Sampling:
    longest = min(limits.max_length, chat.max_length or limits.max_length)
    if chat.max_tokens is not None:
        longest = min(longest, prompt_tokens + chat.max_tokens)
    greedy = chat.temperature == 0
    return Sampling(max_length=longest, top_p=1.0 if greedy else chat.top_p, top_k=1 if greedy else chat.top_k,
                    temperature=1.0 if greedy else chat.temperature, repetition_penalty=chat.repetition_penalty,
                    invalid_slices=[ENGLISH_BAN] if chat.english else [], seed=chat.seed)


async def _start(served: Served, chat: Chat) -> tuple[Job, int]:
    image = None
    if chat.image is not None:
        image = await image_tensor(chat.image, served.limits, served.image_size, served.image_timeout)
    prompt = build_prompt(served.tokenizer, chat.question, chat.history, image_length=served.image_length,
                          has_image=image is not None, english=chat.english)
    if len(prompt.ids) >= served.limits.max_length:
        raise bad(f"'messages': the chat is {len(prompt.ids)} tokens and the model reads at most "
                  f"{served.limits.max_length}, answer included; drop earlier turns", "messages",
                  "context_length_exceeded")
    sampling = sampling_for(chat, len(prompt.ids), served.limits)
    if len(prompt.ids) >= sampling.max_length:
        raise bad(f"'max_length' is {sampling.max_length} and the prompt alone is {len(prompt.ids)} tokens",
                  "max_length")
    job = Job(Generation(prompt, image, sampling), chat.stop, asyncio.get_running_loop())
    try:
        served.engine.submit(job)
    except QueueFull as exc:
        raise APIError(503, f"the server is busy: {exc}; retry in a moment", None, "server_busy",
                       retry_after=RETRY_AFTER_S) from None
    return job, len(prompt.ids)


async def _collect(job: Job, request: Request) -> tuple[str, str]:
    """The whole answer and its finish reason; cancels the job when the client disconnects first."""
    pieces, checked = [], time.monotonic()
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except TimeoutError:
                kind = None
            if time.monotonic() - checked > 0.25:  # text keeps coming while nobody may be listening
                checked = time.monotonic()
                if await request.is_disconnected():
                    raise ClientGone() from None
            if kind == "text":
                pieces.append(value)
            elif kind == "end":
                return "".join(pieces), value
            elif kind == "error":
                raise APIError(500, value, None, "generation_failed")
    finally:
        job.cancel()  # no-op once it ended; stops the generation when we leave early


class _Reply:
    """OpenAI's response shapes for one completion."""

    def __init__(self, model_id: str, prompt_tokens: int):
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.model_id, self.prompt_tokens = model_id, prompt_tokens

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def completion(self, text: str, reason: str, completion_tokens: int) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": reason}],
                "usage": self.usage(completion_tokens)}

    def chunk(self, delta: dict, reason: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def events(self, job: Job, include_usage: bool):
        """Server-sent events: a role chunk, content deltas, the finish reason, [usage], then [DONE]."""
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    yield self.chunk({"content": value})
                elif kind == "end":
                    yield self.chunk({}, value)
                    break
                else:  # headers are sent: the error travels as an event, as OpenAI's stream does
                    yield f"data: {json.dumps(APIError(500, value, None, 'generation_failed').body())}\n\n"
                    break
            if include_usage:
                yield self.chunk({}, usage=self.usage(job.completion_tokens), choices=False)
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # the client went away (or we are done): stop generating for it
