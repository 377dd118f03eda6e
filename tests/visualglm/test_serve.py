"""`porter run visualglm serve` in a child process on a free localhost port, used as its clients use it: the
official `openai` client (streaming and not), plain HTTP for upstream's api.py protocol, and raw bodies for every
fault a client can make. Answers are checked against the same generation run in this process."""
import base64
import http.server
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image
from porter_visualglm import chat as chat_format
from porter_visualglm.assets import tokenizer_for, tokenizer_type_of
from porter_visualglm.checkpoint import load_model
from porter_visualglm.evaluate import held_out
from porter_visualglm.generate import Sampling, stream
from porter_visualglm.images import load_image
from porter_visualglm.serving.local import LocalServer
from porter_visualglm.tokenizer import ENGLISH_BAN

pytestmark = pytest.mark.slow
NAME = "visualglm-taught"
IMAGE_CAP = 64 * 1024


@pytest.fixture(scope="module")
def server(taught_checkpoint):
    # --allow-private-urls: the image host these tests fetch from is on 127.0.0.1
    with LocalServer("--from_pretrained", taught_checkpoint, "--model-name", NAME, "--max-batch", "4",
                     "--max-image-bytes", IMAGE_CAP, "--image-timeout", "2", "--allow-private-urls") as s:
        yield s


@pytest.fixture(scope="module")
def local(taught_checkpoint):
    """The same checkpoint in this process: what the server must answer."""
    model, ckpt = load_model(taught_checkpoint)
    return model.eval(), tokenizer_for(tokenizer_type_of(ckpt), None), ckpt.config.vision.image_size


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


QUESTIONS = held_out()[:4]


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def expected(local, image_path, question, history=(), english=False, max_new=64):
    model, tokenizer, size = local
    image = load_image(image_path, size) if image_path else None
    prompt = chat_format.build_prompt(tokenizer, question, history, image_length=model.image_length,
                                      has_image=image is not None, english=english)
    # temperature 0 on the API: the most likely token, after upstream's default repetition penalty
    sampling = Sampling(max_length=min(256, len(prompt.ids) + max_new), top_k=1, top_p=1.0, temperature=1.0,
                        repetition_penalty=1.2, invalid_slices=[ENGLISH_BAN] if english else [])
    return "".join(stream(model, tokenizer, prompt, image, sampling))


def ask(image_path, question):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(image_path)}},
                                         {"type": "text", "text": question}]}]


def test_models_lists_the_served_id(client):
    assert [m.id for m in client.models.list().data] == [NAME]


@pytest.mark.parametrize("item", QUESTIONS, ids=lambda q: q.prompt)
def test_a_greedy_answer_is_what_the_model_says_in_process(client, local, item):
    reply = client.chat.completions.create(model=NAME, messages=ask(item.image, item.prompt), temperature=0,
                                           max_tokens=64, extra_body={"language": "zh"})
    want = expected(local, item.image, item.prompt)
    assert reply.choices[0].message.content == want and want
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and 0 < usage.completion_tokens <= 64


def test_streamed_deltas_join_to_the_same_answer_and_end_with_usage(client, local):
    item = QUESTIONS[0]
    chunks = list(client.chat.completions.create(model=NAME, messages=ask(item.image, item.prompt), temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"language": "zh"}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(local, item.image, item.prompt)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["stop"],
                                                                                                        ["length"])
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it did stream


def test_assistant_turns_become_the_history_and_english_is_chosen_by_the_question(client, local):
    item = QUESTIONS[0]
    messages = ask(item.image, "What's in the image?") + [
        {"role": "assistant", "content": "a red circle"}, {"role": "user", "content": "And the background?"}]
    reply = client.chat.completions.create(model=NAME, messages=messages, temperature=0)
    assert reply.choices[0].message.content == expected(local, item.image, "And the background?",
                                                        [("What's in the image?", "a red circle")], english=True)


