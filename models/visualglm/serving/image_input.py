"""The chat's image as the model's input tensor: decoded from the request, or fetched from an http(s) URL with
a timeout and the same byte cap, then read as ``load_image`` reads a file (Pillow's pixel limit included).

A URL is a request the server makes on the client's behalf, so it must not reach what the client cannot:

- the host is resolved once and every address it resolves to is checked (``public_address``): loopback,
  link-local, private, shared (CGNAT), multicast, reserved and unspecified addresses are refused unless the
  operator passed ``--allow-private-urls``;
- the connection goes to the address that was checked, not to the name again (a second lookup could answer
  differently: DNS rebinding), with the original name in the Host header and as TLS's server name, so
  virtual hosts and certificates work as usual;
- a redirect is a new URL and goes through the same checks (at most ``MAX_REDIRECTS``);
- proxies from the environment are not used (a proxy would resolve the name itself).

Whatever stops a fetch (a refused address, a failed lookup or connection, an HTTP error, a timeout, too many
bytes, bytes that are no image) the client reads the same 400, ``FETCH_FAILED``: different messages would tell
it which addresses and ports answer inside the server's network. The reason goes to the server's log.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urljoin, urlsplit

from ..images import ImageError, decode_image
from .protocol import APIError, ImageRef, Limits, bad, image_too_large

FETCH_FAILED = "image_url could not be fetched as an image"
MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
T = TypeVar("T")


class Unfetchable(Exception):
    """Why a URL gave no image: for the server's log only (the client reads ``FETCH_FAILED``)."""


def public_address(text: str) -> bool:
    """True when ``text`` (an IP address) is one anybody on the internet may reach: not loopback, link-local,
    private, shared, multicast, reserved or unspecified. An IPv6 address carrying an IPv4 one (IPv4-mapped,
    6to4) is judged by that one too, since the packets end up there."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # a link-local address may carry its scope: fe80::1%eth0
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 address itself
            return public_address(str(ip.ipv4_mapped))
        if ip.sixtofour is not None and not public_address(str(ip.sixtofour)):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                 or ip.is_link_local or ip.is_private)


@dataclass(frozen=True)
class _Target:
    """One URL, split for a pinned connection."""
    url: str
    scheme: str
    host: str  # the name as the URL spells it (lower case, no brackets, ASCII)
    port: int
    host_header: str  # host[:port] as the URL wrote it

    @classmethod
    def of(cls, url: str) -> _Target:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise Unfetchable(f"malformed URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unfetchable("not an http(s) URL with a host")
        default = 443 if parts.scheme == "https" else 80
        try:  # an internationalized name goes on the wire in its ASCII (punycode) form
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise Unfetchable("a host name that cannot be encoded") from None
        written = parts.netloc.rpartition("@")[2]
        host_header = written if written.isascii() else host + (f":{port}" if port else "")
        return cls(url, parts.scheme, host, port or default, host_header)

    def pinned(self, address: str) -> str:
        """The URL with ``address`` in place of the host (user info dropped: it is not sent anywhere)."""
        parts = urlsplit(self.url)
        literal = f"[{address}]" if ":" in address else address
        return parts._replace(netloc=f"{literal}:{self.port}").geturl()


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a literal address resolves to itself)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unfetchable(f"cannot resolve {host} ({exc})") from None
    # an IP family's sockaddr starts with the address as a str; typeshed also allows the (int, bytes) of a
    # Python built without IPv6, which getaddrinfo never returns on a machine that can reach a URL
    addresses = list(dict.fromkeys(cast(str, info[4][0]).split("%", 1)[0] for info in infos))
    if not addresses:
        raise Unfetchable(f"{host} resolves to no address")
    return addresses


async def _checked_addresses(target: _Target, limits: Limits) -> list[str]:
    addresses = await resolve(target.host, target.port)
    if not limits.private_urls:
        refused = [a for a in addresses if not public_address(a)]
        if refused:  # one bad address refuses the name: which one a client would get is not ours to guess
            raise Unfetchable(f"{target.host} resolves to {', '.join(refused)}, not a public address "
                              f"(--allow-private-urls allows it)")
    return addresses


async def _get(client, target: _Target, address: str, limits: Limits) -> tuple[int, str | None, bytes]:
    """(status, Location, body) from ``address``; the body read only for a 200, and never past the cap."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    # identity: the bytes counted against the cap are the bytes received, no decompression bomb in between
    headers = {"Host": target.host_header, "Accept": "image/*", "Accept-Encoding": "identity"}
    async with client.stream("GET", target.pinned(address), headers=headers, extensions=extensions) as response:
        if response.status_code != 200:
            return response.status_code, response.headers.get("location"), b""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_image_bytes:
            raise Unfetchable(f"declares {int(declared):,} bytes, over --max-image-bytes {limits.max_image_bytes:,}")
        data = bytearray()
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) > limits.max_image_bytes:
                raise Unfetchable(f"sends more than --max-image-bytes {limits.max_image_bytes:,} bytes")
        return 200, None, bytes(data)


