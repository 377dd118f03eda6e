"""`porter run visualglm train`: the real DeepSpeed launcher and SAT's training_main, on CPU processes."""
import functools
import json
import shutil
import textwrap
from pathlib import Path

import pytest
from porter_visualglm.data_paths import SHAPES_DIR

from porter.testing import run_porter, tree_digest

INSTALLED_SAT = Path(__import__("importlib").util.find_spec("sat").origin).parent


def train(save, *extra, timeout=600):
    return run_porter("run", "visualglm", "train", "--npus", "2", "--device", "cpu", "--preset", "tiny",
                      "--save", str(save), "--master_port", "29533", *extra, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder):
    """Ten steps on two CPU processes, the port applied in memory (the installed SAT is not patched), the image
    encoder starting from a pretrained one (the generator's, a few steps) with the ViT frozen (learning rate scale 0)
    and the Q-Former at half the rate (SAT's per-parameter lr_scale, through training_main's parameter groups)."""
    save = tmp_path_factory.mktemp("train") / "run"
    before = tree_digest(INSTALLED_SAT)
    r = train(save, "--iters", "10", "--patch", "memory", "--image-encoder", str(tiny_encoder),
              "--vision-lr-scale", "0", "--qformer-lr-scale", "0.5")
    return save, r, before