def test_stop_ends_the_answer_before_the_stop_string(client, local):
    item = QUESTIONS[1]
    full = expected(local, item.image, item.prompt)
    cut = full[len(full) // 2:][:2]
    reply = client.chat.completions.create(model=NAME, messages=ask(item.image, item.prompt), temperature=0,
                                           stop=[cut], extra_body={"language": "zh"})
    assert reply.choices[0].message.content == full[:full.index(cut)]
    assert reply.choices[0].finish_reason == "stop"


def test_max_tokens_caps_the_answer(client):
    item = QUESTIONS[0]
    reply = client.chat.completions.create(model=NAME, messages=ask(item.image, item.prompt), max_tokens=2,
                                           temperature=0)
    assert reply.usage.completion_tokens == 2 and reply.choices[0].finish_reason == "length"


def test_a_seed_makes_sampling_repeat(client):
    item = QUESTIONS[2]
    kw = dict(model=NAME, messages=ask(item.image, item.prompt), temperature=1.0, top_p=1.0, seed=11, max_tokens=20)
    first = client.chat.completions.create(**kw).choices[0].message.content
    assert client.chat.completions.create(**kw).choices[0].message.content == first


def test_the_old_api_py_protocol(server, local):
    item = QUESTIONS[1]
    image = base64.b64encode(open(item.image, "rb").read()).decode()
    r = httpx.post(f"{server.url}/", json={"text": item.prompt, "image": image, "history": [], "max_length": 2048,
                                           "top_p": 0.4, "temperature": 0.8}, timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == 200 and body["history"] == [[item.prompt, body["result"]]] and body["result"]
    time.strptime(body["time"], "%Y-%m-%d %H:%M:%S")
    first = httpx.post(f"{server.url}/v1/visual_glm", json={"text": item.prompt, "image_prompt": image,
                                                            "history": [], "top_k": 1}, timeout=60)
    assert first.status_code == 200 and first.json()["result"] == expected(local, item.image, item.prompt)


class _Images(http.server.BaseHTTPRequestHandler):
    """A local image host: /ok.png, /big.png (over the cap), /slow.png (slower than --image-timeout), /gone."""
    png = b""

    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(4)
        if self.path == "/gone":
            self.send_error(404)
            return
        body = self.png if self.path != "/big.png" else b"\x89PNG" + b"\0" * (IMAGE_CAP + 10)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    _Images.png = open(QUESTIONS[0].image, "rb").read()
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{host.server_address[1]}"
    host.shutdown()


def url_chat(url):
    return {"model": NAME, "temperature": 0, "language": "zh", "max_tokens": 16,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": QUESTIONS[0].prompt}]}]}


def test_an_http_image_url_is_fetched(server, local, image_host):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=url_chat(f"{image_host}/ok.png"), timeout=60)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == expected(local, QUESTIONS[0].image, QUESTIONS[0].prompt,
                                                                    max_new=16)


def png_bytes(size) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(out, "PNG")
    return out.getvalue()


BAD = {
    "malformed JSON": (b'{"model": ', 400, None),
    "not an object": (b"[1, 2]", 400, None),
    "unknown model": ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    "no user message": ({"model": NAME, "messages": [{"role": "system", "content": "be brief"}]}, 400, "messages"),
    "bad base64": ({"model": NAME, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}, {"type": "text", "text": "q"}]}]},
        400, "messages[0].content[0].image_url.url"),
    "not an image": ({"model": NAME, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"hello").decode()}},
        {"type": "text", "text": "q"}]}]}, 400, "messages[0].content[0].image_url.url"),
    "image over the cap": ({"model": NAME, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png_bytes(200)).decode()}},
        {"type": "text", "text": "q"}]}]}, 413, "messages[0].content[0].image_url.url"),
    "two images": ({"model": NAME, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png_bytes(8)).decode()}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png_bytes(8)).decode()}},
        {"type": "text", "text": "q"}]}]}, 400, "messages[0].content[1].image_url.url"),
    "negative max_tokens": ({"model": NAME, "max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}, 400,
                            "max_tokens"),
    "absurd max_tokens": ({"model": NAME, "max_tokens": 10 ** 7, "messages": [{"role": "user", "content": "hi"}]},
                          400, "max_tokens"),
    "old protocol, no text": ({"image": "", "history": []}, 400, "text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_request_is_refused_with_the_field_and_the_next_one_is_answered(server, case):
    payload, status, param = BAD[case]
    path = "/" if case.startswith("old protocol") else "/v1/chat/completions"
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    r = httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    good = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                      json={"model": NAME, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("path, reason", [("/gone", "answered HTTP 404"), ("/big.png", "--max-image-bytes"),
                                          ("/slow.png", "longer than 2 s")])
def test_image_urls_that_fail_read_the_same_to_the_client_and_the_reason_is_logged(server, image_host, path, reason):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=url_chat(f"{image_host}{path}"), timeout=60)
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "'messages[0].content[0].image_url.url': image_url could not be fetched as an image",
        "type": "invalid_request_error", "param": "messages[0].content[0].image_url.url", "code": "image_fetch_failed"}
    deadline = time.monotonic() + 5  # the log line is written before the answer, and read by another thread
    while not any(reason in line for line in server.stderr) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(reason in line for line in server.stderr)


@pytest.fixture(scope="module")
def busy_server():
    """The tiny preset with random weights (it rarely says <eop>, so answers run to max_tokens), one chat at a
    time and one waiting."""
    with LocalServer("--max-batch", "1", "--queue", "1") as s:
        yield s


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "not streamed"])
def test_a_client_that_disconnects_stops_its_generation(busy_server, streamed):
    before = busy_server.health()
    body = {"model": "visualglm-tiny", "stream": streamed, "max_tokens": 200,
            "messages": [{"role": "user", "content": "tell me a long story"}]}
    if streamed:
        with httpx.stream("POST", f"{busy_server.url}/v1/chat/completions", json=body, timeout=60) as r:
            next(r.iter_lines())  # the first event: generation has started
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{busy_server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = busy_server.health()
        if now["cancelled"] > before["cancelled"] and now["running"] == 0:
            break
        time.sleep(0.05)
    assert now["cancelled"] == before["cancelled"] + 1
    assert now["tokens"] - before["tokens"] < 200  # it stopped before max_tokens


def test_a_port_in_use_is_one_line_before_the_model_loads(busy_server):
    import subprocess
    import sys

    port = busy_server.url.rsplit(":", 1)[1]
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "porter.cli", "run", "visualglm", "serve", "--port", port],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"--port {port}: cannot listen there" in r.stderr and "Traceback" not in r.stderr
    assert "model:" not in r.stderr and time.monotonic() - started < 15


def test_a_full_queue_answers_503_with_retry_after_and_recovers(busy_server):
    body = {"model": "visualglm-tiny", "max_tokens": 60, "messages": [{"role": "user", "content": "a long answer"}]}

    def post(_):
        return httpx.post(f"{busy_server.url}/v1/chat/completions", json=body, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(post, range(8)))
    busy = [r for r in replies if r.status_code == 503]
    assert busy and all(r.headers["retry-after"].isdigit() and r.json()["error"]["code"] == "server_busy"
                        for r in busy)
    assert {r.status_code for r in replies} == {200, 503}
    again = httpx.post(f"{busy_server.url}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60)
    assert again.status_code == 200


def test_concurrent_chats_are_batched_and_each_gets_its_own_answer(server, local):
    items = QUESTIONS[:4]
    before = server.health()["batches"]

    def one(item):
        return httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "model": NAME, "temperature": 0, "language": "zh", "max_tokens": 64,
            "messages": ask(item.image, item.prompt)}).json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, items))
    assert answers == [expected(local, i.image, i.prompt) for i in items]
    assert server.health()["batches"] - before < len(items)  # some of them shared a batch
