"""BLIP-2's evaluation preprocessing on Pillow + torch: bicubic resize to a square, CLIP mean and std."""
from __future__ import annotations

from pathlib import Path

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
    try:
        return _decode(path, size, str(path))
    except FileNotFoundError:
        raise ImageError(f"{path}: image not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image") from None


def decode_image(data: bytes, size: int, name: str = "image") -> torch.Tensor:
    """Encoded image bytes (PNG, JPEG, ...) as ``load_image`` reads a file; errors name ``name``."""
    import io

    return _decode(io.BytesIO(data), size, name)


def _decode(source, size: int, name: str) -> torch.Tensor:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: image too large ({exc.args[0].split('could be')[0].strip()}); porter reads "
                         f"images up to {Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except (FileNotFoundError, IsADirectoryError):
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: unreadable image (not a format Pillow knows: PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: unreadable image ({exc})") from None
    return to_tensor(image)


def to_tensor(image) -> torch.Tensor:
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = data.view(image.size[1], image.size[0], 3).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std