def test_two_ranks_train_through_training_main(trained):
    save, r, _ = trained
    assert r.returncode == 0, r.stderr[-4000:]
    assert "porter worker 0: sat patched in memory" in r.stderr and "porter worker 1: sat patched in memory" in r.stderr
    # the parent planned; each worker found that plan by the same key, without loading the rules
    assert r.stderr.count("modules, cached plan)") == 2
    assert "2 worker(s) on cpu" in r.stderr
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 11))
    losses = [row["loss"] for row in rows]
    assert all(x == x and x < float("inf") for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    assert all(row["samples_per_s"] > 0 and row["tokens_per_s"] > 0 for row in rows)
    summary = json.loads((save / "summary.json").read_text())
    assert summary["steps"] == 10 and "final loss:" in r.stdout and "checkpoint:" in r.stdout
    # loss.png: matplotlib's chart at its default size, with the smoothed loss curve drawn (tests/test_metrics.py
    # checks the drawing itself)
    from PIL import Image

    from porter.metrics import SMOOTH_COLOR

    with Image.open(save / "loss.png") as image:
        assert (image.format, image.size) == ("PNG", (640, 400))
        curve = tuple(int(SMOOTH_COLOR[i:i + 2], 16) for i in (1, 3, 5))
        assert any(colour == curve for _, colour in image.convert("RGB").getcolors(640 * 400))
    assert list((save / "runs").rglob("events.out.tfevents.*")), "no TensorBoard events"


def tokens_by_step(steps, first_step=1, global_batch=8, seed=1234):
    """What --sampling epochs has the two workers read at each step, as the metrics count it: the non-pad ids of
    the shipped set's samples at the step's positions of the epoch orders (the fixture's defaults: batch 4 per
    worker, seed 1234)."""
    from porter_visualglm.sampling import epoch_order

    counts = token_counts()
    order = [int(i) for e in range(3) for i in epoch_order(len(counts), seed, e)]
    return [sum(counts[i] for i in order[(s - 1) * global_batch:s * global_batch])
            for s in range(first_step, first_step + steps)]


@functools.cache
def token_counts() -> list[int]:
    """Each shipped training sample's non-pad ids, as the trainer's metrics count them (tiny preset, default
    lengths)."""
    from porter_visualglm import tokenizer as tok
    from porter_visualglm.assets import STANDIN, tokenizer_for
    from porter_visualglm.config import preset
    from porter_visualglm.data import encode_example, load_records

    records = load_records(SHAPES_DIR / "fewshot" / "train.json", "auto").records
    tokenizer, image_length = tokenizer_for(STANDIN, None), preset("tiny").image_length
    return [sum(i != tok.PAD for i in encode_example(tokenizer, image_length, r.prompt, r.answer).input_ids)
            for r in records]


def test_the_workers_read_a_shuffled_epoch_between_them(trained):
    save, r, _ = trained
    assert r.returncode == 0
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [row["samples"] for row in rows] == [8] * 10
    assert [row["tokens"] for row in rows] == tokens_by_step(10)
    config = json.loads((save / "deepspeed_config.rank0.json").read_text())
    assert config["optimizer"]["params"]["fused"] is True  # the file the workers gave DeepSpeed


def test_checkpoint_is_sat_format_and_loads_for_inference(trained):
    save, r, _ = trained
    ckpt = Path(json.loads((save / "summary.json").read_text())["checkpoint"])
    assert (ckpt / "latest").read_text().strip() == "10"
    assert (ckpt / "10" / "mp_rank_00_model_states.pt").is_file()
    config = json.loads((ckpt / "model_config.json").read_text())
    assert config["model_class"] == "VisualGLMModel" and config["use_lora"] is False  # random init: full
    assert config["tokenizer_type"] == "porter-standin" and config["vocab_size"] == 130528
    image = sorted((SHAPES_DIR / "coco/val2017").glob("*.png"))[0]
    r = run_porter("run", "visualglm", "infer", "--from_pretrained", str(ckpt), "--image", str(image), "--english",
                   "--max_length", "80", env={"PORTER_DEVICE": "cpu"}, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(iteration 10, float32)" in r.stderr


def test_the_image_encoder_starts_from_the_file_a_zero_lr_scale_freezes_the_vit_the_half_rate_qformer_learns(trained, tiny_encoder):
    import torch

    save, r, _ = trained
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"image encoder from {tiny_encoder}" in r.stderr
    ckpt = Path(json.loads((save / "summary.json").read_text())["checkpoint"])
    weights = torch.load(ckpt / "10" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    pretrained = torch.load(tiny_encoder, map_location="cpu", weights_only=True)
    vit = [k for k in pretrained if ".vit." in k]
    qformer = [k for k in pretrained if ".qformer." in k]
    assert vit and qformer and len(vit) + len(qformer) == len(pretrained)
    assert all(torch.equal(weights[k], pretrained[k]) for k in vit)  # loaded, then not moved (lr x 0)
    assert any(not torch.equal(weights[k], pretrained[k]) for k in qformer)  # loaded and trained on, at 0.5x


def test_memory_mode_leaves_the_installed_sat_byte_identical(trained):
    _, r, before = trained
    assert r.returncode == 0
    assert tree_digest(INSTALLED_SAT) == before
    assert not (INSTALLED_SAT.parent / ".porter-state").exists()


def test_resume_continues_from_the_saved_step(trained, tmp_path):
    save, r, _ = trained
    assert r.returncode == 0
    copy = tmp_path / "run"
    shutil.copytree(save, copy)
    r = train(copy, "--iters", "13", "--resume", "--sampling", "sat")
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 11)) + [11, 12, 13]
    # --sampling sat reads as upstream's finetune does: SAT's RandomMappingDataset draws, from the first one again
    # after a resume (SAT continues its draws only with --resume-dataloader, which upstream does not pass)
    from sat.data_utils.configure_data import RandomMappingDataset

    drawn = RandomMappingDataset(range(len(token_counts())))
    sat = [sum(token_counts()[drawn[i]] for i in range(8 * k, 8 * k + 8)) for k in range(3)]
    assert sat != tokens_by_step(3, first_step=11)  # what the shuffled epochs would read: the check tells them apart
    assert [row["tokens"] for row in rows[10:]] == sat
    ckpts = list((copy / "checkpoints").glob("*/latest"))
    assert len(ckpts) == 1 and ckpts[0].read_text().strip() == "13"  # the same run folder, continued


def test_dry_run_npu_prints_the_launch():
    r = run_porter("run", "visualglm", "train", "--npus", "8", "--device", "npu", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in out and "DS_ACCELERATOR=npu" in out
    assert "PORTER_BACKEND=hccl" in out and "--num_gpus 8" in out and "deepspeed.launcher.runner" in out
    assert "no npu here: device count not checked" in r.stderr


def test_dry_run_multi_node_uses_deepspeeds_hostfile_form(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    r = run_porter("run", "visualglm", "train", "--npus", "8", "--device", "npu", "--hostfile", str(hostfile),
                   "--num_nodes", "2", "--master_addr", "node1", "--iters", "5", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"--hostfile {hostfile} --num_nodes 2 --master_addr node1" in r.stdout
    assert r.stdout.rstrip().endswith("visualglm train --iters 5")  # the recipe's own options pass through


def test_launch_errors_are_clear():
    r = run_porter("run", "visualglm", "train", "--npus", "999", "--device", "cpu", "--dry-run")
    assert r.returncode != 0 and "--npus 999, but this machine has" in r.stderr and "CPU cores" in r.stderr
    r = run_porter("run", "visualglm", "train", "--device", "npu")
    assert r.returncode != 0 and "--device npu: no npu device is usable on this machine" in r.stderr
    r = run_porter("run", "visualglm", "train", "--patch", "disk", "--device", "cpu", "--dry-run")
    assert r.returncode != 0 and "--patch disk, but sat is not patched on disk" in r.stderr
    r = run_porter("run", "visualglm", "train", "--zero-stage", "7", "--dry-run")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run_porter("run", "visualglm", "train", "--npu", "2", "--dry-run")  # abbreviations would reach workers
    assert r.returncode == 2 and "unrecognized arguments: --npu" in r.stderr
    r = run_porter("run", "visualglm", "train", "--dry-run", env={"PORTER_DEVICE": "tpu"})
    assert r.returncode != 0 and "PORTER_DEVICE='tpu': unknown device" in r.stderr and "Traceback" not in r.stderr


def test_cpu_workers_get_torchs_fused_adamw_and_accelerators_deepspeeds_own():
    import argparse

    from porter_visualglm.train import add_arguments, deepspeed_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    cpu = deepspeed_config(args, "cpu")["optimizer"]["params"]
    assert cpu["torch_adam"] is True and cpu["fused"] is True  # torch 2.13 has the fused CPU kernel
    npu = deepspeed_config(args, "npu")["optimizer"]["params"]
    assert "torch_adam" not in npu and "fused" not in npu


def test_zero_is_off_for_one_worker_on_for_several_and_a_resumed_run_keeps_its_stage(tmp_path):
    import argparse
    import json

    from porter_visualglm.train import add_arguments, deepspeed_config, zero_stage

    p = argparse.ArgumentParser()
    add_arguments(p)
    default, chosen = p.parse_args([]), p.parse_args(["--zero-stage", "2"])
    assert (zero_stage(default, 1), zero_stage(default, 2), zero_stage(chosen, 1)) == (0, 1, 2)
    for world, stage in ((1, 0), (2, 1)):
        default.zero_stage = zero_stage(default, world)
        assert deepspeed_config(default, "cpu").get("zero_optimization", {}).get("stage", 0) == stage
        default.zero_stage = None
    (tmp_path / "deepspeed_config.rank0.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert zero_stage(default, 1, tmp_path) == 1  # started with ZeRO 1 (an older porter's default): kept
    assert zero_stage(chosen, 1, tmp_path) == 2
    for junk in ('{"zero_optimization": {"stage": "1"}}', '[1]', '{"zero_optimization": {"stage": 9}}', '{'):
        (tmp_path / "deepspeed_config.rank0.json").write_text(junk)
        assert zero_stage(default, 1, tmp_path) == 0, junk
    assert zero_stage(default, 2, tmp_path / "absent") == 1


def test_a_plugin_device_is_chosen_with_device_through_the_cli(tmp_path):
    """hookspecs.py promises that a plugin's device is chosen with --device: through `porter run`'s launch (the
    workers are told its name, backend and DeepSpeed accelerator) and through an in-process recipe's own option."""
    plugin = tmp_path / "toydev.py"
    plugin.write_text(textwrap.dedent("""
        import porter
        from porter.runtime.device import CPU

        class Toy(CPU):
            name = "toy"
            backend = "gloo"

        @porter.hookimpl
        def porter_register_devices(register):
            register(Toy)
        """))
    env = {"PORTER_PLUGINS": str(plugin)}
    r = run_porter("run", "visualglm", "train", "--npus", "1", "--device", "toy", "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert "PORTER_DEVICE=toy" in r.stdout and "DS_ACCELERATOR=cpu" in r.stdout and "OMP_NUM_THREADS" in r.stdout
    r = run_porter("run", "visualglm", "check", "--device", "toy", "--from_pretrained", str(tmp_path / "none"),
                   env=env)
    assert "not a device" not in r.stderr and "invalid" not in r.stderr  # the option took it; the folder is missing
    r = run_porter("run", "visualglm", "infer", "--device", "tpu", env=env)
    assert r.returncode == 2 and "'tpu' is not a device porter knows (auto, cpu, cuda, npu, toy)" in r.stderr
