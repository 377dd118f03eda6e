"""Load on `porter run visualglm serve`, continuous batching against static batching (`--batching static`, the
engine before continuous batching), on localhost through OpenAI's chat-completions API, streamed, each chat with
one of the shipped images. Two servers run side by side (same model, same `--max-batch`); the load goes to one
and then the other, alternating, so both see the same machine.

- closed loop: N clients (1, 4, 8, 16), each asking R chats in a row, all with the same `max_tokens`: tokens/s,
  latency p50/p95, time to first token. The acceptance ratios (8 clients against 1) come from this.
- open loop: chats arrive as a Poisson process (`--rate` per second for `--duration` seconds, the same arrival
  times and lengths for both servers), `max_tokens` drawn from `--lengths`: what continuous batching is for, as
  all-at-once arrivals of equal lengths hide it. Besides the above: the inter-token latency of running streams,
  overall and for the gaps during which another chat's prompt and image went through the model (a gap that
  contains another chat's first token).

Sampling: upstream's chat defaults (the server's, for absent fields) with a seed per chat, so both servers generate
the same tokens. Times are taken when a chunk arrives, which is close to when its token was made.

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 1 4 8 16] [--requests 4] [--max-tokens 32]
        [--rate 4] [--duration 20] [--max-batch 8] [--from_pretrained DIR]           -> results/serve_load.json
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from _shared import save

MODES = ("continuous", "static")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Chat:
    """One streamed chat's timeline: when it was sent, when each chunk came, how many tokens it was billed."""

    def __init__(self, sent: float):
        self.sent, self.chunks, self.tokens, self.error = sent, [], 0, None

    @property
    def done(self) -> float:
        return self.chunks[-1] if self.chunks else self.sent


def one_chat(http, url: str, body: dict, began: float) -> Chat:
    chat = Chat(time.monotonic() - began)
    try:
        with http.stream("POST", url, json=body) as reply:
            if reply.status_code != 200:
                chat.error = f"HTTP {reply.status_code}: {reply.read()[:200]!r}"
                return chat
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    chat.tokens = event["usage"]["completion_tokens"]
                elif event.get("choices") and event["choices"][0]["delta"].get("content"):
                    chat.chunks.append(time.monotonic() - began)
                elif "error" in event:
                    chat.error = str(event["error"])[:200]
    except Exception as exc:  # noqa: BLE001 - a failed chat is counted, not fatal to the run
        chat.error = f"{type(exc).__name__}: {exc}"[:200]
    return chat


def bodies(model: str, images: list[Path], n: int, lengths: list[int]) -> list[dict]:
    uris = ["data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for p in images]
    return [{"model": model, "max_tokens": lengths[i], "seed": i, "stream": True,
             "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": [
                 {"type": "image_url", "image_url": {"url": uris[i % len(uris)]}},
                 {"type": "text", "text": "图片里有什么？"}]}]} for i in range(n)]


def summarise(chats: list[Chat], wall: float) -> dict:
    ok = [c for c in chats if c.error is None and c.chunks]
    latency = [c.done - c.sent for c in ok]
    first = [c.chunks[0] - c.sent for c in ok]
    tokens = sum(c.tokens for c in ok)
    return {"chats": len(chats), "errors": len(chats) - len(ok),
            "error_samples": [c.error for c in chats if c.error][:3],
            "completion_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall else 0.0,
            "latency_s": {"p50": statistics.median(latency) if latency else float("nan"),
                          "p95": percentile(latency, 0.95), "max": max(latency, default=float("nan"))},
            "first_token_s": {"p50": statistics.median(first) if first else float("nan"),
                              "p95": percentile(first, 0.95)}}


def closed_loop(url: str, model: str, images: list[Path], clients: int, requests: int, max_tokens: int) -> dict:
    import httpx

    work = bodies(model, images, clients * requests, [max_tokens] * (clients * requests))
    chats: list[Chat] = []
    lock = threading.Lock()
    began = time.monotonic()

    def client(c: int) -> None:
        with httpx.Client(timeout=300) as http:
            for r in range(requests):
                chat = one_chat(http, url, work[c * requests + r], began)
                with lock:
                    chats.append(chat)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return summarise(chats, time.monotonic() - began)


