"""VisualGLM training and evaluation data: few-shot JSON and COCO 2017 captions.

Both formats become :class:`Record` (image path, prompt, answer). A bad record is an error naming the file
and the record, unless ``skip_bad``, which skips it and counts it. ``auto`` picks the format from the
folder's structure, never from a word in its path.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import torch

from porter.errors import InputError

from . import tokenizer as tok
from .chat import IMAGE_CLOSE, IMAGE_OPEN, prompt_text
from .images import ImageError, load_image

PROMPT_EN = "What's in the image?"
PROMPT_ZH = "图片里有什么？"
FORMATS = ("fewshot", "coco", "auto")


class DataError(InputError):
    """Bad input data; the message names the file and the record."""


@dataclass(frozen=True)
class Record:
    image: Path
    prompt: str
    answer: str
    source: str  # "file:record" for error messages


@dataclass
class Loaded:
    records: list[Record]
    skipped: list[str] = field(default_factory=list)  # why each skipped record was skipped
    format: str = ""


def _problem(problems: list[str], skip_bad: bool, message: str) -> None:
    if not skip_bad:
        raise DataError(message, hint="--skip-bad skips such records and reports how many")
    problems.append(message)


def read_fewshot(path: Path, skip_bad: bool = False) -> Loaded:
    """A JSON list of {"img", "prompt", "label"}; image paths relative to the JSON file."""
    path = Path(path)
    _check_regular(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # not UTF-8 as well as not JSON
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{img, prompt, label}} records, got {type(data).__name__}")
    loaded = Loaded([], [], "fewshot")
    problems: list[str] = []
    for n, item in enumerate(data):
        where = f"{path}: record {n} (counting from 0)"
        if not isinstance(item, dict):
            _problem(problems, skip_bad, f"{where}: expected an object, got {type(item).__name__}")
            continue
        missing = [k for k in ("img", "prompt", "label") if k not in item]
        if missing:
            _problem(problems, skip_bad, f"{where}: missing field(s) {', '.join(missing)}")
            continue
        # str() would train on "5" for a prompt of 5 and on "None" for a null label: a field that is not text is
        # a mistake in the file, not text to learn
        wrong = [f"{k} is {_json_type(item[k])}" for k in ("img", "prompt", "label") if not isinstance(item[k], str)]
        if wrong:
            _problem(problems, skip_bad, f"{where}: {', '.join(wrong)}, not a string")
            continue
        if not item["label"].strip():
            _problem(problems, skip_bad, f"{where}: empty label")
            continue
        image = _image_path(path, item["img"])
        if image is None:
            _problem(problems, skip_bad, f"{where}: image {item['img']} not found (looked beside {path.name} and in "
                                         f"the current folder)")
            continue
        loaded.records.append(Record(image, item["prompt"], item["label"], where))
    loaded.skipped = problems
    return loaded


def _json_type(value) -> str:
    """What a JSON value is, in JSON's words, with the value when it is short."""
    names = {bool: "a boolean", int: "a number", float: "a number", type(None): "null", list: "a list",
             dict: "an object"}
    name = names.get(type(value), type(value).__name__)
    shown = json.dumps(value)
    return f"{name} ({shown})" if value is not None and len(shown) <= 20 else name


def _check_regular(path: Path) -> None:
    """A data file must be a regular file: reading a FIFO blocks forever, a folder's error names no record."""
    from porter.diskio import regular_file_problem

    problem = regular_file_problem(path, "a JSON file")
    if problem:
        raise DataError(f"{path}: {'file not found' if problem == 'no such file' else problem}")


def _image_path(json_file: Path, img: str) -> Path | None:
    """A record's image: relative to the JSON file's folder, else to the current folder, which is what upstream's
    fewshot-data/dataset.json means ("fewshot-data/2p.png", read from the repository's root). Whether it is a
    readable image is :func:`check_images`' question; here only whether it is there."""
    if not img.strip() or "\0" in img:  # "" is the folder itself; no file name holds a NUL
        return None
    for base in (json_file.parent, Path.cwd()):
        try:
            candidate = (base / img).resolve()
        except OSError:  # a loop of links: not an image we can find
            continue
        if _exists(candidate):  # a folder or a FIFO is found here and refused by name when checked
            return candidate
    return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the file system: no such file either
        return False


def coco_files(root: Path, split: str = "train") -> tuple[Path, Path]:
    return root / "annotations" / f"captions_{split}2017.json", root / f"{split}2017"


