"""Few-shot JSON and COCO captions: pairing, auto-detection, every bad-input error, --skip-bad."""
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from porter_visualglm import data
from porter_visualglm.data import DataError, load_records
from porter_visualglm.data_paths import SHAPES_DIR

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
           "black": (0, 0, 0), "yellow": (255, 255, 0)}


def make_coco(root, shuffle_seed=3):
    """Images named by number whose pixels are a colour; one caption per image naming that colour."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images, annotations = [], []
    for n, (name, rgb) in enumerate(COLOURS.items(), start=1):
        Image.new("RGB", (8, 8), rgb).save(root / "train2017" / f"{n:012d}.png")
        images.append({"id": 100 + n, "file_name": f"{n:012d}.png", "width": 8, "height": 8})
        annotations.append({"id": 500 + n, "image_id": 100 + n, "caption": f"a plain {name} square"})
    random.Random(shuffle_seed).shuffle(annotations)  # not in image order: pairing by position would be wrong
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations}))
    return root


def test_coco_pairs_each_caption_with_its_image_by_id(tmp_path):
    root = make_coco(tmp_path / "coco")
    loaded = load_records(root, "coco")
    assert len(loaded.records) == len(COLOURS) and loaded.format == "coco"
    for record in loaded.records:
        pixel = Image.open(record.image).getpixel((0, 0))
        colour = record.answer.split()[2]
        assert pixel == COLOURS[colour], f"{record.answer} paired with {record.image.name}"
    # what the old recipe did (captions by list position) pairs most of them wrongly
    listed = json.loads((root / "annotations/captions_train2017.json").read_text())
    by_position = zip(listed["images"], listed["annotations"])
    assert sum(img["id"] != ann["image_id"] for img, ann in by_position) >= 3


def test_shipped_data_in_both_formats():
    fewshot = load_records(SHAPES_DIR / "fewshot" / "train.json")
    coco = load_records(SHAPES_DIR / "coco")
    assert fewshot.format == "fewshot" and coco.format == "coco"
    assert len(fewshot.records) == len(coco.records) == 432  # 216 images, English and Chinese
    assert {r.prompt for r in fewshot.records} == {data.PROMPT_EN, data.PROMPT_ZH}
    val = load_records(SHAPES_DIR / "coco", split="val", prompt="图片里有什么？")
    assert len(val.records) == 36 and val.records[0].prompt == "图片里有什么？"


def test_shipped_data_is_what_the_script_builds(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_shapes", SHAPES_DIR.parent / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)
    shipped = sorted(p.relative_to(SHAPES_DIR) for p in SHAPES_DIR.rglob("*") if p.is_file())
    rebuilt = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == rebuilt
    assert all((SHAPES_DIR / p).read_bytes() == (tmp_path / p).read_bytes() for p in shipped)


def test_auto_detects_by_structure_not_by_name(tmp_path):
    coco = make_coco(tmp_path / "fewshot-looking-name")
    assert data.detect_format(coco) == "coco"
    few = tmp_path / "coco-looking-name"
    few.mkdir()
    shutil.copy(SHAPES_DIR / "fewshot/train.json", few / "train.json")
    assert data.detect_format(few) == "fewshot" and data.detect_format(few / "train.json") == "fewshot"
    (few / "extra.json").write_text("[]")
    with pytest.raises(DataError, match="cannot tell the data format"):
        data.detect_format(few)


def test_upstreams_fewshot_layout_reads_image_paths_from_the_current_folder(tmp_path, monkeypatch):
    """fewshot-data/dataset.json names its images "fewshot-data/2p.png": relative to the repository's root."""
    folder = tmp_path / "fewshot-data"
    folder.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "2p.png")
    (folder / "dataset.json").write_text(json.dumps([{"img": "fewshot-data/2p.png", "prompt": "这张图片的背景里有什么内容？",
                                                      "label": "两个人"}], ensure_ascii=False))
    monkeypatch.chdir(tmp_path)
    loaded = load_records(Path("fewshot-data/dataset.json"))
    assert [r.image for r in loaded.records] == [(folder / "2p.png").resolve()]
    monkeypatch.chdir(folder)  # from elsewhere the path names nothing: said, with where porter looked
    with pytest.raises(DataError, match=r"record 0 \(counting from 0\): image fewshot-data/2p\.png not found "
                                        r"\(looked beside dataset\.json and in the current folder\)"):
        load_records(Path("dataset.json"))


@pytest.fixture
def fewshot(tmp_path):
    img = tmp_path / "ok.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(img)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")

    def write(records):
        path = tmp_path / "data.json"
        path.write_text(json.dumps(records))
        return path
    return write


@pytest.mark.parametrize("records, message", [
    ({"img": "ok.png"}, "expected a JSON list"),
    ([{"img": "ok.png", "prompt": "q"}], r"record 0 \(counting from 0\): missing field\(s\) label"),
    ([{"img": "ok.png", "prompt": "q", "label": "fine"}, {"img": "gone.png", "prompt": "q", "label": "a"}],
     r"record 1 \(counting from 0\): image .*gone\.png not found"),
    ([{"img": "ok.png", "prompt": "q", "label": "  "}], r"record 0 \(counting from 0\): empty label"),
    (["just a string"], r"record 0 \(counting from 0\): expected an object"),
])
def test_bad_fewshot_records_name_file_and_record(fewshot, records, message):
    path = fewshot(records)
    with pytest.raises(DataError, match=message) as info:
        load_records(path, "fewshot")
    assert str(path) in str(info.value)


