"""Request bodies the server accepts, checked field by field and read into one ``Chat``.

Two protocols:

- OpenAI's ``POST /v1/chat/completions``: ``messages`` of user and assistant turns (system messages are
  skipped: VisualGLM has no system role), at most one ``image_url`` part in the whole chat (upstream's chat
  shows the first turn's image on every turn), ``max_tokens`` (or ``max_completion_tokens``), ``temperature``
  (0 is greedy), ``top_p``, ``stop``, ``seed``, ``stream``, ``stream_options.include_usage``. Extra fields:
  ``language`` ("en" or "zh"; by default Chinese when the question holds a Chinese character, as upstream's
  ``api.py`` decides), ``top_k`` and ``repetition_penalty`` (upstream's sampling knobs).
- upstream's ``api.py``: ``{text, image, history, max_length, top_p, temperature}`` (``image_prompt`` in its
  first version, served at ``/v1/visual_glm``).

Absent sampling fields take upstream's chat defaults (temperature 0.8, top_p 0.4, top_k 100, repetition
penalty 1.2), not OpenAI's, so an OpenAI client gets the answers VisualGLM's own demo gives.

Every number must be finite and in its range (``RANGES``; ``max_tokens`` up to the model's length): JSON as
Python reads it admits ``NaN`` and ``Infinity``, and one NaN temperature would poison the batch it joins.
Before any field is read, ``parse_body`` holds the raw body to valid UTF-8, a bounded nesting depth and
strings without lone surrogates, so nothing later (the JSON parser's recursion, the tokenizer's encoder) can
fail on it.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict


class _Sampling(TypedDict):
    """Upstream's sampling defaults, each with its own type: top_k counts tokens, the others are real numbers."""
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float


