"""Continuous batching in `porter run visualglm serve`, over HTTP in a child process: chats that arrive while a long
answer streams join its batch at once (they end before it does), get exactly the answers they get alone (greedy,
streamed and not), and a client that goes away frees its row at the next step while its neighbour goes on."""
import json
import time

import httpx
import pytest
from porter_visualglm.serving.local import LocalServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    # the tiny preset with random weights: its answers rarely end early, so a long one keeps a batch running
    with LocalServer("--max-batch", "4") as s:
        yield s


def body(text, max_tokens, streamed=False):
    return {"model": "visualglm-tiny", "temperature": 0, "max_tokens": max_tokens, "stream": streamed,
            "messages": [{"role": "user", "content": text}]}


def streamed_text(lines) -> str:
    """The answer of a server-sent-event stream, read to its end."""
    pieces = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            delta = json.loads(line[6:])["choices"][0]["delta"]
            pieces.append(delta.get("content") or "")
    return "".join(pieces)


def wait_for(server, condition, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = server.health()
        if condition(health):
            return health
        time.sleep(0.02)
    raise AssertionError(f"not reached in {seconds} s: {server.health()}")


def test_chats_join_a_running_batch_and_answer_as_they_do_alone(server):
    url = f"{server.url}/v1/chat/completions"
    long = body("tell me a long story about the sea", 200, streamed=True)
    short = body("what colour is the sky?", 10)
    short_streamed = body("name a shape with three sides", 12, streamed=True)
    with httpx.stream("POST", url, json=long, timeout=120) as first:
        lines = first.iter_lines()
        head = [next(lines)]
        before = wait_for(server, lambda h: h["steps"] > 0)  # the long answer is being generated
        assert before["running"] == 1
        joined = httpx.post(url, json=short, timeout=60).json()
        with httpx.stream("POST", url, json=short_streamed, timeout=60) as r:
            joined_streamed = streamed_text(r.iter_lines())
        during = server.health()
        # both answered while the long one still ran: they joined its batch instead of waiting for it to end
        assert during["running"] == 1 and during["batches"] == before["batches"] + 2
        long_text = streamed_text(head + list(lines))
    assert joined["choices"][0]["finish_reason"] == "length" and joined["usage"]["completion_tokens"] == 10
    alone = httpx.post(url, json=short, timeout=60).json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", url, json=short_streamed, timeout=60) as r:
        alone_streamed = streamed_text(r.iter_lines())
    with httpx.stream("POST", url, json=long, timeout=120) as r:
        long_alone = streamed_text(r.iter_lines())
    assert joined["choices"][0]["message"]["content"] == alone and alone
    assert joined_streamed == alone_streamed and alone_streamed
    assert long_text == long_alone and len(long_text) > len(alone)


def test_a_client_that_goes_away_mid_batch_frees_its_row_and_the_other_goes_on(server):
    url = f"{server.url}/v1/chat/completions"
    before = server.health()
    keep = body("describe a long journey", 120, streamed=True)
    with httpx.stream("POST", url, json=keep, timeout=120) as kept:
        lines = kept.iter_lines()
        head = [next(lines)]
        with httpx.stream("POST", url, json=body("count to a thousand", 200, streamed=True), timeout=60) as gone:
            gone_lines = gone.iter_lines()  # held: a dropped line iterator closes the connection at once
            next(gone_lines)
            wait_for(server, lambda h: h["running"] == 2)
        # the second client closed its connection: its row leaves at the next step, the first one's stays
        after = wait_for(server, lambda h: h["cancelled"] == before["cancelled"] + 1 and h["running"] == 1)
        assert after["tokens"] - before["tokens"] < 320
        text = streamed_text(head + list(lines))
    with httpx.stream("POST", url, json=keep, timeout=120) as r:
        assert text == streamed_text(r.iter_lines()) and text
    assert server.health()["running"] == 0


def test_static_batching_is_kept_for_comparison():
    """--batching static: a chat that arrives while a batch runs waits for all of it to end."""
    import threading

    with LocalServer("--max-batch", "2", "--batching", "static") as s:
        url = f"{s.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body("tell me a long story about the sea", 150, streamed=True),
                          timeout=120) as first:
            lines = first.iter_lines()
            next(lines)
            wait_for(s, lambda h: h["steps"] > 0)
            replies = []
            later = threading.Thread(target=lambda: replies.append(httpx.post(url, json=body("hello", 4), timeout=60)))
            later.start()
            waiting = wait_for(s, lambda h: h["waiting"] == 1)
            assert waiting["running"] == 1 and waiting["batches"] == 1
            list(lines)
        later.join()
        health = s.health()
    assert replies[0].status_code == 200 and health["batching"] == "static" and health["batches"] == 2
