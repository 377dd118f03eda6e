"""The optimizer step CPU workers take: torch's AdamW as DeepSpeed's `torch_adam` builds it by default (a for-loop
over the parameters) against `fused=True` (torch's fused CPU kernel, what porter's CPU DeepSpeed config asks for),
on the tiny VisualGLM's trainable parameters with the ViT frozen (17 M, mostly the 130,528-row embedding and output
layer), alternating A and B, in the two layouts the optimizer sees them in: one tensor per parameter (ZeRO 0, as
`make demo` trains) and one flat tensor holding a worker's half (ZeRO 1 or 2 on 2 workers, `train`'s default
stage). results/cpu_adamw.json.

    .venv/bin/python benchmarks/bench_cpu_adamw.py [--rounds 7] [--steps 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from _shared import save, summary


def step_seconds(params, steps: int, **kind) -> float:
    import torch

    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, **kind)
    optimizer.step()  # the state (two moments per parameter) is allocated on the first step
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    a = parser.parse_args()
    os.environ.setdefault("PORTER_DEVICE", "cpu")
    import torch
    from porter_visualglm.config import preset
    from porter_visualglm.model import build_model, scale_lr

    model = build_model(preset("tiny"), finetune="full", seed=1)
    scale_lr(model, "vit", 0)
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)
    layouts = {"per parameter (ZeRO 0)": params,
               "one flat half (ZeRO 1/2, 2 workers)": [torch.nn.Parameter(torch.zeros(total // 2))]}
    for tensors in layouts.values():
        for p in tensors:
            p.grad = torch.randn_like(p) * 1e-3
    kinds = {"for-loop": {"foreach": False}, "fused": {"fused": True}}
    samples = {f"{layout}, {kind}": [] for layout in layouts for kind in kinds}
    for _ in range(a.rounds):
        for layout, tensors in layouts.items():
            for kind, options in kinds.items():
                samples[f"{layout}, {kind}"].append(step_seconds(tensors, a.steps, **options))
    ratios = {layout: statistics.median(samples[f"{layout}, fused"]) / statistics.median(samples[f"{layout}, for-loop"])
              for layout in layouts}
    result = {"what": "one torch.optim.AdamW step over the tiny VisualGLM's trainable parameters (ViT frozen), CPU",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "parameters": total, "rounds": a.rounds, "steps_per_sample": a.steps,
              "seconds": {k: summary(v) for k, v in samples.items()}, "fused_over_loop": ratios}
    save("cpu_adamw", result)
    for layout, ratio in ratios.items():
        print(f"{layout}: fused / for-loop {ratio:.2f}x")
    return result


if __name__ == "__main__":
    main()
