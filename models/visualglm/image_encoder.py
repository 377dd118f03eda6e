"""The tiny preset's pretrained image encoder (ViT and Q-Former), built on this machine and cached.

    .venv/bin/python -m porter_visualglm.image_encoder [OUT] [--steps 2000]      write one to OUT
    tiny_encoder()          the cached one (built by `make install`, or on first use: about 4 minutes on 2 CPU cores)

VisualGLM-6B is not trained from nothing: its ViT is EVA-CLIP's and its Q-Former BLIP-2's, both pretrained on
images before the language model ever reads their output. The demo's tiny model starts the same way, from this
file. Without it, a from-scratch ViT learns colours in the demo's 400 steps but not shapes: shape is a relation
between patches, and a ViT with no pretraining needs tens of thousands of images to find it
(`benchmarks/results/demo_sweep.json`).

What it is trained on: a fresh stream of images drawn by `make_shapes.draw` from another seed (128,000 images,
none of them the shipped ones), each labelled with its colour, shape and background, and classified from the mean
of the Q-Former's outputs by a linear layer that is then thrown away. About 4 minutes on 2 CPU cores. The demo
fine-tunes with both the ViT and the Q-Former frozen: while the Q-Former also learned (at the language model's
rate, from a language model that starts from random), the held-out answers depended on the machine and the
recipe (shapes 36-97 %, colours 47-100 %, README); with it frozen the language model reads the features this
pretraining made. The file
holds the encoder's parameters under the names the released checkpoint gives them (`mixins.eva.model.vit...`,
`mixins.eva.model.qformer...`); `porter run visualglm train --image-encoder FILE` reads that format. No weights
are shipped: `tiny_encoder()` builds the file once under $PORTER_CACHE (default ~/.cache/porter), keyed by this
generator's and the shapes drawer's source and the step count, so a change to either builds a new one.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import sys
import time
from pathlib import Path

from . import import_sat

SHAPES_SCRIPT = Path(__file__).resolve().parent / "data" / "make_shapes.py"
STEPS = 2000
SEED = 7  # not make_shapes' 2024: other images than the shipped ones


def _make_shapes():
    spec = importlib.util.spec_from_file_location("make_shapes", SHAPES_SCRIPT)
    if spec is None or spec.loader is None:  # only for a path Python cannot load; make_shapes.py ships with us
        raise ImportError(f"cannot load {SHAPES_SCRIPT} as a module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encoder_weights(model) -> dict:
    """The ViT's and the Q-Former's parameters, by their names in the whole model."""
    from .checkpoint import IMAGE_ENCODER_PARTS

    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
            if name.startswith(IMAGE_ENCODER_PARTS)}


def pretrain(steps: int = STEPS, batch: int = 64, lr: float = 3e-3, seed: int = SEED, log=print) -> dict:
    """The tiny preset's ViT and Q-Former, trained to name each drawn image's colour, shape and background."""
    import torch
    from porter_visualglm.config import preset
    from porter_visualglm.model import build_model

    shapes = _make_shapes()
    names = (list(shapes.COLOURS), list(shapes.SHAPES), list(shapes.BACKGROUNDS))  # colour, shape, background
    config = preset("tiny")
    size = config.vision.image_size
    rng = random.Random(seed)

    model = build_model(config, seed=seed)
    encoder = model.mixins.eva.model
    head = torch.nn.Linear(config.qformer.hidden, sum(len(n) for n in names))
    params = [*encoder.vit.parameters(), *encoder.qformer.parameters(), *head.parameters()]

    def logits(images):
        return head(encoder.qformer(encoder.vit(images)[0])[0].mean(1))

    _train(logits, params, lambda: _draw(shapes, names, rng, size, batch), _parts(names), steps, lr, log)
    # the shipped held-out images, which this never trained on: how well the encoder tells them apart
    accuracy = _held_out_accuracy(logits, names, size)
    log("held-out images: " + ", ".join(f"{k} {v:.0%}" for k, v in accuracy.items()))
    return encoder_weights(model)


def _parts(names: tuple[list[str], list[str], list[str]]) -> list[slice]:
    """The classifier head's columns for colour, shape and background, in that order."""
    colours, kinds = len(names[0]), len(names[1])
    return [slice(0, colours), slice(colours, colours + kinds), slice(colours + kinds, None)]


