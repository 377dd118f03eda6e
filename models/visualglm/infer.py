"""`porter run visualglm infer`: answer a question about an image, streamed token by token.

The old recipe's options work as they did there (--from_pretrained, --chatglm_path, --english, --prompt_en,
--prompt_zh), and the released checkpoint folder loads as it is: --chatglm_path replaces hand-editing
tokenizer_type in model_config.json. With no checkpoint it runs the tiny preset on a shipped image.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from porter.errors import PorterError

DEFAULT_EN, DEFAULT_ZH = "Describe the image.", "描述这张图片。"
TINY_TOKENIZER = "porter-tiny"

EPILOG = """\
examples:
  porter run visualglm infer
      the tiny preset with random weights on a shipped image: see it work
  porter run visualglm infer --image examples/1.jpeg --prompt "What's in the image?" --english \\
      --from_pretrained glm/visualglm --chatglm_path glm/chatglm
  porter run visualglm infer --from_pretrained runs/demo/checkpoint --interactive
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=Path, help="the image (default: a shipped held-out image, or asked for with "
                                              "--interactive)")
    p.add_argument("--prompt", help="the question (overrides --prompt_en / --prompt_zh)")
    p.add_argument("--prompt_en", "--prompt-en", default=DEFAULT_EN, help=f"English question (default: {DEFAULT_EN!r})")
    p.add_argument("--prompt_zh", "--prompt-zh", default=DEFAULT_ZH, help=f"Chinese question (default: {DEFAULT_ZH!r})")
    p.add_argument("--english", action="store_true", help="ask --prompt_en instead of --prompt_zh")
    p.add_argument("--from_pretrained", "--from-pretrained", type=Path, metavar="DIR",
                   help="a SAT checkpoint folder (latest, model_config.json, <iter>/); default: random weights")
    p.add_argument("--chatglm_path", "--chatglm-path", type=Path, metavar="DIR",
                   help="the folder holding ChatGLM-6B's ice_text.model (tiny checkpoints carry their own)")
    p.add_argument("--preset", default="tiny", help="architecture when there is no checkpoint (default: tiny)")
    p.add_argument("--max_length", "--max-length", type=int, default=None,
                   help="prompt + answer tokens (default: 2048, or the model's maximum if smaller)")
    p.add_argument("--top_p", "--top-p", type=float, default=0.4)
    p.add_argument("--top_k", "--top-k", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "npu"), default="auto",
                   help="where to run (default: detection, npu first)")
    p.add_argument("--interactive", action="store_true", help="a chat loop with history; an empty line or "
                                                              "'clear' starts over with a new image, 'quit' ends")


def default_image() -> Path:
    from .data_paths import SHAPES_DIR

    return sorted((SHAPES_DIR / "coco" / "val2017").glob("*.png"))[0]


def load(args, say=print):
    """(model, tokenizer, config) for the arguments."""
    import contextlib

    # SAT and DeepSpeed log to stdout through handlers bound at import: import them with stdout pointing at
    # stderr, so stdout carries the answer alone (and can be piped).
    with contextlib.redirect_stdout(sys.stderr):
        import sat  # noqa: F401
    from .checkpoint import load_model
    from .config import preset
    from .model import build_model
    from .tiny_tokenizer import tiny_tokenizer_dir
    from .tokenizer import ChatGLMTokenizer

    if args.from_pretrained:
        model, ckpt = load_model(args.from_pretrained, merge_lora=True)
        config, tokenizer_type = ckpt.config, ckpt.sat_args.get("tokenizer_type", "")
        say(f"model: {args.from_pretrained} (iteration {ckpt.iteration})")
    else:
        if args.preset != "tiny":
            raise PorterError(f"--preset {args.preset} with random weights is not worth running",
                              hint="pass --from_pretrained DIR with its checkpoint")
        config, tokenizer_type = preset("tiny"), TINY_TOKENIZER
        model = build_model(config, seed=args.seed or 1234)
        say("model: tiny preset with random weights (no --from_pretrained): expect noise")
    if args.chatglm_path:
        tokenizer = ChatGLMTokenizer(args.chatglm_path)
    elif tokenizer_type == TINY_TOKENIZER:
        tokenizer = ChatGLMTokenizer(tiny_tokenizer_dir())
    else:
        raise PorterError("this checkpoint uses ChatGLM-6B's tokenizer: pass --chatglm_path DIR",
                          hint="the folder holding ice_text.model (no need to edit tokenizer_type in model_config.json)")
    return model, tokenizer, config


def run(args) -> int:
    if args.device != "auto":
        os.environ["PORTER_DEVICE"] = args.device
    from porter.runtime import device

    from .generate import Sampling, fit_history, stream
    from .images import ImageError, load_image

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    model, tokenizer, config = load(args, say)
    model = model.to(device.current_device()).eval()
    limit = min(args.max_length or 2048, 2048 if args.from_pretrained else config.lm.max_sequence_length)
    sampling = Sampling(max_length=limit, top_p=args.top_p, top_k=args.top_k, temperature=args.temperature,
                        seed=args.seed)
    query = args.prompt or (args.prompt_en if args.english else args.prompt_zh)

    def answer(image_path, question, history):
        image = load_image(image_path, config.vision.image_size)
        history = fit_history(tokenizer, model.image_length, question, history, sampling.max_length)
        pieces = []
        for piece in stream(model, tokenizer, image, question, history, sampling):
            print(piece, end="", flush=True)
            pieces.append(piece)
        print(flush=True)
        return "".join(pieces)

    if not args.interactive:
        image_path = args.image or default_image()
        say(f"image: {image_path}\nquestion: {query}")
        try:
            answer(image_path, query, [])
        except ImageError as exc:
            raise PorterError(str(exc)) from None
        return 0
    return chat_loop(args.image, answer, say)


def chat_loop(first_image, answer, say) -> int:
    image, history = first_image, []
    while True:
        try:
            if image is None:
                line = input("image> ").strip()
                if line in ("quit", "stop"):
                    return 0
                image, history = (Path(line) if line else default_image()), []
                say(f"image: {image}")
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
