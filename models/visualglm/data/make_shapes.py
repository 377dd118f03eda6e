"""Build the shipped 'shapes' data set: coloured shapes on plain backgrounds, with English and Chinese captions.

    python models/visualglm/data/make_shapes.py [OUT_DIR]

Writes, under OUT_DIR (default: the `shapes/` folder beside this script), the same images in both formats
the VisualGLM plugin reads:

    fewshot/train.json, fewshot/val.json     [{"img": "images/...png", "prompt": ..., "label": ...}, ...]
    fewshot/images/*.png
    coco/annotations/captions_{train,val}2017.json   COCO captions, two per image (English, Chinese)
    coco/{train,val}2017/*.png

Deterministic: the same seed gives byte-identical files, so the shipped copy can be checked against a rebuild.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {  # name -> (RGB, Chinese)
    "red": ((220, 30, 30), "红色"), "green": ((30, 170, 40), "绿色"), "blue": ((30, 60, 220), "蓝色"),
    "yellow": ((240, 210, 20), "黄色"), "purple": ((140, 40, 180), "紫色"), "orange": ((245, 130, 20), "橙色"),
}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
BACKGROUNDS = {"white": ((250, 250, 250), "白色"), "black": ((15, 15, 15), "黑色"), "gray": ((128, 128, 128), "灰色")}
PROMPT_EN, PROMPT_ZH = "What's in the image?", "图片里有什么？"
SIZE = 64
PER_COMBO_TRAIN, PER_COMBO_VAL = 12, 1  # 18 colour/shape pairs -> 216 training and 18 held-out images


def draw(colour: str, shape: str, background: str, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[background][0])
    pen = ImageDraw.Draw(image)
    r = rng.randint(14, 24)
    cx, cy = rng.randint(r + 2, SIZE - r - 2), rng.randint(r + 2, SIZE - r - 2)
    fill = COLOURS[colour][0]
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def captions(colour: str, shape: str, background: str) -> tuple[str, str]:
    article = "an" if colour[0] in "aeiou" else "a"
    english = f"{article} {colour} {shape} on a {background} background"
    chinese = f"{BACKGROUNDS[background][1]}背景上的一个{COLOURS[colour][1]}{SHAPES[shape]}"
    return english, chinese


def build(out: Path, seed: int = 2024) -> dict:
    rng = random.Random(seed)
    splits = {"train": [], "val": []}
    backgrounds = list(BACKGROUNDS)
    for colour in COLOURS:
        for shape in SHAPES:
            for split, count in (("train", PER_COMBO_TRAIN), ("val", PER_COMBO_VAL)):
                for _ in range(count):
                    background = rng.choice(backgrounds)
                    splits[split].append((colour, shape, background, draw(colour, shape, background, rng)))
    (out / "fewshot/images").mkdir(parents=True, exist_ok=True)
    (out / "coco/annotations").mkdir(parents=True, exist_ok=True)
    image_id, caption_id = 0, 0
    for split, items in splits.items():
        fewshot, coco = [], {"info": {"description": "porter shapes"}, "licenses": [], "images": [],
                             "annotations": []}
        (out / f"coco/{split}2017").mkdir(parents=True, exist_ok=True)
        for colour, shape, background, image in items:
            image_id += 1
            name = f"{image_id:012d}.png"
            image.save(out / "fewshot/images" / name, optimize=True)
            image.save(out / f"coco/{split}2017" / name, optimize=True)
            english, chinese = captions(colour, shape, background)
            fewshot.append({"img": f"images/{name}", "prompt": PROMPT_EN, "label": english})
            fewshot.append({"img": f"images/{name}", "prompt": PROMPT_ZH, "label": chinese})
            coco["images"].append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
            for text in (english, chinese):
                caption_id += 1
                coco["annotations"].append({"id": caption_id, "image_id": image_id, "caption": text})
        # annotations listed in another order than the images, as real COCO files are
        coco["annotations"].sort(key=lambda a: (a["caption"], a["id"]))
        (out / f"fewshot/{split}.json").write_text(json.dumps(fewshot, ensure_ascii=False, indent=1) + "\n")
        (out / f"coco/annotations/captions_{split}2017.json").write_text(
            json.dumps(coco, ensure_ascii=False, indent=1) + "\n")
    return {split: len(items) for split, items in splits.items()}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("shapes")
    counts = build(target)
    print(f"wrote {counts['train']} training and {counts['val']} held-out images to {target}")