def test_skip_bad_skips_and_counts(fewshot, standin_tokenizer):
    path = fewshot([{"img": "ok.png", "prompt": "q", "label": "good"}, {"img": "gone.png", "prompt": "q", "label": "a"},
                    {"img": "ok.png", "prompt": "q"}, {"img": "broken.png", "prompt": "q", "label": "b"}])
    loaded = load_records(path, "fewshot", skip_bad=True)
    assert len(loaded.records) == 2 and len(loaded.skipped) == 2
    with pytest.raises(DataError, match=r"record 3 \(counting from 0\): .*broken\.png: unreadable image"):
        data.VisualGLMDataset(loaded.records, standin_tokenizer, 56, 4)
    dataset = data.VisualGLMDataset(loaded.records, standin_tokenizer, 56, 4, skip_bad=True)
    assert len(dataset) == 1 and len(dataset.skipped) == 1


def test_bad_coco_inputs(tmp_path):
    root = make_coco(tmp_path / "coco")
    path = root / "annotations/captions_train2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["caption"] = ""
    doc["annotations"][1]["image_id"] = 999
    touched = {doc["annotations"][0]["image_id"], doc["annotations"][1]["image_id"]}
    victim = next(img for img in doc["images"] if img["id"] not in touched)
    (root / "train2017" / victim["file_name"]).unlink()
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"captions_train2017\.json: annotation id \d+: "):
        load_records(root, "coco")
    loaded = load_records(root, "coco", skip_bad=True)
    assert len(loaded.records) == len(COLOURS) - 3
    assert sorted(m.split(": ", 2)[-1].split(" ")[0] for m in loaded.skipped) == ["empty", "image", "image_id"]
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nothing" / "annotations", "coco")


def upstream_sample(tok, image_length, prompt, label, max_source, max_target, ignore_pad=True):
    """finetune_visualglm.py's FewShotDataset, restated step by step for one sample (ids, labels)."""
    a = tok.encode("<img>") + [3] * image_length + tok.encode("</img>问：" + prompt + "\n答：")
    b = tok.encode(label)
    a, b = a[: max_source - 1], b[: max_target - 2]
    ids = a + [130001, 130004] + b + [130005]  # build_inputs_with_special_tokens(a, b)
    context = ids.index(130004)
    labels = [-100] * context + ids[context:]
    pad = max_source + max_target - len(ids)
    ids, labels = ids + [3] * pad, labels + [3] * pad
    if ignore_pad:
        labels = [-100 if x == 3 else x for x in labels]
    return ids, labels


@pytest.mark.parametrize("max_source,max_target,ignore_pad", [(64, 256, True), (64, 5, True), (16, 8, False)])
def test_samples_are_laid_out_as_finetune_visualglm_does(standin_tokenizer, max_source, max_target, ignore_pad):
    prompt, label = "What's in the image?", "a red circle on a white background, drawn large"
    ex = data.encode_example(standin_tokenizer, 4, prompt, label,
                             data.Lengths(max_source, max_target, "max", ignore_pad))
    assert (ex.input_ids, ex.labels) == upstream_sample(standin_tokenizer, 4, prompt, label, max_source, max_target,
                                                        ignore_pad)
    assert len(ex.input_ids) == max_source + max_target
    assert ex.input_ids[ex.pre_image:ex.pre_image + 4] == [3, 3, 3, 3]
    sop = ex.input_ids.index(130004)
    assert ex.labels[sop] == 130004 and ex.labels[sop - 1] == -100  # [gMASK]'s position learns to predict <sop>


def test_padding_to_the_longest_gives_the_same_ids_unpadded(standin_tokenizer):
    full = data.encode_example(standin_tokenizer, 4, "What's in the image?", "a red circle")
    short = data.encode_example(standin_tokenizer, 4, "What's in the image?", "a red circle",
                                data.Lengths(pad_to="longest"))
    n = len(short.input_ids)
    assert short.input_ids == full.input_ids[:n] and short.labels == full.labels[:n]
    assert set(full.input_ids[n:]) == {3} and set(full.labels[n:]) == {-100}
    assert short.input_ids[-1] == 130005
    assert standin_tokenizer.decode(short.input_ids[short.input_ids.index(130004) + 1:-1]) == "a red circle"
    batch = data.collate([{"input_ids": short.input_ids, "labels": short.labels, "image": torch.zeros(3, 2, 2),
                           "pre_image": short.pre_image}] * 2)
    assert batch["input_ids"].shape == (2, n) and batch["pre_image"] == short.pre_image


