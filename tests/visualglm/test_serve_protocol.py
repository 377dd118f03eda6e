"""Request bodies in, ``Chat`` or the ``APIError`` naming the field out: OpenAI's chat completions and
upstream's api.py, every fault a client can make."""
import base64
import io

import pytest
from PIL import Image
from porter_visualglm.serving.protocol import (
    UPSTREAM,
    APIError,
    Limits,
    nesting_depth,
    parse_body,
    parse_legacy,
    parse_openai,
)

LIMITS = Limits("visualglm-tiny", max_length=256, max_image_bytes=4096)


def png(size=8) -> str:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def body(*messages, **fields):
    return {"model": "visualglm-tiny", "messages": list(messages), **fields}


def user(*parts):
    return {"role": "user", "content": list(parts) if len(parts) != 1 or not isinstance(parts[0], str) else parts[0]}


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text):
    return {"type": "text", "text": text}


def refused(parse, payload, status=400):
    with pytest.raises(APIError) as info:
        parse(payload, LIMITS)
    assert info.value.status == status
    err = info.value.body()["error"]
    assert err["message"] and err["type"] in ("invalid_request_error", "server_busy")
    return info.value


def test_a_multimodal_chat_becomes_question_history_and_image():
    chat = parse_openai(body(
        {"role": "system", "content": "You are helpful."},
        user(image_part(f"data:image/png;base64,{png()}"), text_part("What's in the image?")),
        {"role": "assistant", "content": "a red square"},
        user("What colour is it?"),
        max_tokens=12, temperature=0, stop=["\n"], seed=7, stream=True, stream_options={"include_usage": True}),
        LIMITS)
    assert chat.question == "What colour is it?"
    assert chat.history == [("What's in the image?", "a red square")]
    assert chat.image.data.startswith(b"\x89PNG") and chat.image.param == "messages[1].content[0].image_url.url"
    assert (chat.max_tokens, chat.temperature, chat.stop, chat.seed, chat.stream, chat.include_usage) == \
        (12, 0, ("\n",), 7, True, True)
    assert chat.english


def test_absent_sampling_fields_take_upstreams_chat_defaults():
    chat = parse_openai(body(user("图片里有什么？")), LIMITS)
    assert (chat.temperature, chat.top_p, chat.top_k, chat.repetition_penalty) == tuple(UPSTREAM.values())
    assert not chat.english  # a Chinese question: Chinese mode, as api.py decides
    assert parse_openai(body(user("图片里有什么？"), language="en"), LIMITS).english
    assert chat.image is None and chat.max_tokens is None


def test_an_http_image_is_kept_as_a_url_to_fetch():
    chat = parse_openai(body(user(image_part("https://example.com/cat.png"), text_part("hi"))), LIMITS)
    assert chat.image.url == "https://example.com/cat.png" and chat.image.data is None


