"""`serve` against hostile clients: image URLs that point inside the network (address classes, DNS answers that
change, redirects), one chat of a batch failing in the model, and the API key with the official `openai` client.

Every connection goes to 127.0.0.1: addresses of other classes are classified as literals, or handed to the
fetcher by a stand-in resolver, and refused before any connection is made."""
import asyncio
import http.server
import io
import threading
import time
from argparse import Namespace
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
from PIL import Image
from porter_visualglm import generate, serve
from porter_visualglm.serving import image_input
from porter_visualglm.serving.app import Served, create_app
from porter_visualglm.serving.engine import Engine
from porter_visualglm.serving.image_input import FETCH_FAILED, image_tensor, public_address
from porter_visualglm.serving.local import LocalServer
from porter_visualglm.serving.protocol import APIError, ImageRef, Limits

KEY = "census-key-0123456789"


# -- the address classifier, on literals: no connection is made ---------------------------------------------------
@pytest.mark.parametrize("address", [
    "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1", "169.254.169.254", "127.0.0.1",
    "127.8.9.10", "0.0.0.0", "0.1.2.3", "100.64.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12::1",
    "fec0::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
    "2002:7f00:1::", "2002:a00:1::", "64:ff9b::7f00:1", "2001:db8::1", "2001::1",
])
def test_addresses_inside_a_network_are_not_public(address):
    assert not public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "192.169.0.1",
                                     "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"])
def test_internet_addresses_are_public(address):
    assert public_address(address)


# -- fetching: a local image host, a stand-in resolver -----------------------------------------------------------
class _Host(http.server.BaseHTTPRequestHandler):
    """/ok.png, /text, /gone (404), /big (over the cap), /slow, /redirect?to=URL, /loop (redirects to itself)."""
    png = b""
    seen: list = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Host")))
        path, query = self.path.split("?")[0], parse_qs(urlsplit(self.path).query)
        if path in ("/redirect", "/loop"):
            self.send_response(302)
            self.send_header("Location", query["to"][0] if path == "/redirect" else "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/gone":
            self.send_error(404)
            return
        if path == "/slow":
            time.sleep(1.5)
        body = {"/ok.png": self.png, "/big": b"\x89PNG" + b"\0" * 70_000}.get(path, b"just text")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the fetcher stopped reading at its cap
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 200, 40)).save(out, "PNG")
    _Host.png = out.getvalue()
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Host)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield host.server_address[1]
    host.shutdown()


@pytest.fixture
def seen():
    _Host.seen = []
    return _Host.seen


LIMITS = Limits("visualglm-tiny", 256, max_image_bytes=64 * 1024)
OPEN = replace(LIMITS, private_urls=True)


def fetch(url, limits=LIMITS, timeout=5.0):
    """The image tensor, or the APIError's message."""
    try:
        return asyncio.run(image_tensor(ImageRef("image_url", url=url), limits, 16, timeout))
    except APIError as exc:
        assert exc.status == 400 and exc.code == "image_fetch_failed"
        return exc.message


def resolving(monkeypatch, table):
    """A stand-in for DNS: each name's answers in turn (the last repeats); records every lookup."""
    lookups = []

    async def resolve(host, port):
        lookups.append(host)
        answers = table[host]
        return answers[min(lookups.count(host), len(answers)) - 1]

    monkeypatch.setattr(image_input, "resolve", resolve)
    return lookups


def pretend_public(monkeypatch, *addresses):
    """Treat these loopback addresses as internet ones: the image host plays a public server."""
    real = image_input.public_address
    monkeypatch.setattr(image_input, "public_address", lambda a: a in addresses or real(a))


def test_the_local_host_is_refused_by_default_and_served_with_the_flag(image_host, seen):
    url = f"http://127.0.0.1:{image_host}/ok.png"
    assert fetch(url) == f"'image_url': {FETCH_FAILED}" and seen == []  # refused before connecting
    assert fetch(url, OPEN).shape == (3, 16, 16) and len(seen) == 1


def test_the_checked_address_is_the_one_connected_to_with_the_name_as_host(image_host, seen, monkeypatch):
    # a rebinding answer: the second lookup would say 10.0.0.1; only one lookup is made, and the fetch goes to
    # the address it returned (images.test resolves nowhere else: a second lookup by httpx would fail)
    lookups = resolving(monkeypatch, {"images.test": [["127.0.0.1"], ["10.0.0.1"]]})
    assert fetch(f"http://images.test:{image_host}/ok.png", OPEN).shape == (3, 16, 16)
    assert lookups == ["images.test"] and seen == [("/ok.png", f"images.test:{image_host}")]


