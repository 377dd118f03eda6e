"""Census: `porter run visualglm serve` answers every bad request a client can send with its documented HTTP
status and one OpenAI error body (``{"error": {"message", "type", "param", "code"}}``, one line, no traceback),
and goes on serving: after each case a good chat is answered.

One server for the module: the tiny preset with random weights in a child process (as ``tests/visualglm/
test_serve.py`` runs it), with an API key (every case but the key's own sends it), a 64 KiB image cap (so the body
cap is about 1.1 MB) and the default URL policy (addresses inside a network refused). The only connections made
go to that server and to a local image host on 127.0.0.1, which the loopback case points at and which must see
no request: every other address class is refused before any connection.
"""
from __future__ import annotations

import base64
import http.server
import io
import json
import struct
import threading
import zlib
from dataclasses import dataclass, field

import httpx
import pytest
from census import Case
from PIL import Image

MODEL = "visualglm-tiny"
KEY = "census-serve-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE_CAP = 64 * 1024
BODY_CAP = IMAGE_CAP * 4 // 3 + 2 ** 20  # the server's: a base64 image at the cap and the rest of a chat
CHAT = "/v1/chat/completions"
GOOD = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
NAN, INF = float("nan"), float("inf")


# -- request bodies ------------------------------------------------------------------------------------------------
def chat(*content, **fields) -> dict:
    """A chat-completions body: one user message of ``content`` parts (a string alone stays a string)."""
    message = content[0] if len(content) == 1 and isinstance(content[0], str) else list(content)
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": message}], **fields}


def image(url) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text(value) -> dict:
    return {"type": "text", "text": value}


def with_image(url) -> dict:
    return chat(image(url), text("what is it?"))


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def png(size: int = 8, noise: bool = False) -> bytes:
    out = io.BytesIO()
    picture = Image.effect_noise((size, size), 64).convert("RGB") if noise else Image.new("RGB", (size, size))
    picture.save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height pixels: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def raw(text: str) -> bytes:
    return text.encode()


# -- the table -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """One request and what it must get."""
    body: object = None  # a dict (sent as JSON, NaN and Infinity as Python writes them), bytes, or None
    status: int = 400
    path: str = CHAT
    method: str = "POST"
    headers: dict = field(default_factory=lambda: dict(AUTH))
    param: str | None = "-"  # the error's param ("-": not checked)
    code: str | None = None  # the error's code (None: not checked)
    chunked: bool = False  # sent without Content-Length
    logged: str | None = None  # what the server's log must say of it (the client's message is the same for all)


def R(id, proves, ask: Ask, variant: str | None = None):  # noqa: N802 - a table row
    """A row; rows that differ only in ``variant`` (one value of a set the server checks alike) are one case."""
    return Case(id=id, kind=id.split("/")[0], proves=proves), ask, variant


_GROUPS = {"non-finite": "NaN, Infinity or -Infinity", "wrong-type": "a string, a bool, a list or an object"}


def _group(what: str) -> str:
    if what in ("nan", "infinity", "minus-infinity"):
        return "non-finite"
    return "wrong-type" if what in ("string", "bool", "list", "object") else what