@pytest.mark.parametrize("payload, param, words", [
    ([], None, "JSON object"),
    (body(user("hi"), model="gpt-4o"), "model", "serves 'visualglm-tiny'"),
    ({"messages": [user("hi")]}, "model", "serves"),
    (body(), "messages", "non-empty list"),
    ({"model": "visualglm-tiny", "messages": "hi"}, "messages", "non-empty list"),
    (body({"role": "assistant", "content": "hello"}), "messages", "start with a user message"),
    (body({"role": "system", "content": "be nice"}), "messages", "start with a user message"),
    (body(user("hi"), {"role": "assistant", "content": "yo"}), "messages", "last message"),
    (body(user("hi"), user("again")), "messages[1].role", "two user messages in a row"),
    (body({"role": "tool", "content": "x"}), "messages[0].role", "expected user, assistant"),
    (body(user("  ")), "messages[0].content", "empty"),
    (body(user(image_part(f"data:image/png;base64,{png()}"), image_part(f"data:image/png;base64,{png()}"),
               text_part("compare"))), "messages[0].content[1].image_url.url", "2 images"),
    (body(user(image_part("data:image/png;base64,%%%notbase64"), text_part("q"))),
     "messages[0].content[0].image_url.url", "not valid base64"),
    (body(user(image_part("data:text/plain,hello"), text_part("q"))), "messages[0].content[0].image_url.url",
     "data:image"),
    (body(user(image_part("file:///etc/passwd"), text_part("q"))), "messages[0].content[0].image_url.url",
     "http(s) URL"),
    (body(user({"type": "input_audio", "input_audio": {}})), "messages[0].content[0].type", "'text' and 'image_url'"),
    (body(user("hi"), max_tokens=-5), "max_tokens", "at least 1"),
    (body(user("hi"), max_tokens=0), "max_tokens", "at least 1"),
    (body(user("hi"), max_tokens=10 ** 9), "max_tokens", "at most 256"),
    (body(user("hi"), max_tokens="12"), "max_tokens", "an integer"),
    (body(user("hi"), max_tokens=True), "max_tokens", "an integer"),
    (body(user("hi"), temperature=3), "temperature", "at most 2"),
    (body(user("hi"), top_p=0), "top_p", "above 0"),
    (body(user("hi"), n=2), "n", "at most 1"),
    (body(user("hi"), stop=["a", "b", "c", "d", "e"]), "stop", "up to 4"),
    (body(user("hi"), stream="yes"), "stream", "true or false"),
    (body(user("hi"), language="fr"), "language", "'en' or 'zh'"),
    (body(user("hi"), frequency_penalty=0.5), "frequency_penalty", "repetition_penalty"),
])
def test_each_bad_field_is_a_400_that_names_it(payload, param, words):
    err = refused(parse_openai, payload)
    assert err.param == param
    assert words in err.message


def test_an_image_over_the_cap_is_a_413_before_decoding():
    big = base64.b64encode(b"\x89PNG" + b"0" * 8000).decode()
    err = refused(parse_openai, body(user(image_part(f"data:image/png;base64,{big}"), text_part("q"))), 413)
    assert err.code == "image_too_large" and "4,096" in err.message


def test_the_old_api_py_body_reads_as_upstream_sends_it():
    chat = parse_legacy({"text": "这是什么？", "image": png(), "history": [["你好", "你好！"]], "max_length": 2048,
                         "top_p": 0.4, "temperature": 0.8}, LIMITS)
    assert chat.question == "这是什么？" and chat.history == [("你好", "你好！")] and not chat.english
    assert chat.max_length == 256  # upstream's 2048 default: as long as this model takes
    assert chat.image.param == "image"
    first = parse_legacy({"text": "what?", "image_prompt": png(), "history": []}, LIMITS, image_field="image_prompt")
    assert first.english and first.image.data


@pytest.mark.parametrize("payload, param", [
    ({"image": png()}, "text"),
    ({"text": "hi", "history": "none"}, "history"),
    ({"text": "hi", "history": [["only one"]]}, "history[0]"),
    ({"text": "hi", "image": "not base64!"}, "image"),
    ({"text": "hi", "top_p": 1.5}, "top_p"),
    ({"text": "hi", "max_length": 1}, "max_length"),
])
def test_old_protocol_faults_name_the_field(payload, param):
    assert refused(parse_legacy, payload).param == param


def test_a_server_that_fetches_no_urls_refuses_them_and_still_takes_data_uris():
    from dataclasses import replace

    closed = replace(LIMITS, fetch_urls=False)
    with pytest.raises(APIError) as info:
        parse_openai(body(user(image_part("http://10.0.0.1/secret.png"), text_part("q"))), closed)
    assert info.value.status == 400 and info.value.code == "image_urls_disabled" and "--no-url-images" in \
        info.value.message
    assert parse_openai(body(user(image_part(f"data:image/png;base64,{png()}"), text_part("q"))), closed).image.data


# -- numbers: finite and in range, on both protocols ------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
NUMERIC = {  # field -> values its range refuses (beyond NaN and the infinities, refused for every field)
    "temperature": [-0.1, 2.01, "0.7", True, [0.7]],
    "top_p": [0, -0.5, 1.01, "0.4", False],
    "top_k": [-1, 10 ** 6 + 1, 1.5, "5", True],
    "repetition_penalty": [0, 0.001, 100.5, "1.2", {}],
    "seed": [-1, 2 ** 63, 1.5, "7"],
    "n": [0, 2, 1.0, "1"],
    "frequency_penalty": [-2.5, 2.5, "0"],
    "presence_penalty": [-2.5, 2.5, [0]],
    "max_tokens": [0, -3, 257, 1.5, "12", True],
    "max_completion_tokens": [0, 10 ** 9, 2.0],
}


