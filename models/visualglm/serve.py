"""`porter run visualglm serve`: the model over HTTP, on FastAPI and uvicorn (upstream's api.py uses the same
pair, so its deployment notes carry over): OpenAI's chat completions, upstream's api.py protocol, a chat page.

The port is bound before the model loads, so a port in use is one line at once, not after a minute of loading.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import cast

from porter.errors import EXIT_USAGE, PorterError
from porter.recipes import add_device_argument, positive_float, positive_int, use_device

from .assets import add_weight_arguments
from .config import PRESET_NAMES

API_KEY_ENV = "PORTER_SERVE_API_KEY"

EPILOG = """\
routes:
  POST /v1/chat/completions   OpenAI's chat completions (stream or not), one image per chat
  GET  /v1/models             the served model's id (what requests put in "model")
  POST /                      upstream api.py: {text, image, history, max_length, top_p, temperature}
  GET  /                      a chat page: upload or paste an image, ask, watch the answer stream in
  GET  /health                queue and batch state

API key: with --api-key KEY (or PORTER_SERVE_API_KEY=KEY in the environment, which keeps the key out of the
process list) every API route (/v1/..., POST /) wants the header "Authorization: Bearer KEY" and answers 401
without it; OpenAI clients send it as their api_key. The chat page's files (GET /, /static/) and GET /health
(a load balancer's probe) stay open; the page asks for the key and keeps it for the browser tab.

image URLs: fetched only from public addresses; a URL whose host resolves to loopback, link-local, private,
shared, multicast, reserved or unspecified addresses is refused unless --allow-private-urls. The server
connects to the address it checked, re-checks each redirect, and answers every failed fetch with the same
400 "image_url could not be fetched as an image" (the reason goes to stderr).

examples:
  porter run visualglm serve
      the tiny preset with random weights on http://127.0.0.1:8080: see the plumbing work
  PORTER_SERVE_API_KEY=$(openssl rand -hex 16) porter run visualglm serve --from_pretrained glm/visualglm \
      --chatglm_path glm/chatglm --host 0.0.0.0
      the released model for other machines, behind a key
  curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "visualglm-tiny", "messages": [{"role": "user", "content": "Describe the image."}]}'
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_weight_arguments(p)
    p.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="architecture when there is no "
                                                                         "checkpoint (default: tiny)")
    add_device_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one and prints it)")
    p.add_argument("--model-name", help="the id clients send as 'model' (default: visualglm-6b for a checkpoint, "
                                        "visualglm-tiny for the tiny preset)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="chats generated together (default 8)")
    p.add_argument("--batching", choices=("continuous", "static"), default="continuous",
                   help="continuous (default): a new chat joins the running batch at the next step and a finished "
                        "one leaves it at once; static: chats that arrive while a batch runs wait for all of it "
                        "to end (kept to measure the difference)")
    p.add_argument("--queue", type=positive_int, default=32,
                   help="chats that may wait; more are answered 503 with Retry-After (default 32)")
    p.add_argument("--max-image-bytes", type=positive_int, default=10 * 2 ** 20,
                   help="largest image a request may carry or point to (default 10 MiB; larger: 413)")
    p.add_argument("--image-timeout", type=positive_float, default=10.0,
                   help="seconds to fetch an image URL (default 10)")
    p.add_argument("--no-url-images", dest="url_images", action="store_false",
                   help="refuse http(s) image URLs (400): the server then fetches nothing a client points it at; "
                        "images come as data: URIs")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let image URLs lead to this machine and private networks (loopback, 10/8, 192.168/16, "
                        "link-local, ...): only where every client may reach them anyway")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on the API routes (401 otherwise; default: "
                        f"${API_KEY_ENV}, else no key)")
    p.add_argument("--seed", type=int, default=None, help="weights of the tiny preset (default 1234)")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise PorterError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})",
                          hint="pick another --port (0 picks a free one)", exit_code=EXIT_USAGE) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def loopback(host: str) -> bool:
    """True when ``host`` (what --host names) is only reachable from this machine."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    # an IP family's sockaddr starts with the address as a str; typeshed also allows the (int, bytes) of a
    # Python built without IPv6, which getaddrinfo does not return for a host name or an IP address
    return all(ipaddress.ip_address(cast(str, info[4][0]).split("%", 1)[0]).is_loopback for info in infos)


def open_warning(host: str, api_key: str | None) -> str | None:
    """The line to print when other machines can reach a server that asks no key."""
    if api_key or loopback(host):
        return None
    return (f"warning: serving on {host} without an API key: anyone who reaches this port can use the model "
            f"(--api-key KEY or {API_KEY_ENV})")


def run(args) -> int:
    use_device(args)
    if not 0 <= args.port <= 65535:
        raise PorterError(f"--port {args.port}: ports are 0..65535", exit_code=EXIT_USAGE)
    if args.api_key is not None and not args.api_key.strip():
        raise PorterError("--api-key is empty", hint=f"give a key, or unset {API_KEY_ENV} to serve without one",
                          exit_code=EXIT_USAGE)
    sock = bind(args.host, args.port)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    warning = open_warning(args.host, args.api_key)
    if warning:
        say(warning)

    import uvicorn

    from .infer import load
    from .serving.app import Served, create_app
    from .serving.engine import Engine
    from .serving.protocol import Limits

    model, tokenizer, config = load(args, say)
    name = args.model_name or ("visualglm-6b" if args.from_pretrained else "visualglm-tiny")
    limits = Limits(name, min(2048, config.lm.max_sequence_length), args.max_image_bytes, args.url_images,
                    args.allow_private_urls)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_waiting=args.queue,
                    continuous=args.batching == "continuous").start()
    app = create_app(Served(engine, tokenizer, limits, config.vision.image_size, model.image_length,
                            args.image_timeout, args.api_key.strip() if args.api_key else None))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {name} on http://{shown}:{port} (chat page: /, OpenAI API: /v1, api.py: POST /); Ctrl-C stops",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=args.access_log,
                                           timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
    return 0
