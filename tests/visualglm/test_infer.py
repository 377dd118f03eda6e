"""`porter run visualglm infer` as a user runs it."""
import json
import shutil

import pytest
from porter_visualglm.data_paths import SHAPES_DIR

from porter.testing import run_porter

IMAGE = str(sorted((SHAPES_DIR / "coco/val2017").glob("*.png"))[3])
ENV = {"PORTER_DEVICE": "cpu"}


def test_infer_prints_a_streamed_answer_on_the_tiny_preset():
    r = run_porter("run", "visualglm", "infer", "--image", IMAGE, "--prompt", "What's in the image?", "--english",
                   "--seed", "3", "--max_length", "60", env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tiny preset with random weights" in r.stderr and f"image: {IMAGE}" in r.stderr
    assert r.stdout.strip(), "no answer printed"
    assert "[INFO]" not in r.stdout and "[WARNING]" not in r.stdout  # library logs go to stderr


def test_infer_is_reproducible_with_a_seed():
    outs = {run_porter("run", "visualglm", "infer", "--image", IMAGE, "--seed", "9", "--max_length", "60",
                       env=ENV, timeout=60).stdout for _ in range(2)}
    assert len(outs) == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config):
    from porter_visualglm.checkpoint import save_model
    from porter_visualglm.model import build_model

    folder = tmp_path_factory.mktemp("infer") / "ckpt"
    return save_model(build_model(tiny_config, finetune="lora", seed=4), tiny_config, folder, iteration=12,
                      finetune="lora", lora_rank=10, tokenizer_type="porter-standin")


def test_infer_from_a_checkpoint(checkpoint):
    r = run_porter("run", "visualglm", "infer", "--from_pretrained", str(checkpoint), "--image", IMAGE,
                   "--prompt_zh", "图片里有什么？", "--max_length", "80", env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"model: {checkpoint} (iteration 12, float32)" in r.stderr and "question: 图片里有什么？" in r.stderr


def test_released_style_checkpoint_needs_chatglm_path_not_a_config_edit(checkpoint, tmp_path):
    from porter_visualglm.standin_tokenizer import standin_tokenizer_dir

    released = tmp_path / "glm" / "visualglm"
    shutil.copytree(checkpoint, released)
    config = json.loads((released / "model_config.json").read_text())
    config["tokenizer_type"] = "THUDM/chatglm-6b"
    (released / "model_config.json").write_text(json.dumps(config))
    r = run_porter("run", "visualglm", "infer", "--from_pretrained", str(released), "--image", IMAGE, env=ENV)
    assert r.returncode != 0 and "pass --chatglm_path DIR" in r.stderr
    r = run_porter("run", "visualglm", "infer", "--from_pretrained", str(released), "--image", IMAGE, "--english",
                   "--chatglm_path", str(standin_tokenizer_dir()), "--max_length", "80", env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]


def test_interactive_chat_keeps_going_until_quit():
    stdin = "What's in the image?\nAnd the background?\nclear\n\nWhat colour?\nquit\n"
    r = run_porter("run", "visualglm", "infer", "--interactive", "--image", IMAGE, "--max_length", "80",
                   "--seed", "1", env=ENV, input=stdin, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("visualglm> ") == 3  # two turns on the first image, one on the default image


def test_bad_image_and_unknown_recipe():
    r = run_porter("run", "visualglm", "infer", "--image", "/nonexistent.png", env=ENV)
    assert r.returncode == 7 and "/nonexistent.png: image not found" in r.stderr
    r = run_porter("run", "visualglm", "paint")
    assert r.returncode == 6 and "model 'visualglm' has no recipe 'paint' (recipes: check, convert, demo, eval, infer, serve, train)" in r.stderr
    r = run_porter("run")
    assert r.returncode == 0 and "visualglm" in r.stdout
    r = run_porter("run", "visualglm", "infer", "--help")
    assert r.returncode == 0 and "--from_pretrained" in r.stdout and "examples:" in r.stdout


def test_english_and_text_only_questions():
    r = run_porter("run", "visualglm", "infer", "--no-image", "--english", "--prompt", "Hello, who are you?",
                   "--max_length", "60", "--seed", "2", env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "image: (none: text only)" in r.stderr and "question: Hello, who are you?" in r.stderr


def test_a_prompt_longer_than_max_length_is_a_usage_error():
    r = run_porter("run", "visualglm", "infer", "--prompt", "long " * 40, "--max_length", "30", env=ENV, timeout=60)
    assert r.returncode == 2 and "tokens and --max_length is 30: no room for an answer" in r.stderr
    assert "Traceback" not in r.stderr
