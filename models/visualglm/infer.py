"""`porter run visualglm infer`: answer a question about an image, streamed token by token.

The old recipe's options work as they did there (--from_pretrained, --chatglm_path, --english, --prompt_en,
--prompt_zh), and the released checkpoint folder loads as it is: --chatglm_path replaces hand-editing
tokenizer_type in model_config.json. With no checkpoint it runs the tiny preset on a shipped image.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from porter.errors import InputError, UsageError
from porter.recipes import (
    add_device_argument,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    seed,
    use_device,
)

from . import import_sat
from .assets import STANDIN, add_weight_arguments, tokenizer_for, tokenizer_type_of
from .config import PRESET_NAMES

DEFAULT_EN, DEFAULT_ZH = "Describe the image.", "描述这张图片。"  # cli_demo.py's first-turn questions

EPILOG = """\
examples:
  porter run visualglm infer
      the tiny preset with random weights on a shipped image: see it work
  porter run visualglm infer --image examples/1.jpeg --prompt "What's in the image?" --english \\
      --from_pretrained glm/visualglm --chatglm_path glm/chatglm
  porter run visualglm infer --from_pretrained runs/demo/checkpoints/visualglm-MM-DD-HH-MM --interactive
      a checkpoint of `make demo` (its last line names the folder)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=Path, help="the image (default: a shipped held-out image, or asked for with "
                                              "--interactive)")
    p.add_argument("--no-image", action="store_true", help="a text-only question, as upstream's chat without an image")
    p.add_argument("--prompt", help="the question (overrides --prompt_en / --prompt_zh)")
    p.add_argument("--prompt_en", "--prompt-en", default=DEFAULT_EN, help=f"English question (default: {DEFAULT_EN!r})")
    p.add_argument("--prompt_zh", "--prompt-zh", default=DEFAULT_ZH, help=f"Chinese question (default: {DEFAULT_ZH!r})")
    p.add_argument("--english", action="store_true", help="English: the Q:/A: template, --prompt_en, and no Chinese "
                                                          "token sampled (upstream's invalid_slices)")
    add_weight_arguments(p)
    p.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="architecture when there is no checkpoint "
                                                                     "(default: tiny)")
    p.add_argument("--max_length", "--max-length", type=positive_int, default=None,
                   help="prompt + answer tokens (default: 2048, or the model's maximum if smaller)")
    p.add_argument("--top_p", "--top-p", type=probability, default=0.4, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--top_k", "--top-k", type=non_negative_int, default=100, help="0: no top-k cut")
    p.add_argument("--temperature", type=positive_float, default=0.8)
    p.add_argument("--repetition_penalty", "--repetition-penalty", type=positive_float, default=1.2,
                   help="divide the logits of tokens already in the answer by this (default 1.2, as upstream)")
    p.add_argument("--keep-history", action="store_true",
                   help="--interactive: keep every earlier turn, as upstream does, and stop with an error when they no "
                        "longer fit --max_length (default: drop the oldest turns to leave half of it for the answer)")
    p.add_argument("--seed", type=seed, default=None, help="make sampling reproducible (0 to 2**32 - 1)")
    add_device_argument(p)
    p.add_argument("--interactive", action="store_true", help="a chat loop with history; at the image prompt an "
                                                              "empty line chats without an image; 'clear' starts "
                                                              "over, 'quit' ends")


def default_image() -> Path:
    from .data_paths import SHAPES_DIR

    return sorted((SHAPES_DIR / "coco" / "val2017").glob("*.png"))[0]


def load(args, say=print, tokenizer=None):
    """(model, tokenizer, config) for the arguments, the model in its dtype on the current device; ``tokenizer``,
    where the caller has read it already."""

    import_sat()
    from porter.runtime import device

    from .checkpoint import load_model, resolve_dtype
    from .config import preset
    from .model import build_model

    quant = getattr(args, "quant", None)
    dtype = resolve_dtype(args.dtype, quant)
    if args.from_pretrained:
        model, ckpt = load_model(args.from_pretrained, merge_lora=True, dtype=dtype, say=say, quant=quant)
        config, tokenizer_type = ckpt.config, tokenizer_type_of(ckpt)
        say(f"model: {args.from_pretrained} (iteration {ckpt.iteration}, {str(dtype).removeprefix('torch.')}"
            + (f", language model in {quant} bits)" if quant else ")"))
    elif quant:
        raise UsageError(f"--quant {quant} needs --from_pretrained DIR: it quantizes a checkpoint's weights")
    else:
        if args.preset != "tiny":
            raise UsageError(f"--preset {args.preset} with random weights is not worth running",
                              hint="pass --from_pretrained DIR with its checkpoint")
        config, tokenizer_type = preset("tiny"), STANDIN
        model = build_model(config, seed=args.seed or 1234).to(dtype)
        say("model: tiny preset with random weights (no --from_pretrained): expect noise")
    tokenizer = tokenizer or tokenizer_for(tokenizer_type, args.chatglm_path)
    return model.to(device.current_device()).eval(), tokenizer, config


def model_limit(config) -> int:
    """The most tokens, prompt and answer together, this model is asked for: its max_sequence_length, and never
    more than the 2048 ChatGLM-6B was trained on."""
    return min(2048, config.lm.max_sequence_length)


def check_prompt_fits(n: int, limit: int, cap: int) -> None:
    """A prompt of ``n`` tokens must leave room for an answer within ``limit`` (exit 2). The hint names a
    --max_length only where one within the model's ``cap`` would help."""
    if n < limit:
        return
    said = f"{limit} (the model's maximum)" if limit == cap else f"{limit}"
    if n < cap:
        hint = f"shorten the question or raise --max_length above {n} (the model takes at most {cap})"
    else:
        hint = f"shorten the question: the model takes at most {cap} tokens, prompt and answer together"
    raise UsageError(f"the prompt is {n} tokens and --max_length is {said}: no room for an answer", hint=hint)


def preflight(args, image_path: Path | None, query: str | None):
    """Everything a user can get wrong, before any weight is read: the preset, the image (there, a file,
    decodable, not a bomb), the checkpoint's config and keys, the tokenizer, and whether the first question fits
    --max_length. Returns (config, tokenizer)."""
    from .assets import model_source
    from .chat import build_prompt
    from .images import ImageError, check_image

    if not args.from_pretrained and args.preset != "tiny":
        raise UsageError(f"--preset {args.preset} with random weights is not worth running",
                          hint="pass --from_pretrained DIR with its checkpoint")
    if image_path:
        try:
            check_image(image_path, 224)
        except ImageError as exc:
            raise InputError(str(exc)) from None
    # a checkpoint's check builds its model on the meta device, importing SAT: its loggers must not take stdout
    with contextlib.redirect_stdout(sys.stderr):
        config, tokenizer_type, _ = model_source(args)
    tokenizer = tokenizer_for(tokenizer_type, args.chatglm_path)
    if query is not None:
        prompt = build_prompt(tokenizer, query, [], image_length=config.image_length, has_image=bool(image_path),
                              english=args.english)
        check_prompt_fits(len(prompt.ids), min(args.max_length or 2048, model_limit(config)), model_limit(config))
    return config, tokenizer


def run(args) -> int:
    use_device(args)
    from .chat import build_prompt, trim_history
    from .generate import Sampling, stream
    from .images import ImageError, load_image
    from .tokenizer import ENGLISH_BAN

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    query = args.prompt or (args.prompt_en if args.english else args.prompt_zh)
    if args.interactive:
        first = args.image if args.image and not args.no_image else None
    else:
        first = None if args.no_image else (args.image or default_image())
    _, tokenizer = preflight(args, first, None if args.interactive else query)
    model, tokenizer, config = load(args, say, tokenizer)
    cap = model_limit(config)
    limit = min(args.max_length or 2048, cap)
    sampling = Sampling(max_length=limit, top_p=args.top_p, top_k=args.top_k, temperature=args.temperature,
                        repetition_penalty=args.repetition_penalty, seed=args.seed,
                        invalid_slices=[ENGLISH_BAN] if args.english else [])

    def answer(image_path, question, history):
        image = load_image(image_path, config.vision.image_size) if image_path else None
        shape = {"image_length": model.image_length, "has_image": image is not None, "english": args.english}
        if not args.keep_history:
            history = trim_history(tokenizer, question, history, max_length=sampling.max_length, **shape)
        prompt = build_prompt(tokenizer, question, history, **shape)
        check_prompt_fits(len(prompt.ids), sampling.max_length, cap)
        pieces = []
        for piece in stream(model, tokenizer, prompt, image, sampling):
            print(piece, end="", flush=True)
            pieces.append(piece)
        print(flush=True)
        return "".join(pieces)

    if not args.interactive:
        image_path = first
        say(f"image: {image_path or '(none: text only)'}\nquestion: {query}")
        try:
            answer(image_path, query, [])
        except ImageError as exc:
            raise InputError(str(exc)) from None
        return 0
    return chat_loop("" if args.no_image else args.image, answer, say)


def chat_loop(first_image, answer, say) -> int:
    image = first_image
    history: list[tuple[str, str]] = []  # (question, answer) for each turn about this image
    while True:
        try:
            if image is None:  # "" is a text-only chat, chosen with an empty line
                line = input("image> ").strip()
                if line in ("quit", "stop"):
                    return 0
                image, history = (Path(line) if line else ""), []
                say(f"image: {image or '(none: text only)'}")
            question = input("user> ").strip()
        except EOFError:
            print()
            return 0
        if question in ("quit", "stop"):
            return 0
        if not question or question == "clear":
            image = None
            continue
        print("visualglm> ", end="", flush=True)
        try:
            history.append((question, answer(image, question, history)))
        except Exception as exc:  # a bad image path in a chat is a message, not the end of the session
            print(f"\nerror: {exc}", file=sys.stderr)
            image = None
