"""Request bodies in, ``Chat`` or the ``APIError`` naming the field out: OpenAI's chat completions and
upstream's api.py, every fault a client can make."""
import base64
import io

import pytest
from PIL import Image
from porter_visualglm.serving.protocol import UPSTREAM, APIError, Limits, parse_legacy, parse_openai

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
