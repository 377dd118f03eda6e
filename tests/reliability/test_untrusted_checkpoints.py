"""Issue 23, point 3: no code runs from a data file. A checkpoint whose pickle would write a marker file when
unpickled is refused by every command that reads one (exit 7, one error line naming the file) and the marker
folder stays empty.

On the code before this test, each of these wrote the marker: `check`, `infer` and `serve` unpickled the weights
file with weights_only=False, and `train --resume` launched DeepSpeed, whose workers' SAT (patched to pass
weights_only=False) unpickled it.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from crafted import crafted_state, files_in
from porter_visualglm.data_paths import SHAPES_DIR
from porter_visualglm.release import make_release_folder, tiny_release_config

from porter.testing import run_porter

ENV = {"PORTER_DEVICE": "cpu"}
STATES = "mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    config = tiny_release_config()
    config["tokenizer_type"] = "porter-standin"  # the built-in tokenizer: nothing else stops these commands first
    make_release_folder(root / "release", config)
    return root


def crafted_folder(root, name: str, payload: str):
    """The tiny release folder with the payload saved beside its real weights; (folder, weights file, marker)."""
    folder, marker = root / name, root / f"{name}-marker"
    shutil.copytree(root / "release", folder)
    marker.mkdir()
    states = folder / "1" / STATES
    weights = torch.load(states, map_location="cpu", weights_only=True)["module"]
    torch.save(crafted_state(payload, marker, weights), states)
    return folder, states, marker


def assert_refused_naming(r, path, marker):
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 7, f"exit {r.returncode}:\n{r.stderr[-3000:]}\n{r.stdout[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(errors) == 1 and f"{path}: refused: its pickle names " in errors[0], r.stderr[-3000:]
    assert files_in(marker) == [], "the payload ran"


def test_check_refuses_a_crafted_checkpoint_without_running_it(root):
    folder, states, marker = crafted_folder(root, "check", "os-system")
    r = run_porter("run", "visualglm", "check", "--from_pretrained", str(folder), env=ENV, timeout=180)
    assert_refused_naming(r, states, marker)
    assert "posix.system" in r.stderr
    assert "will load" not in r.stdout


def test_infer_refuses_a_crafted_checkpoint_without_running_it(root):
    folder, states, marker = crafted_folder(root, "infer", "eval")
    image = sorted((SHAPES_DIR / "coco/val2017").glob("*.png"))[0]
    r = run_porter("run", "visualglm", "infer", "--from_pretrained", str(folder), "--image", str(image),
                   "--english", "--max_length", "120", env=ENV, timeout=180)
    assert_refused_naming(r, states, marker)
    assert "builtins.eval" in r.stderr


def test_serve_refuses_a_crafted_checkpoint_before_serving(root):
    folder, states, marker = crafted_folder(root, "serve", "exec-partial")
    r = run_porter("run", "visualglm", "serve", "--from_pretrained", str(folder), "--port", "0", env=ENV,
                   timeout=180)
    assert_refused_naming(r, states, marker)
    assert "builtins.exec, functools.partial" in r.stderr
    assert "serving" not in r.stdout


def test_train_resume_refuses_a_crafted_checkpoint_before_deepspeed_starts(root):
    folder, states, marker = crafted_folder(root, "resume-source", "open")
    save = root / "run"
    ckpt = save / "checkpoints" / "visualglm-01-01-00-00"
    ckpt.mkdir(parents=True)
    (save / ".porter-run").write_text("{}\n")  # an earlier porter run's folder (porter.outputs.MARKER)
    (ckpt / "latest").write_text("1")
    shutil.copy(folder / "model_config.json", ckpt / "model_config.json")
    shutil.copytree(folder / "1", ckpt / "1")
    r = run_porter("run", "visualglm", "train", "--npus", "1", "--device", "cpu", "--preset", "tiny", "--iters", "2",
                   "--save", str(save), "--resume", "--master_port", "29571", env=ENV, timeout=300)
    assert_refused_naming(r, f"--resume: {ckpt / '1' / STATES}", marker)
    assert "io.open" in r.stderr  # builtins.open is io.open
    assert "launching:" not in r.stderr and "launch.py" not in r.stderr  # no DeepSpeed launcher, no worker
    assert json.loads((ckpt / "model_config.json").read_text())["tokenizer_type"] == "porter-standin"
