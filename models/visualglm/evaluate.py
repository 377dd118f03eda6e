"""`porter run visualglm eval`: answer every question of a data set in greedy batches, write the answers to
predictions.jsonl, and score them (BLEU-4, ROUGE-L, CIDEr; colour and shape on the shapes set); ``--compare``
scores a second checkpoint on the same questions, side by side. ``make demo`` scores its model with this code.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path

from porter.errors import EXIT_USAGE, InputError, PorterError
from porter.outputs import write_output
from porter.recipes import add_device_argument, positive_int, use_device

from .assets import add_weight_arguments
from .scoring import Answer

EPILOG = """\
examples:
  porter run visualglm eval --from_pretrained runs/demo/checkpoints/visualglm-MM-DD-HH-MM
      the shipped shapes set's held-out images, 8 at a time
  porter run visualglm eval --data /data/coco2017 --from_pretrained glm/visualglm --chatglm_path glm/chatglm \\
      --compare runs/finetuned --limit 500
      the released model and a fine-tuned one on 500 COCO val2017 questions
"""


def default_data() -> Path:
    from .data_paths import SHAPES_DIR

    return SHAPES_DIR / "fewshot" / "val.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_weight_arguments(p)
    p.add_argument("--compare", type=Path, metavar="DIR", help="a second checkpoint, scored on the same questions")
    p.add_argument("--data", type=Path, help="few-shot JSON file or COCO 2017 root (default: the shipped shapes "
                                             "set's held-out images)")
    p.add_argument("--data-format", choices=("fewshot", "coco", "auto"), default="auto")
    p.add_argument("--split", default="val", help="COCO split (default val: captions_val2017.json, val2017/)")
    p.add_argument("--prompt", default="What's in the image?", help="the question asked of COCO images")
    p.add_argument("--batch-size", type=positive_int, default=8, help="questions answered together (default 8); "
                   "a greedy answer is the same at any batch size")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest answer (default 64 tokens)")
    p.add_argument("--limit", type=positive_int, help="only the first N questions")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="where predictions.jsonl and scores.json go "
                                                                     "(default runs/eval)")
    add_device_argument(p)


def questions(records) -> list[Answer]:
    """One question per (image, prompt), every caption of it a reference, in the data's order."""
    grouped: dict[tuple, Answer] = {}
    for r in records:
        key = (str(r.image), r.prompt)
        if key not in grouped:
            grouped[key] = Answer(str(r.image), r.prompt, [], "")
        grouped[key].references.append(r.answer)
    return list(grouped.values())


def held_out() -> list[Answer]:
    """The shipped shapes set's held-out questions."""
    from .data import load_records

    return questions(load_records(default_data(), "fewshot").records)


def answer(model, tokenizer, items: list[Answer], image_size: int, *, batch_size: int = 8,
           max_new_tokens: int = 64, progress=None) -> list[Answer]:
    """Greedy answers, asked as the model was fine-tuned (upstream's Chinese template, whatever the language),
    ``batch_size`` at a time; fills and returns ``items``."""
    from .chat import build_prompt, process_response
    from .generate import Decoder, Request, Sampling
    from .images import load_image

    longest = min(2048, model.transformer.max_sequence_length)
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        requests = []
        for item in chunk:
            prompt = build_prompt(tokenizer, item.prompt, image_length=model.image_length)
            requests.append(Request(prompt, load_image(item.image, image_size),
                                    Sampling.greedy(min(longest, len(prompt.ids) + max_new_tokens))))
        decoder = Decoder(model, requests, allowed)
        ids: list[list[int]] = [[] for _ in chunk]  # each row's answer tokens so far
        while not decoder.done:
            for row, token in decoder.step().items():
                if token is not None:
                    ids[row].append(token)
        for item, row_ids in zip(chunk, ids):
            item.answer = process_response(tokenizer.decode(row_ids))
        if progress:
            progress(start + len(chunk), len(items))
    return items


def score(items: list[Answer]) -> dict:
    from .scoring import caption_scores, shape_scores

    return {"questions": len(items), "captions": caption_scores(items), "shapes": shape_scores(items)}