def open_loop(url: str, model: str, images: list[Path], arrivals: list[float], lengths: list[int]) -> dict:
    import httpx

    work = bodies(model, images, len(arrivals), lengths)
    chats: list[Chat | None] = [None] * len(arrivals)
    began = time.monotonic()

    def send(i: int) -> None:
        time.sleep(max(0.0, arrivals[i] - (time.monotonic() - began)))
        with httpx.Client(timeout=300) as http:
            chats[i] = one_chat(http, url, work[i], began)

    with ThreadPoolExecutor(len(arrivals)) as pool:
        list(pool.map(send, range(len(arrivals))))
    done = [c for c in chats if c is not None]
    result = summarise(done, max(c.done for c in done) - min(c.sent for c in done))
    firsts = sorted(c.chunks[0] for c in done if c.chunks)
    gaps, during = [], []
    for c in done:
        for a, b in zip(c.chunks, c.chunks[1:]):
            gaps.append(b - a)
            if any(a < f < b for f in firsts if f != c.chunks[0]):
                during.append(b - a)
    result["inter_token_s"] = {"p50": statistics.median(gaps) if gaps else float("nan"), "p95": percentile(gaps, 0.95),
                               "max": max(gaps, default=float("nan"))}
    result["inter_token_while_a_chat_joins_s"] = {
        "gaps": len(during), "p50": statistics.median(during) if during else float("nan"),
        "p95": percentile(during, 0.95), "max": max(during, default=float("nan"))}
    return result


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--requests", type=int, default=4, help="per client, closed loop")
    p.add_argument("--max-tokens", type=int, default=32, help="closed loop")
    p.add_argument("--rate", type=float, default=4.0, help="chats per second, open loop (0: skip it)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals, open loop")
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64, 128],
                   help="max_tokens of the open loop's chats, drawn uniformly")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--from_pretrained", type=Path)
    args = p.parse_args()

    import httpx
    from porter_visualglm.evaluate import held_out
    from porter_visualglm.serving.local import LocalServer

    images = [Path(q.image) for q in held_out()]
    rng = random.Random(0)
    arrivals, t = [], 0.0
    while args.rate > 0:
        t += rng.expovariate(args.rate)
        if t > args.duration:
            break
        arrivals.append(t)
    lengths = [rng.choice(args.lengths) for _ in arrivals]

    servers = {}
    with ExitStack() as stack:
        for mode in MODES:
            extra = ["--from_pretrained", str(args.from_pretrained)] if args.from_pretrained else []
            servers[mode] = stack.enter_context(LocalServer("--max-batch", str(args.max_batch), "--queue", "1024",
                                                            "--batching", mode, *extra))
        model = httpx.get(f"{servers['continuous'].url}/v1/models").json()["data"][0]["id"]
        for server in servers.values():  # warm-up, not counted
            closed_loop(f"{server.url}/v1/chat/completions", model, images, 2, 1, 4)
        closed: dict[str, dict] = {m: {} for m in MODES}
        for n in args.clients:
            for mode in (MODES if n % 2 else MODES[::-1]):  # alternate which goes first
                r = closed_loop(f"{servers[mode].url}/v1/chat/completions", model, images, n, args.requests,
                                args.max_tokens)
                closed[mode][str(n)] = r
                print(f"closed loop, {mode:10s} {n:2d} clients: {r['tokens_per_s']:6.0f} tokens/s, latency p50 "
                      f"{r['latency_s']['p50']:.2f} s p95 {r['latency_s']['p95']:.2f} s, first token p50 "
                      f"{r['first_token_s']['p50']:.3f} s, {r['errors']} errors", flush=True)
        opened = {}
        if arrivals:
            for mode in MODES:
                r = open_loop(f"{servers[mode].url}/v1/chat/completions", model, images, arrivals, lengths)
                r["engine"] = servers[mode].health()
                opened[mode] = r
                print(f"open loop ({len(arrivals)} chats, {args.rate:g}/s), {mode:10s}: {r['tokens_per_s']:.0f} "
                      f"tokens/s, latency p50 {r['latency_s']['p50']:.2f} s p95 {r['latency_s']['p95']:.2f} s, "
                      f"first token p50 {r['first_token_s']['p50']:.3f} s p95 {r['first_token_s']['p95']:.3f} s, "
                      f"inter-token p95 {r['inter_token_s']['p95'] * 1e3:.1f} ms (while a chat joins: "
                      f"{r['inter_token_while_a_chat_joins_s']['p95'] * 1e3:.1f} ms), {r['errors']} errors",
                      flush=True)
    result = {
        "what": "porter run visualglm serve, OpenAI chat completions with an image, streamed; continuous against "
                "static batching, alternating",
        "model": str(args.from_pretrained or "tiny preset, random weights"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": sys.version.split()[0],
        "max_batch": args.max_batch, "requests_per_client": args.requests, "max_tokens": args.max_tokens,
        "closed_loop": closed,
        "open_loop": {"rate_per_s": args.rate, "duration_s": args.duration, "lengths": args.lengths,
                      "chats": len(arrivals), **opened},
    }
    one, eight = closed["continuous"].get("1"), closed["continuous"].get("8")
    if one and eight:
        result["acceptance"] = {
            "tokens_per_s_8_over_1": eight["tokens_per_s"] / one["tokens_per_s"],
            "p95_latency_8_over_1": eight["latency_s"]["p95"] / one["latency_s"]["p95"],
            "one_client_tokens_per_s": one["tokens_per_s"]}
        print(f"8 clients against 1 (continuous): {result['acceptance']['tokens_per_s_8_over_1']:.2f}x tokens/s, "
              f"p95 latency {result['acceptance']['p95_latency_8_over_1']:.2f}x")
    print(f"wrote {save('serve_load', result)}")
    return result


if __name__ == "__main__":
    main()
