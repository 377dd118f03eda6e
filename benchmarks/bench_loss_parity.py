"""Does the port change what training computes? 100 fine-tuning steps of the tiny VisualGLM (full fine-tuning,
AdamW, the shipped shapes set in a fixed order, one seed) through the original SAT and through the patched SAT,
each in its own process; the loss curves compared step by step. The old Ascend recipe reported 4e-3.

    .venv/bin/python benchmarks/bench_loss_parity.py [--steps 100]      -> results/loss_parity.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _shared import original_and_patched, save

GOAL = 1e-5  # max relative difference, fp32


def losses(steps: int, seed: int) -> list[float]:
    """The loss of every step, in this process (whichever SAT is first on sys.path)."""
    import torch

    torch.set_num_threads(1)  # the same reduction order in both processes
    with contextlib.redirect_stdout(sys.stderr):
        import sat  # noqa: F401
    from porter_visualglm.config import preset
    from porter_visualglm.data import Lengths, VisualGLMDataset, collate, load_records
    from porter_visualglm.data_paths import SHAPES_DIR
    from porter_visualglm.model import build_model
    from porter_visualglm.standin_tokenizer import standin_tokenizer_dir
    from porter_visualglm.tokenizer import ChatGLMTokenizer

    torch.manual_seed(seed)
    config = preset("tiny")
    model = build_model(config, finetune="full").float().train()
    tokenizer = ChatGLMTokenizer(standin_tokenizer_dir())
    dataset = VisualGLMDataset(load_records(SHAPES_DIR / "fewshot/train.json").records, tokenizer,
                               config.vision.image_size, config.image_length, lengths=Lengths(pad_to="longest"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out, batch_size = [], 8
    for step in range(steps):
        start = (step * batch_size) % len(dataset)
        batch = collate([dataset[(start + i) % len(dataset)] for i in range(batch_size)])
        logits = model(input_ids=batch["input_ids"], image=batch["image"], pre_image=batch["pre_image"])[0]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out.append(float(loss))
    return out


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    opts = parser.parse_args()
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        original, patched = original_and_patched(Path(tmp))
        for label, site in (("original", original), ("patched", patched)):
            proc = subprocess.run([sys.executable, __file__, "--worker", str(opts.steps), str(opts.seed)],
                                  env={**os.environ, "PYTHONPATH": str(site), "PORTER_DEVICE": "cpu"},
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{label} run failed: {proc.stderr[-2000:]}")
            curves[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    rel = [abs(p - o) / abs(o) for o, p in zip(curves["original"], curves["patched"])]
    result = {"what": "tiny VisualGLM, full fine-tuning, AdamW lr 1e-4, batch 8, fp32, one thread, original vs patched "
                      "SAT in separate processes",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": opts.steps, "seed": opts.seed,
              "relative_difference": {"mean": statistics.fmean(rel), "max": max(rel)},
              "goal_max_at_most": GOAL, "goal_met": max(rel) <= GOAL,
              "first_and_last_loss": {k: [v[0], v[-1]] for k, v in curves.items()}, "losses": curves}
    save("loss_parity", result)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=2))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(losses(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