def test_every_resolved_address_is_checked(image_host, seen, monkeypatch):
    pretend_public(monkeypatch, "127.0.0.1")
    resolving(monkeypatch, {"mixed.test": [["127.0.0.1", "10.0.0.1"]]})
    assert fetch(f"http://mixed.test:{image_host}/ok.png") == f"'image_url': {FETCH_FAILED}" and seen == []


def test_a_redirect_is_checked_as_a_new_url(image_host, seen, monkeypatch):
    pretend_public(monkeypatch, "127.0.0.1")
    base = f"http://127.0.0.1:{image_host}"
    assert fetch(f"{base}/ok.png").shape == (3, 16, 16)
    assert fetch(f"{base}/redirect?to={base}/ok.png").shape == (3, 16, 16)
    seen.clear()
    for inside in (f"http://[::1]:{image_host}/ok.png", f"http://127.0.0.2:{image_host}/ok.png",
                   "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"):
        assert fetch(f"{base}/redirect?to={inside}") == f"'image_url': {FETCH_FAILED}"
    assert [path for path, _ in seen if not path.startswith("/redirect")] == []
    assert fetch(f"{base}/loop") == f"'image_url': {FETCH_FAILED}"  # more than 3 redirects


def test_every_failure_reads_the_same_so_the_fetcher_is_no_port_scanner(image_host):
    base = f"http://127.0.0.1:{image_host}"
    messages = {fetch(url, OPEN, timeout=0.5) for url in (
        "http://127.0.0.1:1/x.png",  # nothing listens
        f"{base}/gone", f"{base}/text", f"{base}/big", f"{base}/slow", f"{base}/loop", "http://[::1/",
        "https://127.0.0.1:1/x.png")}
    messages.add(fetch("http://10.0.0.1/x.png"))  # refused by address, with the default limits
    assert messages == {f"'image_url': {FETCH_FAILED}"}


# -- one chat of a batch fails in the model; the other is answered ------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from porter_visualglm.infer import load

    return load(Namespace(from_pretrained=None, preset="tiny", seed=None, dtype="fp32", chatglm_path=None),
                say=lambda _: None)


def chat(seed, max_tokens=8):
    return {"model": "visualglm-tiny", "temperature": 0, "seed": seed, "max_tokens": max_tokens, "language": "en",
            "messages": [{"role": "user", "content": "describe a red circle"}]}


def test_a_chat_that_fails_in_the_model_fails_alone_and_its_batch_goes_on(tiny, monkeypatch):
    model, tokenizer, config = tiny
    real_pick_rows = generate.pick_rows

    def pick_rows(logits, samplings, *args):  # the chat with seed 13 cannot draw a token
        drawn = real_pick_rows(logits, samplings, *args)
        return [RuntimeError("row 13 broke") if s.seed == 13 else t for s, t in zip(samplings, drawn)]

    monkeypatch.setattr(generate, "pick_rows", pick_rows)
    engine = Engine(model, tokenizer, max_batch=4, max_waiting=8)
    app = create_app(Served(engine, tokenizer, LIMITS, config.vision.image_size, model.image_length))

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            replies = [asyncio.create_task(client.post("/v1/chat/completions", json=chat(s))) for s in (1, 13)]
            while engine.waiting < 2:  # both queued before the model thread runs: one batch
                await asyncio.sleep(0.01)
            engine.start()
            good, bad = [await r for r in replies]
            alone = await client.post("/v1/chat/completions", json=chat(1))
            return good, bad, alone

    try:
        good, bad, alone = asyncio.run(main())
    finally:
        engine.close()
    assert bad.status_code == 500 and bad.json()["error"]["code"] == "generation_failed"
    assert "row 13 broke" in bad.json()["error"]["message"]
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 8
    assert good.json()["choices"][0]["message"] == alone.json()["choices"][0]["message"]
    assert engine.batches == 2  # the pair shared one batch; the lone answer had its own