def test_without_ignore_pad_token_for_loss_pads_are_trained_on_however_padded(standin_tokenizer):
    lengths = dict(max_source=64, max_target=16, ignore_pad_token_for_loss=False)
    full = data.encode_example(standin_tokenizer, 4, "q", "a red circle", data.Lengths(pad_to="max", **lengths))
    short = data.encode_example(standin_tokenizer, 4, "q", "a", data.Lengths(pad_to="longest", **lengths))
    batch = data.collate([{"input_ids": e.input_ids, "labels": e.labels, "image": torch.zeros(3, 2, 2),
                           "pre_image": e.pre_image} for e in (full, short)], label_pad=3)
    assert batch["labels"][1, len(short.labels):].tolist() == [3] * (len(full.labels) - len(short.labels))
    assert full.labels[-1] == 3  # upstream: pad labels are the pad id, and count in the loss


def test_a_source_length_that_cuts_the_image_is_refused(standin_tokenizer):
    with pytest.raises(data.DataError, match=r"--max-source-length 8 leaves no room for the question: the image "
                                             r"alone takes \d+ ids"):
        data.encode_example(standin_tokenizer, 8, "What's in the image?", "a red circle", data.Lengths(8, 8))


@pytest.mark.parametrize("record, words", [
    ({"img": "ok.png", "prompt": 5, "label": None}, "prompt is a number (5), label is null, not a string"),
    ({"img": ["ok.png"], "prompt": "q", "label": "a"}, 'img is a list (["ok.png"]), not a string'),
    ({"img": "ok.png", "prompt": True, "label": "a"}, "prompt is a boolean (true), not a string"),
    ({"img": "ok.png", "prompt": "q", "label": {"text": "a"}}, 'label is an object ({"text": "a"}), not a string'),
    ({"img": "ok.png", "prompt": "q", "label": 1.5}, "label is a number (1.5), not a string"),
])
def test_fields_that_are_not_strings_are_bad_records_not_text(fewshot, record, words):
    """str() used to make {"prompt": 5, "label": null} a sample asking "5" and answering "None"."""
    path = fewshot([{"img": "ok.png", "prompt": "q", "label": "good"}, record])
    with pytest.raises(DataError) as info:
        load_records(path, "fewshot")
    assert str(info.value) == f"{path}: record 1 (counting from 0): {words}"
    loaded = load_records(path, "fewshot", skip_bad=True)
    assert [r.answer for r in loaded.records] == ["good"] and loaded.skipped == [str(info.value)]


def test_a_coco_caption_that_is_not_a_string_is_a_bad_record(tmp_path):
    root = make_coco(tmp_path / "coco")
    path = root / "annotations/captions_train2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["caption"] = None
    doc["annotations"][1]["caption"] = 42
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotation id \d+: caption is (null|a number \(42\)), not a string"):
        load_records(root, "coco")
    loaded = load_records(root, "coco", skip_bad=True)
    assert len(loaded.records) == len(COLOURS) - 2 and all(isinstance(r.answer, str) for r in loaded.records)


def bomb_png(width=30000, height=30000):
    """A few bytes whose header claims 900 million pixels, with a stub of pixel data."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_checking_an_image_refuses_a_bomb_from_its_header_without_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile
    from porter_visualglm.images import ImageError, check_image, load_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())

    def no_decoding(self):
        raise AssertionError("decoded the pixels")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for read in (check_image, load_image):
        with pytest.raises(ImageError, match=r"bomb\.png: image too large \(900,000,000 pixels\); porter reads "
                                             r"images up to 89,478,485 pixels"):
            read(bomb, 56)


def test_checking_an_image_decodes_it_and_refuses_what_is_not_a_readable_file(tmp_path):
    import os

    from porter_visualglm.images import ImageError, check_image

    good = tmp_path / "good.jpg"
    Image.new("RGB", (640, 480), (9, 99, 199)).save(good, quality=90)
    assert check_image(good, 56) is None
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:400])  # the header parses; the pixels stop short
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    for name, words in (("cut.jpg", "unreadable image"), ("fifo.png", "not a regular file"),
                        ("folder.png", "a folder, not an image"), ("nowhere.png", "image not found")):
        with pytest.raises(ImageError, match=words):
            check_image(tmp_path / name, 56)


def test_the_image_check_decodes_every_image_of_a_small_set_and_a_seeded_sample_of_a_large_one(tmp_path):
    records = []
    for n in range(6):
        path = tmp_path / f"{n}.png"
        if n in (1, 4):
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8), (n, n, n)).save(path)
        # two captions per image: the images are what is checked, each once
        records += [data.Record(path, "q", f"caption {k}", f"data.json: record {2 * n + k}") for k in (0, 1)]
    every = data.check_images(records, 56)
    assert (every.checked, every.total, every.sampled) == (6, 6, False)
    assert [r.source for r, _ in every.bad] == [f"data.json: record {i}" for i in (2, 3, 8, 9)]
    sample = data.check_images(records, 56, limit=3, seed=7)
    assert (sample.checked, sample.total, sample.sampled) == (3, 6, True)
    assert sample.bad == data.check_images(records, 56, limit=3, seed=7).bad  # the same sample for the same seed
    assert {r.image for r, _ in sample.bad} <= {tmp_path / "1.png", tmp_path / "4.png"}