def run(args) -> int:
    use_device(args)
    if not args.from_pretrained:
        raise PorterError("--from_pretrained DIR is required: the checkpoint to evaluate", exit_code=EXIT_USAGE)
    for folder in filter(None, (args.from_pretrained, args.compare)):
        if not folder.is_dir():
            raise PorterError(f"{folder}: no such checkpoint folder", exit_code=EXIT_USAGE)
    from porter.outputs import check_output_folder

    check_output_folder(args.out, "--out")
    from .assets import model_source, tokenizer_for
    from .data import check_images, load_records

    data = args.data or default_data()
    items = questions(load_records(data, args.data_format, split=args.split, prompt=args.prompt).records)
    items = items[: args.limit] if args.limit else items
    if not items:
        raise PorterError(f"{data}: no questions to ask", exit_code=EXIT_USAGE)
    # both checkpoints and their tokenizers, and the images, before the first model loads: a bad --compare or a
    # corrupt image found after minutes of answering wastes them
    sizes = set()
    for folder in filter(None, (args.from_pretrained, args.compare)):
        one = copy.copy(args)
        one.from_pretrained = folder
        # checking a checkpoint builds its model on the meta device, importing SAT: its loggers must not take stdout
        with contextlib.redirect_stdout(sys.stderr):
            config, tokenizer_type, _ = model_source(one)
        tokenizer_for(tokenizer_type, args.chatglm_path)
        sizes.add(config.vision.image_size)
    images = check_images(items, max(sizes))
    if images.bad:
        item, why = images.bad[0]
        more = f" (and {len(images.bad) - 1} more question(s))" if len(images.bad) > 1 else ""
        raise InputError(f"{why}{more}", hint="remove the question from the data, or replace the image")

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    results = {}
    for label, folder in (("model", args.from_pretrained), ("compare", args.compare)):
        if folder is None:
            continue
        answered = evaluate_checkpoint(args, folder, copy.deepcopy(items), say)
        out = args.out if label == "model" else args.out / "compare"
        write_predictions(out / "predictions.jsonl", answered)
        name = str(folder) if str(folder) not in results else f"{folder} (again)"
        results[name] = score(answered)
        say(f"{folder}: predictions in {out / 'predictions.jsonl'}")
    write_output(args.out / "scores.json", (json.dumps({"data": str(data), "questions": len(items),
                                                       "checkpoints": results}, indent=2) + "\n").encode(), "--out")
    print(render(results))
    return 0


def evaluate_checkpoint(args, folder: Path, items: list[Answer], say) -> list[Answer]:
    import time

    from .infer import load

    one = copy.copy(args)
    one.from_pretrained, one.preset, one.seed = folder, "tiny", None
    model, tokenizer, config = load(one, say)
    started = time.monotonic()

    def progress(done, total):
        say(f"  answered {done}/{total} ({done / max(time.monotonic() - started, 1e-9):.1f}/s)")

    from .images import ImageError

    try:
        return answer(model, tokenizer, items, config.vision.image_size, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, progress=progress)
    except ImageError as exc:  # one the sampled check did not decode, or changed since: still one line
        raise InputError(str(exc)) from None


def write_predictions(path: Path, items: list[Answer]) -> None:
    """Atomically (a new file renamed over the old, never written through a link planted in --out)."""
    rows = "".join(json.dumps({"image": a.image, "prompt": a.prompt, "answer": a.answer, "references": a.references},
                              ensure_ascii=False) + "\n" for a in items)
    write_output(path, rows.encode("utf-8"), "--out")


def render(results: dict) -> str:
    """The scores of each checkpoint in one column each."""
    names = list(results)
    rows = [("questions", [str(r["questions"]) for r in results.values()])]
    for metric in ("BLEU-4", "ROUGE-L", "CIDEr"):
        rows.append((metric, [f"{r['captions'].get(metric, 0):.3f}" for r in results.values()]))
    if all(r["shapes"] for r in results.values()):
        for metric, label in (("colour", "colour right"), ("shape", "shape right"), ("both", "both right")):
            rows.append((label, [f"{r['shapes'][metric]:.0%}" for r in results.values()]))
    width = max(len(n) for n in names) + 2
    lines = [" " * 14 + "".join(f"{n:<{width}}" for n in names)]
    lines += [f"{label:<14}" + "".join(f"{v:<{width}}" for v in values) for label, values in rows]
    return "\n".join(lines)