# numbers: field -> the values its documented range refuses, named (NaN and both infinities for every field)
NUMBERS = {
    "temperature": {"negative": -0.5, "too-large": 2.5, "string": "0.7", "bool": True, "list": [0.7]},
    "top_p": {"zero": 0, "negative": -0.1, "too-large": 1.5, "string": "0.4", "bool": False},
    "top_k": {"negative": -1, "too-large": 10 ** 6 + 1, "fraction": 1.5, "string": "5", "list": [5]},
    "repetition_penalty": {"zero": 0, "below-floor": 0.001, "too-large": 1000, "string": "1.2", "object": {}},
    "max_tokens": {"zero": 0, "negative": -1, "too-large": 10 ** 7, "fraction": 1.5, "string": "12", "bool": True},
    "max_completion_tokens": {"zero": 0, "too-large": 10 ** 7, "string": "12"},
    "seed": {"negative": -1, "too-large": 2 ** 64, "fraction": 0.5, "string": "7"},
    "n": {"zero": 0, "two": 2, "string": "1", "list": [1]},
    "frequency_penalty": {"negative": -3, "too-large": 3, "string": "0"},
    "presence_penalty": {"negative": -3, "too-large": 3, "bool": True},
}
LEGACY_NUMBERS = {  # upstream api.py's body, at POST /
    "max_length": {"nan": NAN, "infinity": INF, "one": 1, "string": "2048", "fraction": 64.5},
    "temperature": {"nan": NAN, "minus-infinity": -INF, "too-large": 5},
    "top_p": {"infinity": INF, "zero": 0},
    "top_k": {"nan": NAN, "negative": -1},
    "repetition_penalty": {"nan": NAN, "zero": 0},
}


def _numeric_rows() -> list:
    rows = []
    # NaN and both infinities go through one check, and so do a string, a bool, a list and an object: each of those
    # sets is one census case (its values all sent, as rows of that case); each range a field has is its own case
    for name, bad in NUMBERS.items():
        for what, value in {"nan": NAN, "infinity": INF, "minus-infinity": -INF, **bad}.items():
            rows.append(R(f"numeric/serve-{name.replace('_', '-')}-{_group(what)}",
                          f"'{name}' {_GROUPS.get(_group(what), 'out of its range')} is a 400 naming the field; the "
                          "batch it would join is untouched", Ask(chat("hi", **{name: value}), param=name), what))
    for name, bad in LEGACY_NUMBERS.items():
        for what, value in bad.items():
            rows.append(R(f"numeric/serve-api-py-{name.replace('_', '-')}-{_group(what)}",
                          f"api.py's '{name}' {_GROUPS.get(_group(what), 'out of its range')} is a 400 naming the "
                          "field", Ask({"text": "hi", name: value}, path="/", param=name), what))
    rows += [
        R("numeric/serve-number-literal-overflow", "'temperature': 1e999 (JSON's parser reads it as infinity) is a 400",
          Ask(raw('{"model": "visualglm-tiny", "temperature": 1e999, "messages": [{"role": "user", "content": "hi"}]}'),
              param="temperature")),
        R("numeric/serve-number-too-many-digits", "an integer of 5,000 digits (past Python's parsing cap) is a 400, "
          "not a 500", Ask(raw('{"max_tokens": 1' + "0" * 5000 + "}"), code="invalid_json")),
        R("numeric/serve-max-tokens-nan-beside-max-completion-tokens", "max_tokens NaN is a 400 even when "
          "max_completion_tokens (the name that wins) is valid", Ask(chat("hi", max_tokens=NAN, max_completion_tokens=2),
                                                                      param="max_tokens")),
        R("numeric/serve-first-api-py-temperature-nan", "api.py's first version (/v1/visual_glm): temperature NaN "
          "is a 400", Ask({"text": "hi", "temperature": NAN}, path="/v1/visual_glm", param="temperature")),
        R("numeric/serve-streamed-temperature-nan", "temperature NaN with stream: true is a 400 before the stream "
          "starts", Ask(chat("hi", temperature=NAN, stream=True), param="temperature")),
    ]
    return rows