def _draw(shapes, names: tuple[list[str], list[str], list[str]], rng: random.Random, size: int, n: int):
    """``n`` fresh images from ``make_shapes.draw`` and their (colour, shape, background) indices."""
    import torch
    from PIL import Image
    from porter_visualglm.images import to_tensor

    colours, kinds, backgrounds = names
    images, labels = [], []
    for _ in range(n):
        c, s, b = rng.choice(colours), rng.choice(kinds), rng.choice(backgrounds)
        image = shapes.draw(c, s, b, rng).resize((size, size), Image.Resampling.BICUBIC)  # as load_image does
        images.append(to_tensor(image))
        labels.append((colours.index(c), kinds.index(s), backgrounds.index(b)))
    return torch.stack(images), torch.tensor(labels)


def _train(logits, params: list, draw, parts: list[slice], steps: int, lr: float, log) -> None:
    """``steps`` batches from ``draw``, AdamW with a linear warmup then a cosine decay, progress every 100 steps."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
    started = time.monotonic()
    for step in range(steps):
        images, labels = draw()
        out = logits(images)
        losses = [torch.nn.functional.cross_entropy(out[:, part], labels[:, i]) for i, part in enumerate(parts)]
        loss = sum(losses[1:], start=losses[0])  # started from the first loss, not 0, so the sum is a tensor
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps}  loss {float(loss.detach()):.3f}  {time.monotonic() - started:.0f} s")


def _held_out_accuracy(logits, names: tuple[list[str], list[str], list[str]], size: int) -> dict[str, float]:
    """Colour, shape and background named right on every other shipped validation image."""
    import json

    import torch
    from porter_visualglm.data_paths import SHAPES_DIR
    from porter_visualglm.images import load_image

    records = json.loads((SHAPES_DIR / "fewshot/val.json").read_text())[::2]
    with torch.no_grad():
        out = logits(torch.stack([load_image(SHAPES_DIR / "fewshot" / r["img"], size) for r in records]))
    accuracy = {}
    for name, options, part in zip(("colour", "shape", "background"), names, _parts(names)):
        guesses = out[:, part].argmax(1).tolist()
        accuracy[name] = sum(options[g] in r["label"].split() for g, r in zip(guesses, records)) / len(records)
    return accuracy


def cached_path(steps: int = STEPS) -> Path:
    import hashlib

    digest = hashlib.sha256(Path(__file__).read_bytes() + SHAPES_SCRIPT.read_bytes() + str(steps).encode())
    from porter.recipes import cache_dir

    return cache_dir("image-encoders") / f"tiny-{digest.hexdigest()[:16]}.pt"


def tiny_encoder(steps: int = STEPS, log=print) -> Path:
    """The tiny preset's pretrained encoder file: from the cache, or pretrained now and cached (written whole or
    not at all)."""
    path = cached_path(steps)
    if path.is_file():
        return path
    log(f"pretraining the tiny image encoder ({steps} steps, once; cached as {path})")
    import_sat()
    write(pretrain(steps=steps, log=log), path)
    return path


def write(weights: dict, path: Path) -> None:
    import io

    import torch

    from porter.recipes import atomic_write

    buffer = io.BytesIO()
    torch.save(weights, buffer)
    atomic_write(path, buffer.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path, help="where to write (default: the cache, as tiny_encoder())")
    p.add_argument("--steps", type=int, default=STEPS)
    args = p.parse_args()
    os.environ.setdefault("PORTER_DEVICE", "cpu")
    os.environ.setdefault("SAT_LOGLEVEL", "WARNING")
    if args.out is None:
        # progress on stderr, the path on stdout; imports SAT only when it has to build
        print(tiny_encoder(args.steps, log=lambda line: print(line, file=sys.stderr, flush=True)))
        return
    import_sat()
    write(pretrain(steps=args.steps), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
