"""Load on `porter run visualglm serve`: N concurrent clients on localhost, each asking R questions in a row
about a shipped image through OpenAI's chat-completions API (not streamed), against the tiny model.

Bounded in count (clients x requests) and in time (--deadline: clients stop starting requests after it).
Reports latency p50 / p95, completion tokens/s over the whole run, errors (goal 0), the server's resident memory
before and after, and how many batches the engine ran (fewer than requests: requests shared batches).

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 8] [--requests 4] [--max-tokens 32]
        [--from_pretrained DIR]                                     -> results/serve_load.json
"""
from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _shared import save


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, nargs="+", default=[8, 1], help="one server run per value (default: 8, "
                                                                            "then 1 to show what batching gives)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds after which no request starts")
    p.add_argument("--from_pretrained", type=Path)
    args = p.parse_args()
    runs = {str(b): measure(args, b) for b in args.max_batch}
    first = runs[str(args.max_batch[0])]
    result = {**first, "by_max_batch": {b: {k: r[k] for k in ("latency_s", "tokens_per_s", "errors", "engine_batches")}
                                        for b, r in runs.items()}}
    print(f"wrote {save('serve_load', result)}")
    return result


def measure(args, max_batch: int) -> dict:
    import httpx
    from porter_visualglm.evaluate import held_out
    from porter_visualglm.serving.local import LocalServer

    server_args = ["--max-batch", max_batch, "--queue", max(32, args.clients)]
    if args.from_pretrained:
        server_args += ["--from_pretrained", args.from_pretrained]
    images = [Path(q.image) for q in held_out()]
    with LocalServer(*server_args) as server:
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={  # warm-up, not counted
            "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        rss_before, batches_before = server.rss_bytes(), server.health()["batches"]
        latencies, tokens, errors, lock = [], [], [], threading.Lock()
        stop_at = time.monotonic() + args.deadline

        def client(c: int) -> None:
            with httpx.Client(timeout=120) as http:
                for r in range(args.requests):
                    if time.monotonic() > stop_at:
                        return
                    image = images[(c * args.requests + r) % len(images)]
                    uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
                    body = {"model": model, "max_tokens": args.max_tokens, "seed": c * 100 + r, "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                     {"type": "text", "text": "图片里有什么？"}]}]}
                    started = time.monotonic()
                    try:
                        reply = http.post(f"{server.url}/v1/chat/completions", json=body)
                        ok = reply.status_code == 200
                        used = reply.json()["usage"]["completion_tokens"] if ok else 0
                    except httpx.HTTPError as exc:
                        ok, used, reply = False, 0, exc
                    with lock:
                        latencies.append(time.monotonic() - started)
                        tokens.append(used)
                        if not ok:
                            errors.append(str(getattr(reply, "text", reply))[:200])

        began = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.monotonic() - began
        rss_after, batches = server.rss_bytes(), server.health()["batches"] - batches_before
    result = {
        "what": "porter run visualglm serve, OpenAI chat completions with an image, not streamed",
        "model": str(args.from_pretrained or "tiny preset, random weights"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": sys.version.split()[0],
        "clients": args.clients, "requests_per_client": args.requests, "max_tokens": args.max_tokens,
        "max_batch": max_batch, "requests": len(latencies), "errors": len(errors), "error_samples": errors[:3],
        "latency_s": {"p50": statistics.median(latencies), "p95": percentile(latencies, 0.95),
                      "max": max(latencies), "samples": latencies},
        "completion_tokens": sum(tokens), "wall_s": wall, "tokens_per_s": sum(tokens) / wall,
        "engine_batches": batches, "server_rss_mib": {"before": rss_before / 2 ** 20, "after": rss_after / 2 ** 20},
    }
    print(f"--max-batch {max_batch}: {result['requests']} requests from {args.clients} clients in {wall:.1f} s: latency p50 "
          f"{result['latency_s']['p50']:.2f} s, p95 {result['latency_s']['p95']:.2f} s; "
          f"{result['tokens_per_s']:.0f} tokens/s; {len(errors)} errors; {batches} batches; server RSS "
          f"{result['server_rss_mib']['before']:.0f} -> {result['server_rss_mib']['after']:.0f} MiB")
    return result


if __name__ == "__main__":
    main()