def _body_rows() -> list:
    deep = "[" * 100_000
    return [
        R("serve/body-not-json", "a body cut short is a 400 'malformed JSON'", Ask(b'{"model": ', code="invalid_json")),
        R("serve/body-empty", "an empty body is a 400", Ask(b"", code="invalid_json")),
        R("serve/body-over-cap", "a body over the cap with its Content-Length is a 413 before it is read",
          Ask(b'{"pad": "' + b"x" * (BODY_CAP + 10) + b'"}', status=413, code="request_too_large")),
        R("serve/body-over-cap-chunked", "a chunked body over the cap (no Content-Length) is a 413 once the cap is "
          "passed", Ask(b'{"pad": "' + b"x" * (BODY_CAP + 10) + b'"}', status=413, code="request_too_large",
                        chunked=True)),
        R("serve/body-100000-deep", "100,000 nested arrays are a 400 found by scanning the bytes, before the JSON "
          "parser recurses", Ask(raw(deep), code="invalid_json")),
        R("serve/body-deep-valid", "valid JSON nested 40 deep inside a field is a 400 (at most 32)",
          Ask(raw('{"model": "visualglm-tiny", "x": ' + "[" * 40 + "]" * 40 + "}"), code="invalid_json")),
        R("serve/body-lone-surrogate", "a question holding an unpaired \\ud800 escape is a 400 naming the field",
          Ask(raw('{"model": "visualglm-tiny", "messages": [{"role": "user", "content": "hi \\ud800"}]}'),
              param="messages[0].content", code="invalid_text")),
        R("serve/body-lone-low-surrogate-in-key", "an unpaired \\udc00 in an object key is a 400",
          Ask(raw('{"model": "visualglm-tiny", "\\udc00": 1, "messages": [{"role": "user", "content": "hi"}]}'),
              code="invalid_text")),
        R("serve/body-lone-surrogate-api-py-history", "an unpaired surrogate in api.py's history is a 400",
          Ask(raw('{"text": "hi", "history": [["q", "\\ud83d"]]}'), path="/", code="invalid_text")),
        R("serve/body-invalid-utf8", "bytes that are not UTF-8 are a 400",
          Ask(b'{"model": "visualglm-tiny", "x": "\xc3\x28"}', code="invalid_json")),
        R("serve/body-utf16", "a UTF-16 body (JSON must be UTF-8) is a 400", Ask(json.dumps(GOOD).encode("utf-16"),
                                                                              code="invalid_json")),
        R("serve/body-array", "a JSON array body is a 400 'must be a JSON object'", Ask([GOOD])),
        R("serve/body-string", "a JSON string body is a 400", Ask(raw('"hello"'))),
        R("serve/body-null", "a JSON null body is a 400", Ask(raw("null"))),
        R("serve/model-unknown", "a model this server does not serve is a 400 naming 'model'",
          Ask({**GOOD, "model": "gpt-4o"}, param="model", code="model_not_found")),
        R("serve/model-missing", "a chat without 'model' is a 400", Ask({"messages": GOOD["messages"]}, param="model")),
        R("serve/messages-not-a-list", "'messages' as a string is a 400", Ask({**GOOD, "messages": "hi"},
                                                                             param="messages")),
        R("serve/messages-empty", "an empty 'messages' is a 400", Ask({**GOOD, "messages": []}, param="messages")),
        R("serve/message-not-an-object", "a message that is a string is a 400 naming it",
          Ask({**GOOD, "messages": ["hi"]}, param="messages[0]")),
        R("serve/role-unknown", "role 'tool' is a 400 naming the role",
          Ask({**GOOD, "messages": [{"role": "tool", "content": "x"}]}, param="messages[0].role")),
        R("serve/role-missing", "a message without a role is a 400",
          Ask({**GOOD, "messages": [{"content": "x"}]}, param="messages[0].role")),
        R("serve/roles-not-alternating", "two user messages in a row are a 400",
          Ask({**GOOD, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
              param="messages[1].role")),
        R("serve/last-message-assistant", "a chat ending with the assistant is a 400",
          Ask({**GOOD, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
              param="messages")),
        R("serve/question-blank", "a question of spaces is a 400", Ask(chat("   "), param="messages[0].content")),
        R("serve/content-number", "content 42 is a 400 naming it", Ask({**GOOD, "messages": [{"role": "user", "content": 42}]},
                                                               param="messages[0].content")),
        R("serve/content-part-not-object", "a content part that is a string is a 400",
          Ask(chat("a", "b"), param="messages[0].content[0]")),
        R("serve/content-part-unknown-type", "an input_audio part is a 400 naming its type",
          Ask(chat({"type": "input_audio", "input_audio": {}}, text("q")), param="messages[0].content[0].type")),
        R("serve/text-part-not-string", "a text part whose text is a list is a 400",
          Ask(chat(text(["q"])), param="messages[0].content[0].text")),
        R("serve/stream-not-bool", "stream 'yes' is a 400", Ask(chat("hi", stream="yes"), param="stream")),
        R("serve/stream-options-not-object", "stream_options [] is a 400",
          Ask(chat("hi", stream_options=[]), param="stream_options")),
        R("serve/include-usage-not-bool", "stream_options.include_usage 'yes' is a 400",
          Ask(chat("hi", stream_options={"include_usage": "yes"}), param="stream_options.include_usage")),
        R("serve/stop-too-many", "five stop strings are a 400", Ask(chat("hi", stop=list("abcde")), param="stop")),
        R("serve/stop-wrong-type", "stop 7 is a 400", Ask(chat("hi", stop=7), param="stop")),
        R("serve/language-unknown", "language 'fr' is a 400", Ask(chat("hi", language="fr"), param="language")),
        R("serve/chat-too-long", "a 300,000-character question is a 400 before it is tokenized",
          Ask(chat("x" * 300_000), code="context_length_exceeded")),
        R("serve/api-py-text-missing", "api.py's body without text is a 400 naming 'text'",
          Ask({"image": "", "history": []}, path="/", param="text")),
        R("serve/api-py-history-not-list", "api.py's history as a string is a 400",
          Ask({"text": "hi", "history": "none"}, path="/", param="history")),
        R("serve/api-py-history-pair-wrong", "api.py's history turn of one string is a 400 naming it",
          Ask({"text": "hi", "history": [["only"]]}, path="/", param="history[0]")),
        R("serve/api-py-body-array", "api.py's route given a JSON array is a 400", Ask([1, 2], path="/")),
        R("serve/api-py-image-not-base64", "api.py's image that is not base64 is a 400 naming 'image'",
          Ask({"text": "hi", "image": "not base64!"}, path="/", param="image", code="invalid_image")),
        R("serve/api-py-first-image-not-an-image", "image_prompt holding base64 of text is a 400",
          Ask({"text": "hi", "image_prompt": base64.b64encode(b"hello").decode()}, path="/v1/visual_glm",
              param="image_prompt", code="invalid_image")),
    ]


IMAGE_PARAM = "messages[0].content[0].image_url.url"


def _image_rows() -> list:
    return [
        R("serve/image-url-not-string", "an image_url that is a number is a 400",
          Ask(chat({"type": "image_url", "image_url": 5}, text("q")), param="messages[0].content[0].image_url")),
        R("serve/image-url-file-scheme", "a file:// image URL is a 400 (data: or http(s) only)",
          Ask(with_image("file:///etc/passwd"), param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-url-ftp-scheme", "an ftp:// image URL is a 400", Ask(with_image("ftp://example.com/a.png"),
                                                                         param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-data-uri-not-image", "a data:text/plain URI is a 400",
          Ask(with_image("data:text/plain,hello"), param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-base64-invalid", "a data URI whose base64 is broken is a 400",
          Ask(with_image("data:image/png;base64,@@@@"), param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-base64-empty", "a data URI with nothing after base64, is a 400",
          Ask(with_image("data:image/png;base64,"), param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-not-an-image", "base64 of a few text bytes is a 400 'unreadable image'",
          Ask(with_image(data_uri(b"hello, not a picture")), param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-truncated-png", "the first half of a PNG is a 400",
          Ask(with_image(data_uri(png(64, noise=True)[:2000])), param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-bomb", "a 60-byte PNG claiming 30000x30000 pixels is a 400 before any pixel is decoded",
          Ask(with_image(data_uri(bomb(30000, 30000))), param=IMAGE_PARAM, code="invalid_image")),
        R("serve/image-bomb-warning-size", "a PNG claiming 10000x10000 (over Pillow's limit, under its hard "
          "error) is a 400 too", Ask(with_image(data_uri(bomb(10000, 10000))), param=IMAGE_PARAM,
                                    code="invalid_image")),
        R("serve/image-over-cap", "an image over --max-image-bytes is a 413 naming it",
          Ask(with_image(data_uri(png(220, noise=True))), status=413, param=IMAGE_PARAM, code="image_too_large")),
        R("serve/image-two", "two images in a chat are a 400 naming the second",
          Ask(chat(image(data_uri(png())), image(data_uri(png())), text("q")),
              param="messages[0].content[1].image_url.url", code="too_many_images")),
    ]


# image URLs: every address class a client could aim the server at inside its network; none is connected to
PRIVATE_URLS = {
    "loopback": "http://127.0.0.1:{port}/ok.png",  # the live image host: it must see no request
    "loopback-name": "http://localhost:{port}/ok.png",
    "loopback-short": "http://127.1:{port}/ok.png",
    "loopback-decimal": "http://2130706433:{port}/ok.png",
    "loopback-ipv6": "http://[::1]:{port}/ok.png",
    "ipv4-mapped-loopback": "http://[::ffff:127.0.0.1]:{port}/ok.png",
    "userinfo-trick": "http://example.com@127.0.0.1:{port}/ok.png",
    "private-10": "http://10.0.0.1/ok.png",
    "private-172-16": "http://172.16.0.1/ok.png",
    "private-192-168": "http://192.168.0.1/ok.png",
    "link-local-metadata": "http://169.254.169.254/latest/meta-data/",
    "link-local-ipv6": "http://[fe80::1]/ok.png",
    "unique-local-ipv6": "http://[fd00::1]/ok.png",
    "unspecified": "http://0.0.0.0:{port}/ok.png",
    "multicast": "http://224.0.0.1/ok.png",
    "reserved": "http://240.0.0.1/ok.png",
    "shared-cgnat": "http://100.64.0.1/ok.png",
    "malformed": "http://[::1/ok.png",
}


def _url_rows() -> list:
    # the client gets one message whatever failed; the server's log says why, which is what proves the address was
    # refused before any connection (and not, say, that a connection to it failed)
    return [R(f"serve/image-url-{what}", f"an image URL to {url.split('/')[2].format(port='PORT')} is refused "
              "unless --allow-private-urls, with the one message every failed fetch gives, without connecting",
              Ask(with_image(url), param=IMAGE_PARAM, code="image_fetch_failed",
                  logged=None if what == "malformed" else "not a public address"))
            for what, url in PRIVATE_URLS.items()]


def _auth_rows() -> list:
    wrong = {"Authorization": "Bearer not-the-key"}
    return [
        R("serve/auth-missing", "a chat without Authorization is a 401 in OpenAI's shape",
          Ask(GOOD, status=401, headers={}, code="invalid_api_key")),
        R("serve/auth-wrong-key", "a wrong key is a 401", Ask(GOOD, status=401, headers=wrong, code="invalid_api_key")),
        R("serve/auth-key-prefix", "the key less its last character is a 401",
          Ask(GOOD, status=401, headers={"Authorization": f"Bearer {KEY[:-1]}"}, code="invalid_api_key")),
        R("serve/auth-key-longer", "the key plus a character is a 401",
          Ask(GOOD, status=401, headers={"Authorization": f"Bearer {KEY}x"}, code="invalid_api_key")),
        R("serve/auth-basic-scheme", "the key under the Basic scheme is a 401",
          Ask(GOOD, status=401, headers={"Authorization": f"Basic {KEY}"}, code="invalid_api_key")),
        R("serve/auth-empty-bearer", "'Bearer' with no key is a 401",
          Ask(GOOD, status=401, headers={"Authorization": "Bearer"}, code="invalid_api_key")),
        R("serve/auth-models-route", "GET /v1/models without the key is a 401",
          Ask(None, status=401, path="/v1/models", method="GET", headers={}, code="invalid_api_key")),
        R("serve/auth-api-py-route", "POST / (api.py) without the key is a 401, before its body is read",
          Ask({"text": "hi"}, status=401, path="/", headers={}, code="invalid_api_key")),
        R("serve/auth-first-api-py-route", "POST /v1/visual_glm without the key is a 401",
          Ask({"text": "hi"}, status=401, path="/v1/visual_glm", headers=wrong, code="invalid_api_key")),
        R("serve/auth-before-body-checks", "a bad body without the key is a 401, not a 400: nothing is parsed for "
          "a stranger", Ask(raw("[" * 1000), status=401, headers={}, code="invalid_api_key")),
        R("serve/route-unknown", "an unknown path is a 404 in OpenAI's shape",
          Ask(GOOD, status=404, path="/v1/completions", code="not_found")),
        R("serve/route-wrong-method", "GET on the chat route is a 405 in OpenAI's shape",
          Ask(None, status=405, method="GET", code="method_not_allowed")),
    ]


ROWS = _numeric_rows() + _body_rows() + _image_rows() + _url_rows() + _auth_rows()
CASES = list({row[0].id: row[0] for row in ROWS}.values())  # a case once, however many variant rows it has


# -- the server and the image host --------------------------------------------------------------------------------
class _Host(http.server.BaseHTTPRequestHandler):
    """A local image host the loopback cases point at; it counts the requests it gets (it must get none)."""
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        body = png()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_port():
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Host)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield host.server_address[1]
    host.shutdown()


@pytest.fixture(scope="module")
def server():
    from porter_visualglm.serving.local import LocalServer

    with LocalServer("--api-key", KEY, "--max-image-bytes", IMAGE_CAP, "--image-timeout", "2") as s:
        yield s


def send(server, ask: Ask, port: int) -> httpx.Response:
    if isinstance(ask.body, (dict, list)):
        content = json.dumps(ask.body).replace("{port}", str(port)).encode()  # NaN, Infinity as Python writes them
    else:
        content = ask.body
    headers = {**ask.headers, "Content-Type": "application/json"} if content is not None else ask.headers
    if ask.chunked:  # an iterator: httpx sends Transfer-Encoding: chunked, no Content-Length
        content = iter([content[i:i + 65536] for i in range(0, len(content), 65536)])
    return httpx.request(ask.method, f"{server.url}{ask.path}", content=content, headers=headers, timeout=60)


@pytest.mark.parametrize("case,ask,variant", ROWS,
                         ids=[row[0].id + (f"[{row[2]}]" if row[2] else "") for row in ROWS])
def test_each_bad_request_gets_its_status_and_one_error_line_and_the_server_goes_on(server, image_port, case, ask,
                                                                                   variant):
    hits, logged = _Host.hits, len(server.stderr)
    r = send(server, ask, image_port)
    assert r.status_code == ask.status, r.text[:500]
    assert "Traceback" not in r.text and "File \"" not in r.text
    body = r.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message and "\n" not in message and len(message) < 400, message
    if ask.param != "-":
        assert body["error"]["param"] == ask.param, body
    if ask.code is not None:
        assert body["error"]["code"] == ask.code, body
    if ask.status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert _Host.hits == hits  # no URL reached the image host
    if ask.logged:
        import time

        deadline = time.monotonic() + 5  # the server's stderr is read by a thread
        while not any(ask.logged in line for line in server.stderr[logged:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(ask.logged in line for line in server.stderr[logged:]), server.stderr[logged:]
    good = httpx.post(f"{server.url}{CHAT}", json=GOOD, headers=AUTH, timeout=60)
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 1