def test_a_chat_the_decoder_refuses_fails_alone(tiny):
    from porter_visualglm.chat import build_prompt
    from porter_visualglm.generate import Request, Sampling
    from porter_visualglm.serving.engine import Job

    model, tokenizer, config = tiny
    prompt = build_prompt(tokenizer, "hi", image_length=model.image_length, has_image=False)
    fits, overlong = (Sampling.greedy(max_length=len(prompt.ids) + n) for n in (3, 0))  # 0: no room for an answer
    engine = Engine(model, tokenizer, max_batch=4)

    async def main():
        jobs = [Job(Request(prompt, None, s), loop=asyncio.get_running_loop()) for s in (fits, overlong)]
        for job in jobs:
            engine.submit(job)
        engine.start()
        return [await last_event(job) for job in jobs]

    async def last_event(job):
        while True:
            kind, value = await job.events.get()
            if kind in ("end", "error"):
                return kind, value

    try:
        (good_kind, reason), (bad_kind, message) = asyncio.run(main())
    finally:
        engine.close()
    assert (good_kind, reason) == ("end", "length") and bad_kind == "error" and "no room for an answer" in message
    assert engine.batches == 1


def test_closing_the_engine_ends_the_running_chat_and_the_waiting_one_with_an_error(tiny):
    from porter_visualglm.chat import build_prompt
    from porter_visualglm.generate import Request, Sampling
    from porter_visualglm.serving.engine import Job

    model, tokenizer, config = tiny
    prompt = build_prompt(tokenizer, "tell me a long story", image_length=model.image_length, has_image=False)
    engine = Engine(model, tokenizer, max_batch=1)

    async def main():
        loop = asyncio.get_running_loop()
        running, waiting = (Job(Request(prompt, None, Sampling.greedy(max_length=len(prompt.ids) + n)), loop=loop)
                            for n in (200, 5))
        engine.submit(running)
        engine.submit(waiting)
        engine.start()
        while engine.steps < 2:
            await asyncio.sleep(0.01)
        engine.close()
        return [await asyncio.wait_for(last_event(job), 10) for job in (running, waiting)]

    async def last_event(job):
        while True:
            kind, value = await job.events.get()
            if kind in ("end", "error"):
                return kind, value

    ends = asyncio.run(main())
    assert ends == [("error", "generation failed: RuntimeError: the server is shutting down")] * 2


# -- the API key, with the official client --------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(image_host):
    """The tiny preset with its key from the environment, and image URLs to this machine allowed."""
    with LocalServer("--allow-private-urls", env={"PORTER_SERVE_API_KEY": KEY}) as s:
        yield s


def client(server, key):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.mark.parametrize("key", ["wrong", KEY[:-1], KEY + "x", KEY.upper()])
def test_a_wrong_key_is_refused_by_the_openai_client(keyed, key):
    with pytest.raises(openai.AuthenticationError) as info:
        client(keyed, key).models.list()
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"


def test_the_right_key_serves_the_api_streamed_or_not(keyed):
    c = client(keyed, KEY)
    assert [m.id for m in c.models.list().data] == ["visualglm-tiny"]
    reply = c.chat.completions.create(model="visualglm-tiny", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.completion_tokens == 3
    chunks = list(c.chat.completions.create(model="visualglm-tiny", max_tokens=3, stream=True,
                                            messages=[{"role": "user", "content": "hi"}]))
    assert chunks[-1].choices[0].finish_reason == "length"


def test_the_page_and_health_need_no_key_and_every_api_route_does(keyed):
    for path in ("/", "/static/chat.js", "/health"):
        assert httpx.get(f"{keyed.url}{path}").status_code == 200
    for path in ("/", "/v1/visual_glm", "/v1/chat/completions"):
        r = httpx.post(f"{keyed.url}{path}", json={"text": "hi"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization" in httpx.get(f"{keyed.url}/static/chat.js").text  # the page sends the key it asks for


def test_image_urls_to_this_machine_are_served_with_allow_private_urls(keyed, image_host):
    c = client(keyed, KEY)
    reply = c.chat.completions.create(model="visualglm-tiny", max_tokens=2, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{image_host}/ok.png"}},
        {"type": "text", "text": "what is it?"}]}])
    assert reply.usage.completion_tokens == 2


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                          ("0.0.0.0", True), ("::", True)])
def test_a_keyless_server_other_machines_reach_warns(host, warned):
    assert bool(serve.open_warning(host, None)) == warned
    assert serve.open_warning(host, KEY) is None