@pytest.mark.parametrize("name, value", [(name, v) for name, values in NUMERIC.items()
                                         for v in [NAN, INF, -INF, *values]])
def test_every_numeric_field_must_be_finite_and_in_range(name, value):
    err = refused(parse_openai, body(user("hi"), **{name: value}))
    assert err.param == name and f"'{name}'" in err.message


@pytest.mark.parametrize("name, value", [("max_length", NAN), ("max_length", INF), ("max_length", 1),
                                         ("max_length", "2048"), ("temperature", NAN), ("top_p", INF),
                                         ("top_k", -INF), ("repetition_penalty", NAN), ("seed", NAN)])
def test_the_old_protocol_checks_its_numbers_too(name, value):
    assert refused(parse_legacy, {"text": "hi", name: value}).param == name


def test_null_is_openais_absent_and_takes_the_default():
    chat = parse_openai(body(user("hi"), temperature=None, top_p=None, max_tokens=None, n=None, seed=None), LIMITS)
    assert (chat.temperature, chat.top_p, chat.max_tokens, chat.seed) == (UPSTREAM["temperature"],
                                                                           UPSTREAM["top_p"], None, None)


def test_a_long_value_is_cut_in_the_message():
    err = refused(parse_openai, body(user("hi"), temperature="x" * 100_000))
    assert len(err.message) < 200


# -- the raw body ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, code, words", [
    (b"[" * 100_000, "invalid_json", "100000 levels deep"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "invalid_json", "41 levels deep"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_text", "lone UTF-16"),
    (b'{"\\udc00": 1}', "invalid_text", "lone UTF-16"),
    (b'{"t": "\xff"}', "invalid_json", "not valid UTF-8"),
    ('{"t": 1}'.encode("utf-16"), "invalid_json", "not valid UTF-8"),
    (b"", "invalid_json", "malformed JSON"),
    (b'{"model": ', "invalid_json", "malformed JSON"),
    (b'{"n": 1' + b"0" * 5000 + b"}", "invalid_json", "too long"),
])
def test_a_body_is_bounded_and_valid_before_any_field_is_read(raw, code, words):
    with pytest.raises(APIError) as info:
        parse_body(raw)
    assert (info.value.status, info.value.code) == (400, code) and words in info.value.message


def test_the_depth_scan_ignores_brackets_inside_strings_and_keeps_pairs():
    assert nesting_depth(b'{"a": "[[[[[[\\"[[[", "b": [[1], {"c": []}]}') == 4
    assert parse_body('{"q": "😀 \\ud83d\\ude00 [[["}'.encode())["q"] == "😀 😀 [[["  # a surrogate pair is one character
    assert parse_body(b"  [1, 2] ") == [1, 2]


@pytest.mark.parametrize("raw", [b'"\\' * 100_000, b'"a",' * 100_000, b'"' + b"\\a" * 100_000 + b"\\",
                                 b"[]" * 100_000, b"[" * 200_000])
def test_the_depth_scan_is_linear_on_hostile_bodies(raw):
    import time

    started = time.monotonic()
    nesting_depth(raw)  # a scan that retried at every quote would take minutes here
    assert time.monotonic() - started < 5


def test_a_lone_surrogate_is_named_by_its_path():
    with pytest.raises(APIError) as info:
        parse_body(b'{"a": {"b": [1, {"c": ["x", "\\udfff"]}]}}')
    assert info.value.param == "a.b[1].c[1]"


def test_both_names_of_the_answer_length_are_checked_and_the_newer_wins():
    assert parse_openai(body(user("hi"), max_tokens=5, max_completion_tokens=7), LIMITS).max_tokens == 7
    assert refused(parse_openai, body(user("hi"), max_tokens=NAN, max_completion_tokens=7)).param == "max_tokens"