def read_coco(root: Path, split: str = "train", prompt: str = PROMPT_EN, skip_bad: bool = False) -> Loaded:
    """COCO 2017 captions through pycocotools, each caption paired with its image by ``image_id``."""
    from pycocotools.coco import COCO  # type: ignore[import-untyped]  # pycocotools ships no type stubs

    annotations, images = coco_files(Path(root), split)
    if not annotations.exists():
        raise DataError(f"{annotations}: file not found", hint=f"a COCO root holds annotations/ and {split}2017/")
    _check_regular(annotations)
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(annotations))
    except Exception as exc:  # noqa: BLE001 - pycocotools asserts, indexes and hashes whatever the file holds
        raise DataError(f"{annotations}: not a COCO captions file ({type(exc).__name__}: {exc})") from None
    loaded = Loaded([], [], "coco")
    problems: list[str] = []
    for ann_id in sorted(coco.anns):
        ann = coco.anns[ann_id]
        where = f"{annotations}: annotation id {ann_id}"
        caption = ann.get("caption", "")
        if not isinstance(caption, str):  # as for few-shot labels: never train on str(None)
            _problem(problems, skip_bad, f"{where}: caption is {_json_type(caption)}, not a string")
            continue
        caption = caption.strip()
        if not caption:
            _problem(problems, skip_bad, f"{where}: empty caption")
            continue
        info = coco.imgs.get(ann.get("image_id"))
        if info is None:
            _problem(problems, skip_bad, f"{where}: image_id {ann.get('image_id')} is not in the images list")
            continue
        if not isinstance(info, dict) or not isinstance(info.get("file_name"), str) or not info["file_name"]:
            _problem(problems, skip_bad, f"{where}: image_id {ann.get('image_id')} has no file_name")
            continue
        image = images / info["file_name"]
        if not _exists(image):
            _problem(problems, skip_bad, f"{where}: image {image} not found")
            continue
        loaded.records.append(Record(image, prompt, caption, where))
    loaded.skipped = problems
    return loaded


# How many distinct images the parent decodes before a launch. Every worker decodes all of them as it starts
# (VisualGLMDataset), so a bad one found there ends a run that DeepSpeed has already started; below this many
# the parent finds every one first, above it a seeded sample of this many (a few seconds), which finds a
# systematic problem (a folder of truncated downloads), not necessarily a single bad file.
IMAGE_CHECK_LIMIT = 2000


class HasImage(Protocol):
    """What ``check_images`` reads of a record: a training Record and an evaluation Answer both name an image."""

    @property
    def image(self) -> str | Path: ...


R = TypeVar("R", bound=HasImage)


@dataclass
class ImageCheck(Generic[R]):
    bad: list[tuple[R, str]]  # each record whose image failed, with why
    checked: int  # distinct images decoded
    total: int  # distinct images in the records

    @property
    def sampled(self) -> bool:
        return self.checked < self.total


def check_images(records: Sequence[R], image_size: int, limit: int = IMAGE_CHECK_LIMIT,
                 seed: int = 0) -> ImageCheck[R]:
    """Decode the records' distinct images as :func:`~.images.load_image` would (bombs refused from the header),
    every one where there are at most ``limit``, else a sample of ``limit`` drawn with ``seed``."""
    import random

    from .images import check_image

    by_image: dict[str | Path, list[R]] = {}
    for record in records:
        by_image.setdefault(record.image, []).append(record)
    paths = list(by_image)
    chosen = paths if len(paths) <= limit else random.Random(seed).sample(paths, limit)
    bad: list[tuple[R, str]] = []
    for path in chosen:
        try:
            check_image(path, image_size)
        except ImageError as exc:
            bad += [(record, str(exc)) for record in by_image[path]]
    return ImageCheck(bad, len(chosen), len(paths))


