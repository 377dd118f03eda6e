"""Property-based: whatever a user's few-shot JSON, COCO captions file, image or checkpoint folder holds, the loaders
end in a porter error that names the file (and the record), or load; never another exception."""
import io
import json
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from porter_visualglm.checkpoint import check_checkpoint
from porter_visualglm.data import load_records, read_coco
from porter_visualglm.images import ImageError, load_image
from porter_visualglm.release import make_release_folder, tiny_release_config

from porter.errors import InputError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.sampled_from(["img", "prompt", "label", "id", "x"]) | st.text(max_size=4),
                                           inner, max_size=4), max_leaves=20)
records = st.fixed_dictionaries({}, optional={"img": st.sampled_from(["ok.png", "missing.png", "", "../x.png", 3, None]),
                                              "prompt": json_values, "label": json_values})


def workdir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="porter-prop-"))
    Image.new("RGB", (4, 4), (9, 9, 9)).save(folder / "ok.png")
    return folder


@SETTINGS
@given(st.one_of(json_values, st.lists(records | json_values, max_size=5)))
def test_any_fewshot_json_loads_or_names_file_and_record(document):
    folder = workdir()
    path = folder / "train.json"
    path.write_text(json.dumps(document))
    try:
        loaded = load_records(path, "fewshot")
    except InputError as exc:
        assert str(path) in exc.message
        if isinstance(document, list) and "record" in exc.message:
            assert "(counting from 0)" in exc.message
        return
    assert all(r.image.is_file() for r in loaded.records)


@SETTINGS
@given(st.binary(max_size=64))
def test_any_bytes_as_fewshot_json_are_a_clear_error(raw):
    folder = workdir()
    path = folder / "train.json"
    path.write_bytes(raw)
    try:
        load_records(path, "fewshot")
    except InputError as exc:
        assert str(path) in exc.message


coco_images = st.lists(st.fixed_dictionaries({}, optional={"id": json_values | st.integers(0, 3),
                                                           "file_name": st.sampled_from(["ok.png", "no.png"]) | json_values}),
                       max_size=3)
coco_anns = st.lists(st.fixed_dictionaries({}, optional={"id": st.integers(0, 5) | json_values,
                                                         "image_id": st.integers(0, 3) | json_values,
                                                         "caption": st.text(max_size=8) | json_values}), max_size=4)


@SETTINGS
@given(st.one_of(json_values, st.fixed_dictionaries({}, optional={"images": coco_images | json_values,
                                                                   "annotations": coco_anns | json_values,
                                                                   "info": json_values})))
def test_any_coco_captions_file_loads_or_names_the_file(document):
    root = workdir()
    (root / "annotations").mkdir()
    (root / "train2017").mkdir()
    (root / "ok.png").rename(root / "train2017" / "ok.png")
    path = root / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps(document))
    for skip_bad in (False, True):
        try:
            loaded = read_coco(root, "train", skip_bad=skip_bad)
        except InputError as exc:
            assert str(path) in exc.message
            continue
        assert all(r.image.is_file() and r.answer for r in loaded.records)


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (6, 5), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.integers(0, len(png_bytes())).map(lambda n: png_bytes()[:n]),
                 st.tuples(st.integers(8, 60), st.binary(min_size=1, max_size=8)).map(
                     lambda cut: png_bytes()[:cut[0]] + cut[1] + png_bytes()[cut[0] + len(cut[1]):])))
def test_any_image_bytes_load_or_are_an_image_error(raw):
    path = workdir() / "img.png"
    path.write_bytes(raw)
    try:
        tensor = load_image(path, 8)
    except ImageError as exc:
        assert str(path) in str(exc)
        return
    assert tuple(tensor.shape) == (3, 8, 8)


def test_an_image_over_the_size_cap_is_one_line(monkeypatch):
    path = workdir() / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over 2x the cap, Pillow's bomb error
    with pytest.raises(ImageError, match=r"big\.png: image too large .*porter reads images up to 1,000 pixels"):
        load_image(path, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between 1x and 2x: Pillow only warns; porter refuses
    with pytest.raises(ImageError, match=r"image too large"):
        load_image(path, 8)


@pytest.fixture(scope="module")
def release_folder(tmp_path_factory):
    return make_release_folder(tmp_path_factory.mktemp("prop") / "ckpt")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(latest=st.sampled_from(["1", "2", "", "../1", "1\n"]),
       config_edit=st.sampled_from(["none", "drop-eva", "bad-json", "list", "layers-str", "hidden-odd",
                                    "decoder-pattern", "mp-2"]),
       weights=st.sampled_from(["keep", "garbage", "empty", "truncated", "not-a-dict", "tensor-list"]))
def test_any_checkpoint_folder_loads_or_names_the_file(release_folder, latest, config_edit, weights):
    import shutil

    import torch

    folder = Path(tempfile.mkdtemp(prefix="porter-ckpt-")) / "ckpt"
    shutil.copytree(release_folder, folder)
    (folder / "latest").write_text(latest)
    config = tiny_release_config()
    edits = {"drop-eva": lambda c: c.pop("eva_args"), "layers-str": lambda c: c.update(num_layers="two"),
             "hidden-odd": lambda c: c.update(hidden_size=66), "mp-2": lambda c: c.update(model_parallel_size=2),
             "decoder-pattern": lambda c: c["qformer_args"].update(is_decoder=[False, True])}
    if config_edit in edits:
        edits[config_edit](config)
    text = {"bad-json": "{", "list": "[1, 2]"}.get(config_edit, json.dumps(config))
    (folder / "model_config.json").write_text(text)
    states = folder / "1" / "mp_rank_00_model_states.pt"
    data = states.read_bytes()
    if weights == "garbage":
        states.write_bytes(struct.pack("<q", 42) * 30)
    elif weights == "empty":
        states.write_bytes(b"")
    elif weights == "truncated":
        states.write_bytes(data[: len(data) // 3])
    elif weights == "not-a-dict":
        torch.save([1, 2, 3], states)
    elif weights == "tensor-list":
        torch.save({"module": {"a": [torch.zeros(2)]}}, states)
    try:
        check_checkpoint(folder)
    except InputError as exc:
        assert str(folder) in exc.message
        return
    assert latest.strip() == "1" and config_edit == "none" and weights == "keep"
