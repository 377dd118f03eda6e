"""BLIP-2's evaluation preprocessing on Pillow + torch: bicubic resize to a square, CLIP mean and std."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, overload

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    """An image that cannot be used; the message names the file."""


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """``path`` as a normalised float tensor [3, size, size].

    Images over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89.5 million pixels) are refused
    with one line, not a warning and then a very long decode.
    """
    path = Path(path)
    _check_file(path)
    return _decode(path, size, str(path))


def check_image(path: str | Path, size: int) -> None:
    """Raise :class:`ImageError` where :func:`load_image` would: missing, a folder or other non-file, not a
    format Pillow reads, truncated or corrupt, or over the pixel limit. The limit is read from the header
    before any pixel is decoded, so a bomb costs nothing to refuse; JPEGs decode at the smallest scale that
    still covers ``size`` (every byte of the entropy-coded data is still read), and nothing is resized or kept."""
    path = Path(path)
    _check_file(path)
    _decode(path, size, str(path), keep=False)


def _check_file(path: Path) -> None:
    """A regular file we may read: Pillow would block forever reading a FIFO, and its errors for a folder or a
    missing file name neither the problem nor the record."""
    import os

    from porter.diskio import regular_file_problem

    problem = regular_file_problem(path, "an image")
    if problem:
        raise ImageError(f"{path!r}: {problem}" if "valid file name" in problem else
                         f"{path}: {'image not found' if problem == 'no such file' else problem}")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: cannot read (permission denied)")


def decode_image(data: bytes, size: int, name: str = "image") -> torch.Tensor:
    """Encoded image bytes (PNG, JPEG, ...) as ``load_image`` reads a file; errors name ``name``."""
    import io

    return _decode(io.BytesIO(data), size, name)


# keep=True gives the tensor, keep=False only checks: the overloads let callers of either use the result untested
@overload
def _decode(source, size: int, name: str, keep: Literal[True] = ...) -> torch.Tensor: ...


@overload
def _decode(source, size: int, name: str, keep: Literal[False]) -> None: ...


def _decode(source, size: int, name: str, keep: bool = True) -> torch.Tensor | None:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Image.open reads only the header, and refuses a size over the limit there (warning or error)
            with Image.open(source) as image:
                if not keep:
                    image.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale; other formats: no-op
                image = image.convert("RGB")
                if keep:
                    image = image.resize((size, size), Image.Resampling.BICUBIC)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        import re

        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's words: "Image size (N pixels) exceeds ..."
        what = f"{int(found.group(1)):,} pixels" if found else "over Pillow's decompression-bomb limit"
        raise ImageError(f"{name}: image too large ({what}); porter reads images up to "
                         f"{Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except FileNotFoundError:  # gone since it was checked
        raise ImageError(f"{name}: image not found") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: unreadable image (not a format Pillow knows: PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: unreadable image ({exc})") from None
    return to_tensor(image) if keep else None


def to_tensor(image) -> torch.Tensor:
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = data.view(image.size[1], image.size[0], 3).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std
