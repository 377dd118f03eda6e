"""The FastAPI application: routes, request checking, streaming, and errors as OpenAI-style JSON bodies.

Routes: ``POST /v1/chat/completions`` (OpenAI), ``GET /v1/models``, ``POST /`` and ``POST /v1/visual_glm``
(upstream's ``api.py``, current and first version), ``GET /health``, and the chat page at ``GET /``.
Every request ends in an answer: a fault in the request is a 400 or 413 naming the field, a full queue a 503
with Retry-After, and anything unexpected a 500 with the error's one line (the traceback goes to the log).

With an API key (``--api-key`` or ``PORTER_SERVE_API_KEY``) every API route wants ``Authorization: Bearer KEY``
(401 otherwise). The chat page's files and ``/health`` (a load balancer's probe: counters, no content) stay
open: the page asks for the key when the API refuses it.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..chat import build_prompt
from ..generate import Request as Generation
from ..generate import Sampling
from ..tokenizer import ENGLISH_BAN
from .engine import Engine, Job, QueueFull, one_line
from .image_input import image_tensor
from .protocol import APIError, Chat, Limits, bad, parse_body, parse_legacy, parse_openai, shown

STATIC = Path(__file__).parent / "static"
RETRY_AFTER_S = 2
CHARS_PER_TOKEN = 80  # the most characters one ChatGLM token covers (<|blank_80|>): a longer chat cannot fit


@dataclass
class Served:
    """What the routes need: the engine and the model's facts."""
    engine: Engine
    tokenizer: object
    limits: Limits
    image_size: int
    image_length: int
    image_timeout: float = 10.0
    api_key: str | None = None  # None: no key asked


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def create_app(served: Served) -> FastAPI:
    app = FastAPI(title="porter: VisualGLM", docs_url="/docs", redoc_url=None)
    app.state.served = served
    _error_handlers(app)
    authorized = Depends(_key_check(served.api_key))

    @app.get("/health")
    async def health():
        e = served.engine
        return {"status": "ok", "model": served.limits.model_id, "waiting": e.waiting, "running": e.running,
                "max_batch": e.max_batch, "max_waiting": e.max_waiting, "batches": e.batches, "steps": e.steps,
                "tokens": e.tokens, "cancelled": e.cancelled, "batching": "continuous" if e.continuous else "static"}

    @app.get("/v1/models", dependencies=[authorized])
    async def models():
        return {"object": "list", "data": [{"id": served.limits.model_id, "object": "model", "created": 0,
                                            "owned_by": "porter"}]}

    @app.post("/v1/chat/completions", dependencies=[authorized])
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

    @app.post("/", dependencies=[authorized])
    async def api_py(request: Request):
        return await legacy(request, "image")

    @app.post("/v1/visual_glm", dependencies=[authorized])
    async def api_py_first(request: Request):
        return await legacy(request, "image_prompt")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every answer that is not a 2xx is OpenAI's error body: a client reads one shape whatever failed."""

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # no such route (404), wrong method (405)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        error = APIError(exc.status_code, f"{request.method} {shown(request.url.path, 80)}: {exc.detail}", None,
                         code, headers=exc.headers)  # the path quoted and cut: it is the client's text
        return JSONResponse(error.body(), status_code=exc.status_code, headers=error.headers or None)

    @app.exception_handler(ClientGone)
    async def client_gone(request, exc):
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        traceback.print_exception(exc, file=sys.stderr)
        return JSONResponse(APIError(500, f"internal error: {one_line(exc)}").body(), status_code=500)


def _key_check(api_key: str | None):
    """A dependency that refuses a request without ``Authorization: Bearer <api_key>`` (nothing when no key)."""
    # digests of equal length compared in constant time: neither the key's bytes nor its length leak by timing
    wanted = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def check(request: Request) -> None:
        if wanted is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(given.strip().encode("latin-1")).digest()  # the header's bytes, as sent
        if not (hmac.compare_digest(digest, wanted) and scheme.lower() == "bearer"):
            raise APIError(401, "this server wants its API key: send 'Authorization: Bearer KEY' (the key given "
                                "to serve --api-key or PORTER_SERVE_API_KEY)", None, "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return check


async def _json(request: Request, limits: Limits):
    """The body's JSON, read no further than the cap (a body without Content-Length included)."""
    cap = limits.max_image_bytes * 4 // 3 + 2 ** 20  # a base64 image at the cap, and the rest of a chat

    def too_large(size: str) -> APIError:
        return APIError(413, f"the request is {size} bytes; this server takes up to {cap:,}", None,
                        "request_too_large")

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large(f"{int(declared):,}")  # before reading it
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > cap:  # sent without a length (chunked), or longer than it said
            raise too_large(f"over {cap:,}")
    return parse_body(bytes(raw))


def sampling_for(chat: Chat, prompt_tokens: int, limits: Limits) -> Sampling:
    longest = min(limits.max_length, chat.max_length or limits.max_length)
    if chat.max_tokens is not None:
        longest = min(longest, prompt_tokens + chat.max_tokens)
    greedy = chat.temperature == 0
    return Sampling(max_length=longest, top_p=1.0 if greedy else chat.top_p, top_k=1 if greedy else chat.top_k,
                    temperature=1.0 if greedy else chat.temperature, repetition_penalty=chat.repetition_penalty,
                    invalid_slices=[ENGLISH_BAN] if chat.english else [], seed=chat.seed)


def _refuse_overlong(chat: Chat, limits: Limits) -> None:
    """A chat too long for the model, found by counting characters: tokenizing megabytes on the event loop
    would stall every other request."""
    chars = len(chat.question) + sum(len(q) + len(a) for q, a in chat.history)
    if chars > CHARS_PER_TOKEN * limits.max_length:
        raise bad(f"'messages': the chat is {chars:,} characters, more than the {limits.max_length} tokens the model "
                  f"reads; drop earlier turns", "messages", "context_length_exceeded")


async def _start(served: Served, chat: Chat) -> tuple[Job, int]:
    _refuse_overlong(chat, served.limits)
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