async def _get_any(client, target: _Target, addresses: list[str], limits: Limits):
    """``_get`` from the first of the checked addresses that accepts a connection."""
    import httpx

    failures = []
    for address in addresses:
        try:
            return await _get(client, target, address, limits)
        except httpx.ConnectError as exc:
            failures.append(f"{address}: {exc or type(exc).__name__}")
    raise Unfetchable(f"cannot connect to {target.host} ({'; '.join(failures)})")


async def _download(url: str, limits: Limits) -> bytes:
    import httpx

    for _ in range(MAX_REDIRECTS + 1):
        target = _Target.of(url)
        addresses = await _checked_addresses(target, limits)
        # a client per hop: a pooled connection, keyed by address, must not carry one name's TLS to another name;
        # no timeout of its own: fetch's deadline covers the lookups, the connection and every byte
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=None) as client:
            status, location, data = await _get_any(client, target, addresses, limits)
        if status == 200:
            return data
        if status not in _REDIRECTS or not location:
            raise Unfetchable(f"{target.host} answered HTTP {status}")
        url = urljoin(url, location)  # checked again at the top, as any URL
    raise Unfetchable(f"more than {MAX_REDIRECTS} redirects")


async def _within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, or a timeout error after ``seconds``: asyncio.timeout exists from Python 3.11 only."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await work
    return await asyncio.wait_for(work, seconds)


async def fetch(ref: ImageRef, limits: Limits, timeout: float) -> bytes:
    """The bytes at ``ref.url``, within ``timeout`` seconds in all (a trickle must not hold a slot)."""
    import httpx

    if ref.url is None:  # image_tensor sends here only the refs that hold a URL instead of bytes
        raise ValueError(f"'{ref.param}' holds no URL to fetch")
    try:
        return await _within(timeout, _download(ref.url, limits))
    except (TimeoutError, asyncio.TimeoutError):  # one class from 3.11 on; 3.10's wait_for raises asyncio's
        reason = f"took longer than {timeout:g} s (--image-timeout)"
    except Unfetchable as exc:
        reason = str(exc)
    except httpx.HTTPError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    raise _refused(ref, reason)


def _refused(ref: ImageRef, reason: str) -> APIError:
    try:
        host = urlsplit(ref.url or "").hostname
    except ValueError:  # the URL itself was the fault
        host = None
    # the host, not the URL: a query string may hold a client's token, which logs should not keep
    print(f"porter serve: image URL on host {host!r} not used: {reason}", file=sys.stderr, flush=True)
    return bad(f"'{ref.param}': {FETCH_FAILED}", ref.param, "image_fetch_failed")


async def image_tensor(ref: ImageRef, limits: Limits, size: int, timeout: float):
    """The model's [3, size, size] input for the chat's image."""
    if ref.data is None:
        data = await fetch(ref, limits, timeout)
        try:  # bytes from a URL fail as the fetch does: one message whatever went wrong
            return await asyncio.to_thread(decode_image, data, size, "the fetched image")
        except ImageError as exc:
            raise _refused(ref, str(exc)) from None
    if len(ref.data) > limits.max_image_bytes:
        raise image_too_large(ref.param, len(ref.data), limits)
    try:
        return await asyncio.to_thread(decode_image, ref.data, size, f"'{ref.param}'")
    except ImageError as exc:
        raise APIError(400, str(exc), ref.param, "invalid_image") from None