UPSTREAM: _Sampling = {"temperature": 0.8, "top_p": 0.4, "top_k": 100, "repetition_penalty": 1.2}
_CHINESE = re.compile("[\u4e00-\u9fa5]")  # upstream's is_chinese
_DATA_URI = re.compile(r"data:(image/[\w.+-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)

# field -> (lowest, highest, integers only, lowest excluded): the ranges README's serve section documents.
# repetition_penalty divides logits: below 0.01 a large logit overflows to infinity and sampling breaks.
RANGES = {
    "temperature": (0, 2, False, False),
    "top_p": (0, 1, False, True),
    "top_k": (0, 10 ** 6, True, False),
    "repetition_penalty": (0.01, 100, False, False),
    "seed": (0, 2 ** 63 - 1, True, False),
    "n": (1, 1, True, False),
    "frequency_penalty": (-2, 2, False, False),
    "presence_penalty": (-2, 2, False, False),
    "max_length": (2, 10 ** 9, True, False),  # api.py's prompt + answer; longer means "as long as fits"
    "max_tokens": (1, None, True, False),  # None: up to the served model's length
    "max_completion_tokens": (1, None, True, False),
}
MAX_DEPTH = 32  # the deepest body either protocol needs is 5 ({messages: [{content: [{image_url: {url}}]}]})
# a JSON string, escapes included; one left open runs to the end. Possessive, and never failing once a quote
# opened: a failed match would be retried at every later quote, quadratic on '"\\"\\"\\...'
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # how a surrogate gets into a body that is valid UTF-8
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_SURROGATE = re.compile("[\ud800-\udfff]")


class APIError(Exception):
    """A request the server refuses: HTTP status, one message naming the field, OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after
        self.headers = dict(headers or {})
        if retry_after:
            self.headers["Retry-After"] = str(retry_after)

    @property
    def type(self) -> str:
        if self.status == 503:
            return "server_busy"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


@dataclass(frozen=True)
class Limits:
    """What the served model and the operator allow."""
    model_id: str
    max_length: int  # prompt + answer, in tokens
    max_image_bytes: int = 10 * 2 ** 20
    fetch_urls: bool = True  # http(s) image URLs fetched by the server (--no-url-images: refused)
    private_urls: bool = False  # URLs may lead to this machine or its networks (--allow-private-urls)


@dataclass(frozen=True)
class ImageRef:
    """Where the chat's image comes from: its bytes (base64 or a data URI) or an http(s) URL to fetch."""
    param: str  # the field it came from, for error messages
    data: bytes | None = None
    url: str | None = None


@dataclass
class Chat:
    """One question to answer, whichever protocol it came in."""
    question: str
    history: list[tuple[str, str]] = field(default_factory=list)
    image: ImageRef | None = None
    english: bool = False
    max_tokens: int | None = None  # answer tokens (OpenAI); None: as many as fit
    max_length: int | None = None  # prompt + answer tokens (api.py); None: the model's longest
    temperature: float = UPSTREAM["temperature"]
    top_p: float = UPSTREAM["top_p"]
    top_k: int = UPSTREAM["top_k"]
    repetition_penalty: float = UPSTREAM["repetition_penalty"]
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


# -- the raw body: bounded and valid before any field is read -------------------------------------------------
def parse_body(raw: bytes):
    """The body's JSON value; ``APIError`` 400 for anything the field readers could not safely walk."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"the body is not valid UTF-8 (byte {exc.start})", None, "invalid_json") from None
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise bad(f"the body nests {depth} levels deep; this server reads at most {MAX_DEPTH}", None, "invalid_json")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"malformed JSON: {exc}", None, "invalid_json") from None
    except ValueError:  # Python's cap on integer digits: a number no field could take anyway
        raise bad("malformed JSON: a number too long to read", None, "invalid_json") from None
    if _SURROGATE_ESCAPE.search(raw):  # only then can a string hold one: UTF-8 itself cannot carry them
        _refuse_lone_surrogates(value)
    return value


def nesting_depth(raw: bytes) -> int:
    """How deep the body's arrays and objects nest, counted on the bytes (strings cut out first), so a deep
    body is refused before the JSON parser recurses into it. Linear in the body, a few MB at a time."""
    import numpy as np

    brackets = np.frombuffer(_STRING.sub(b"", raw).translate(None, _NOT_BRACKET), dtype=np.uint8)
    steps = ((brackets == ord("[")) | (brackets == ord("{"))).astype(np.int8) * 2 - 1  # +1 opens, -1 closes
    depth = deepest = 0
    for start in range(0, len(steps), 2 ** 22):
        running = np.cumsum(steps[start:start + 2 ** 22], dtype=np.int64) + depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def _refuse_lone_surrogates(value) -> None:
    """A JSON escape such as \\ud800 with no partner is no character: the tokenizer cannot encode it."""
    where = _surrogate_at(value)
    if where is not None:
        where = where.lstrip(".") or None
        raise bad(f"'{where or 'body'}' holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): text "
                  f"must be valid Unicode", where, "invalid_text")


_SCALARS = (int, float, bool, type(None))


def _surrogate_at(item) -> str | None:
    """The path of the first string (or key) holding a surrogate ('' for ``item`` itself), None when none does.
    Recursive: the depth is bounded already. Paths are built only on the way back from a find."""
    if isinstance(item, str):
        return "" if _SURROGATE.search(item) else None
    children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
    for key, child in children:
        if isinstance(key, str) and _SURROGATE.search(key):  # a key: named as ascii() spells it, unquoted
            return "." + ascii(key)[1:-1]
        if isinstance(child, _SCALARS):
            continue
        found = _surrogate_at(child)
        if found is not None:
            return (f".{key}" if isinstance(key, str) else f"[{key}]") + found
    return None


def shown(value, limit: int = 40) -> str:
    """A value as an error message quotes it: a long one cut, so a message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- field readers: each names the field it refuses ------------------------------------------------------------
def _number(body: dict, name: str, hi: int | None = None):
    """``body[name]``: None when absent, else a finite number in ``RANGES[name]`` (``hi`` when it has none)."""
    value = body.get(name)
    if value is None:
        return None
    lo, top, integer, lo_open = RANGES[name]
    hi = top if top is not None else hi
    if hi is None:  # a caller's mistake, not the client's: a field without a bound of its own needs one passed
        raise TypeError(f"_number({name!r}) needs hi: RANGES gives it no upper bound")
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise bad(f"'{name}' must be {'an integer' if integer else 'a number'}, not {shown(value)}", name)
    low = f"above {lo}" if lo_open else f"at least {lo}"
    if not math.isfinite(value):  # NaN compares false with every bound: test it first
        raise bad(f"'{name}' is {value}: it must be a finite number, {low} and at most {hi}", name)
    if value < lo or value > hi or (lo_open and value == lo):
        raise bad(f"'{name}' is {shown(value)}: it must be {low} and at most {hi}", name)
    return value


def _text(value, param: str) -> str:
    if not isinstance(value, str):
        raise bad(f"'{param}' must be a string, not {type(value).__name__}", param)
    return value


def _image_from_base64(text, param: str, limits: Limits) -> ImageRef:
    text = _text(text, param).strip()
    match = _DATA_URI.match(text)
    if text.startswith("data:") and not match:
        raise bad(f"'{param}': a data URI must be data:image/...;base64,<data>", param, "invalid_image")
    payload = text[match.end():] if match else text
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise image_too_large(param, len(payload) * 3 // 4, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"'{param}': not valid base64", param, "invalid_image") from None
    if not data:
        raise bad(f"'{param}': the image is empty", param, "invalid_image")
    return ImageRef(param, data=data)


def image_too_large(param: str, size: int, limits: Limits) -> APIError:
    return APIError(413, f"'{param}': the image is {size:,} bytes; this server takes up to "
                         f"{limits.max_image_bytes:,} (--max-image-bytes)", param, "image_too_large")


def _image_part(part: dict, param: str, limits: Limits) -> ImageRef:
    spec = part.get("image_url")
    if isinstance(spec, dict):
        url, param = spec.get("url"), f"{param}.image_url.url"
    else:
        url, param = spec, f"{param}.image_url"
    url = _text(url, param)
    if url.startswith(("http://", "https://")):
        if not limits.fetch_urls:
            raise bad(f"'{param}': this server fetches no image URLs (--no-url-images); send the image as a "
                      f"data:image/...;base64 URI", param, "image_urls_disabled")
        return ImageRef(param, url=url)
    if url.startswith("data:"):
        return _image_from_base64(url, param, limits)
    raise bad(f"'{param}': expected a data:image/...;base64 URI or an http(s) URL, not {url[:40]!r}", param,
              "invalid_image")


def _user_content(content, param: str, limits: Limits) -> tuple[str, list[ImageRef]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad(f"'{param}' must be a string or a list of parts", param)
    texts, images = [], []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise bad(f"'{where}' must be an object with a 'type'", where)
        kind = part.get("type")
        if kind == "text":
            texts.append(_text(part.get("text"), f"{where}.text"))
        elif kind == "image_url":
            images.append(_image_part(part, where, limits))
        else:
            raise bad(f"'{where}.type' is {shown(kind)}: this model reads 'text' and 'image_url' parts", f"{where}.type")
    return "\n".join(texts), images


def _turns(messages, limits: Limits) -> tuple[str, list[tuple[str, str]], ImageRef | None]:
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    turns: list[tuple[str, str, str]] = []  # (role, text, where it came from)
    images: list[ImageRef] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"'{where}' must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        if role == "user":
            text, found = _user_content(message.get("content"), f"{where}.content", limits)
            images += found
        elif role == "assistant":
            content = message.get("content")
            text = _user_content(content, f"{where}.content", limits)[0] if content is not None else ""
        else:
            raise bad(f"'{where}.role' is {shown(role)}: expected user, assistant or system", f"{where}.role")
        if turns and turns[-1][0] == role:
            raise bad(f"'{where}': two {role} messages in a row; turns alternate user, assistant, user",
                      f"{where}.role")
        turns.append((role, text, where))
    if not turns or turns[0][0] != "user":
        raise bad("'messages': the chat must start with a user message", "messages")
    if turns[-1][0] != "user":
        raise bad("'messages': the last message must be the user's question", "messages")
    if len(images) > 1:
        raise bad(f"'messages': {len(images)} images; VisualGLM answers about one image per chat",
                  images[1].param, "too_many_images")
    question = turns[-1][1]
    if not question.strip():
        raise bad(f"'{turns[-1][2]}.content': the question is empty", f"{turns[-1][2]}.content")
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return question, history, images[0] if images else None


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise bad("'stop' must be a string or a list of up to 4 strings", "stop")


def _language(body: dict, question: str) -> bool:
    """True for English."""
    language = body.get("language")
    if language is None:
        return not _CHINESE.search(question)
    if language not in ("en", "zh"):
        raise bad(f"'language' is {shown(language)}: expected 'en' or 'zh' (or leave it out to decide by the question)",
                  "language")
    return language == "en"


def _sampling(body: dict, chat: Chat) -> Chat:
    temperature = _number(body, "temperature")
    top_p = _number(body, "top_p")
    top_k = _number(body, "top_k")
    penalty = _number(body, "repetition_penalty")
    chat.temperature = UPSTREAM["temperature"] if temperature is None else temperature
    chat.top_p = UPSTREAM["top_p"] if top_p is None else top_p
    chat.top_k = UPSTREAM["top_k"] if top_k is None else top_k
    chat.repetition_penalty = UPSTREAM["repetition_penalty"] if penalty is None else penalty
    chat.seed = _number(body, "seed")
    return chat


def parse_openai(body, limits: Limits) -> Chat:
    """An OpenAI chat-completions body as a ``Chat``; ``APIError`` names the first field at fault."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if model != limits.model_id:
        raise APIError(400, f"'model' is {shown(model)}: this server serves {limits.model_id!r} (GET /v1/models)",
                       "model", "model_not_found")
    question, history, image = _turns(body.get("messages"), limits)
    _number(body, "n")  # OpenAI's choices per chat: only 1
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name) not in (None, 0):
            raise bad(f"'{name}' is not supported; VisualGLM's 'repetition_penalty' (default 1.2) does that work",
                      name, "unsupported_parameter")
    chat = Chat(question, history, image, english=_language(body, question))
    tokens = _number(body, "max_tokens", limits.max_length)  # both checked: OpenAI's newer name wins
    completion = _number(body, "max_completion_tokens", limits.max_length)
    chat.max_tokens = tokens if completion is None else completion
    _sampling(body, chat)
    chat.stop = _stop(body.get("stop"))
    chat.stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        chat.include_usage = _flag(options, "include_usage", "stream_options.include_usage")
    return chat


def _flag(body: dict, name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{param or name}' must be true or false, not {shown(value)}", param or name)
    return value


def parse_legacy(body, limits: Limits, image_field: str = "image") -> Chat:
    """upstream ``api.py``'s body as a ``Chat``: ``max_length`` is prompt + answer, as there."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    question = _text(body.get("text"), "text")
    if not question.strip():
        raise bad("'text': the question is empty", "text")
    history = body.get("history") or []
    if not isinstance(history, list):
        raise bad("'history' must be a list of [question, answer] pairs", "history")
    pairs = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise bad(f"'history[{i}]' must be a [question, answer] pair of strings", f"history[{i}]")
        pairs.append((turn[0], turn[1]))
    encoded = body.get(image_field)
    image = _image_from_base64(encoded, image_field, limits) if encoded else None
    chat = Chat(question, pairs, image, english=not _CHINESE.search(question))
    # upstream's clients send its default 2048 whatever the model: a longer max_length means "as long as fits"
    max_length = _number(body, "max_length")
    chat.max_length = None if max_length is None else min(max_length, limits.max_length)
    return _sampling(body, chat)