def detect_format(path: Path) -> str:
    """'coco' for a folder with annotations/captions_*2017.json, 'fewshot' for a .json file or a folder
    holding exactly one; decided by structure, not by names in the path."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return "fewshot"
    if path.is_dir():
        if list((path / "annotations").glob("captions_*2017.json")):
            return "coco"
        jsons = sorted(path.glob("*.json"))
        if len(jsons) == 1:
            return "fewshot"
        raise DataError(f"{path}: cannot tell the data format: no annotations/captions_*2017.json, and "
                        f"{len(jsons)} .json files at the top", hint="pass --data-format fewshot|coco")
    if _exists(path):  # a file not named .json, a FIFO, a device: what it holds is not for us to guess
        raise DataError(f"{path}: cannot tell the data format: neither a .json file nor a folder",
                        hint="pass --data-format fewshot for a few-shot JSON file of another name")
    raise DataError(f"{path}: no such file or folder")


def load_records(path: Path, data_format: str = "auto", split: str = "train", prompt: str = PROMPT_EN,
                 skip_bad: bool = False) -> Loaded:
    path = Path(path)
    if data_format not in FORMATS:
        raise DataError(f"--data-format {data_format!r}: expected one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if data_format == "auto" else data_format
    if fmt == "coco":
        return read_coco(path, split, prompt, skip_bad)
    if path.is_dir():
        candidates = [path / f"{split}.json"] if (path / f"{split}.json").exists() else sorted(path.glob("*.json"))
        if len(candidates) != 1:
            raise DataError(f"{path}: expected {split}.json or a single .json file")
        path = candidates[0]
    return read_fewshot(path, skip_bad)


@dataclass(frozen=True)
class Lengths:
    """``finetune_visualglm.py``'s limits: the source (image and question) is cut to ``max_source - 1`` ids,
    the answer to ``max_target - 2``; ``pad_to="max"`` pads every sample to ``max_source + max_target`` as
    upstream does, ``"longest"`` only to the longest in its batch (the same loss, less work)."""
    max_source: int = 64
    max_target: int = 256
    pad_to: str = "max"
    ignore_pad_token_for_loss: bool = True


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    pre_image: int


def encode_example(tokenizer, image_length: int, prompt: str, answer: str, lengths: Lengths = Lengths()) -> Example:
    """One training sample as ``finetune_visualglm.py`` builds it.

    ids: ``<img>`` + pads + ``</img>问：{prompt}\n答：`` (cut to ``max_source - 1``), ``[gMASK] <sop>``, the answer
    (cut to ``max_target - 2``), ``<eop>``. labels: -100 up to ``<sop>``, then the ids themselves from ``<sop>`` on,
    so the ``[gMASK]`` position learns to predict ``<sop>`` (the loss shifts by one). Pad positions get -100 when
    ``ignore_pad_token_for_loss`` (upstream's default), else the pad id.
    """
    head = tokenizer.encode(IMAGE_OPEN)
    if len(head) + image_length > lengths.max_source - 1:
        raise DataError(f"--max-source-length {lengths.max_source} leaves no room for the question: the image alone "
                        f"takes {len(head) + image_length} ids", hint=f"use at least {len(head) + image_length + 16}")
    source = head + [tok.PAD] * image_length + tokenizer.encode(IMAGE_CLOSE + prompt_text(prompt))
    source = source[: lengths.max_source - 1]
    target = tokenizer.encode(answer)[: max(lengths.max_target - 2, 0)]
    ids = tokenizer.build_inputs(source, target)
    context = len(source) + 1  # the index of <sop>
    labels = [-100] * context + ids[context:]
    if lengths.pad_to == "max":
        pad = lengths.max_source + lengths.max_target - len(ids)
        ids, labels = ids + [tok.PAD] * pad, labels + [tok.PAD] * pad
    if lengths.ignore_pad_token_for_loss:
        labels = [-100 if label == tok.PAD else label for label in labels]
    return Example(ids, labels, len(head))


class VisualGLMDataset(torch.utils.data.Dataset):
    """Records as model inputs: input_ids, labels, image tensor, pre_image."""

    def __init__(self, records: list[Record], tokenizer, image_size: int, image_length: int, skip_bad: bool = False,
                 flip: bool = False, lengths: Lengths = Lengths()):
        self.items, self.skipped, self.flip = [], [], flip
        for record in records:
            try:
                image = load_image(record.image, image_size)
            except ImageError as exc:
                if not skip_bad:
                    raise DataError(f"{record.source}: {exc}", hint="--skip-bad skips such records") from None
                self.skipped.append(f"{record.source}: {exc}")
                continue
            self.items.append((encode_example(tokenizer, image_length, record.prompt, record.answer, lengths), image))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        example, image = self.items[index]
        if self.flip and torch.rand(()) < 0.5:
            image = torch.flip(image, dims=[2])  # left-right: what the shapes captions say is unchanged
        return {"input_ids": example.input_ids, "labels": example.labels, "image": image,
                "pre_image": example.pre_image}


def collate(batch: list[dict], label_pad: int = -100) -> dict:
    """Pad on the right with pad id 3, labels with ``label_pad`` (-100, or the pad id when pads are trained on, as
    upstream does without ignore_pad_token_for_loss); every sample has its image at the same offset."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), tok.PAD, dtype=torch.long)
    labels = torch.full((len(batch), width), label_pad, dtype=torch.long)
    for row, b in enumerate(batch):
        ids[row, : len(b["input_ids"])] = torch.tensor(b["input_ids"])
        labels[row, : len(b["labels"])] = torch.tensor(b["labels"])
    pre = {b["pre_image"] for b in batch}
    if len(pre) != 1:
        raise ValueError(f"samples in one batch place the image at different offsets: {sorted(pre)}")
    return {"input_ids": ids, "labels": labels, "image": torch.stack([b["image"] for b in batch]),
            "pre_image": pre.pop()}
