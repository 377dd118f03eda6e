"""The chat's image as the model's input tensor: decoded from the request, or fetched from an http(s) URL with
a timeout and the same byte cap, then read as ``load_image`` reads a file (Pillow's pixel limit included)."""
from __future__ import annotations

import asyncio

from ..images import ImageError, decode_image
from .protocol import APIError, ImageRef, Limits, bad, image_too_large


async def fetch(ref: ImageRef, limits: Limits, timeout: float) -> bytes:
    """The bytes at ``ref.url``; a slow, failing or oversized download is the client's 400 or 413."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=3) as client:
            async with asyncio.timeout(timeout):  # httpx's timeout is per read: a trickle must not hold a slot
                async with client.stream("GET", ref.url) as response:
                    if response.status_code != 200:
                        raise bad(f"'{ref.param}': {ref.url} answered HTTP {response.status_code}", ref.param,
                                  "image_fetch_failed")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limits.max_image_bytes:
                        raise image_too_large(ref.param, int(declared), limits)
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > limits.max_image_bytes:
                            raise image_too_large(ref.param, len(data), limits)
                    return bytes(data)
    except (TimeoutError, httpx.TimeoutException):
        raise bad(f"'{ref.param}': fetching {ref.url} took longer than {timeout:g} s (--image-timeout)", ref.param,
                  "image_fetch_failed") from None
    except httpx.HTTPError as exc:
        raise bad(f"'{ref.param}': cannot fetch {ref.url} ({type(exc).__name__}: {exc})", ref.param,
                  "image_fetch_failed") from None


async def image_tensor(ref: ImageRef, limits: Limits, size: int, timeout: float):
    """The model's [3, size, size] input for the chat's image."""
    data = ref.data if ref.data is not None else await fetch(ref, limits, timeout)
    if len(data) > limits.max_image_bytes:
        raise image_too_large(ref.param, len(data), limits)
    try:
        return await asyncio.to_thread(decode_image, data, size, f"'{ref.param}'")
    except ImageError as exc:
        raise APIError(400, str(exc), ref.param, "invalid_image") from None
