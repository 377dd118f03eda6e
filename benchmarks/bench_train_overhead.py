"""The training framework's overhead per step: `porter run visualglm train --mode performance --npus 1` (SAT's
training_main, DeepSpeed at the recipe's ZeRO stage: 0 for one worker, gloo) against a plain PyTorch loop over the same model, data, batch, precision
and optimizer, both in a fresh process pinned to the same core with one thread.

The plain loop (`--plain`, in this file) takes from the recipe only what defines the work: its argument parser
and defaults, its build() (model, fine-tuning mode, learning-rate scales), its data set and batches
(EpochBatches over the same records, lengths and collate) and its loss (answer_loss); the port is applied the
way a worker gets it. It then runs forward, backward, gradient clipping at 1.0 (the recipe's DeepSpeed config)
and torch's fused AdamW with the recipe's hyper-parameters (weight decay 0.01 on matrices, none on biases and
norms, as SAT groups them; learning rate warmup + cosine as the recipe's schedule). No SAT training loop, no
DeepSpeed. It runs with the same glibc malloc settings porter's launcher gives its CPU workers, so the two differ
in the framework only.

A step's time is measured as the recipe measures it: from one step's start to the next's, batch reading
included; steps 4 to 20 count. Rounds alternate framework, plain, framework, ...

    ratio = framework step time / plain step time      (acceptance target: <= 1.15)

    .venv/bin/python benchmarks/bench_train_overhead.py [--rounds 3]      -> results/train_overhead.json
    .venv/bin/python benchmarks/bench_train_overhead.py --zero-stage 0   -> results/train_overhead_zero0.json
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time

from _porter_train import ROOT, STEADY_FROM, machine, porter_train
from _shared import save, summary

TARGET = 1.15


def plain(iters: int) -> dict:
    """The plain loop, in this process (started pinned by :func:`plain_run`)."""
    os.environ.setdefault("PORTER_DEVICE", "cpu")
    import torch

    from porter import plugins
    from porter.launch import port_here
    from porter.recipes import find_recipe, recipe_parser

    registry = plugins.load(lazy=True)
    recipe = find_recipe(registry, "visualglm", "train")
    args = recipe_parser(recipe).parse_args(["--mode", "performance", "--iters", str(iters)])
    args.finetune = "lora" if args.from_pretrained else "full"  # what the recipe's run() makes of "auto"
    port_here(recipe, registry)
    from porter_visualglm import import_sat
    from porter_visualglm import tokenizer as tok
    from porter_visualglm.data import collate
    from porter_visualglm.model import answer_loss
    from porter_visualglm.sampling import EpochBatches
    from porter_visualglm.train import _dataset, build

    with contextlib.redirect_stdout(sys.stderr):
        import_sat()
        torch.manual_seed(args.seed)
        model, tokenizer, config, _ = build(args, lambda msg: None)
        dataset, lengths, _ = _dataset(args, tokenizer, config, lambda msg: None)
    model.train()
    batch_of = functools.partial(collate, label_pad=-100 if lengths.ignore_pad_token_for_loss else tok.PAD)
    batches = EpochBatches(dataset, args.batch_size, batch_of, rank=0, world=1, seed=args.seed)
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    warmup = max(1, int(args.warmup * args.iters))

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.iters - warmup)))

    starts = []
    for step in range(args.iters):
        starts.append(time.perf_counter())
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        float(loss)  # the recipe reads each step's loss for its log
    starts.append(time.perf_counter())
    seconds = [b - a for a, b in zip(starts, starts[1:])][STEADY_FROM - 1:]
    return {"step_s": sum(seconds) / len(seconds), "steps": len(seconds), "samples_per_step": args.batch_size,
            "threads": torch.get_num_threads(), "cpus_allowed": sorted(os.sched_getaffinity(0))}


def plain_run(iters: int) -> dict:
    """The plain loop in a fresh process on the first usable core, one thread, porter's worker malloc settings."""
    from porter.launch import malloc_env

    core = min(os.sched_getaffinity(0))
    env = {**os.environ, **malloc_env(), "OMP_NUM_THREADS": "1", "PORTER_DEVICE": "cpu"}
    command = [sys.executable, __file__, "--plain", "--iters", str(iters)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    if proc.returncode != 0:
        raise SystemExit(f"the plain loop failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--iters", type=int, default=20, help="steps per run (the recipe's performance mode: at most 20)")
    parser.add_argument("--zero-stage", choices=("0", "1", "2"),
                        help="passed to the recipe (default: the recipe's own default, ZeRO 1); ZeRO 0 shows what "
                             "ZeRO's flattening and copies cost a single worker, which it cannot partition for")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # one plain loop, JSON on stdout
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain(args.iters)))
        return {}
    info = machine()
    framework, loop = [], []
    for r in range(args.rounds):
        framework.append(porter_train(1, bind=True, threads=1, iters=args.iters,
                                      extra=["--zero-stage", args.zero_stage] if args.zero_stage else None))
        loop.append(plain_run(args.iters))
        print(f"round {r + 1}: framework {framework[-1]['step_s']:.3f} s/step, plain {loop[-1]['step_s']:.3f} s/step",
              flush=True)
    ratio = statistics.median(f["step_s"] for f in framework) / statistics.median(p["step_s"] for p in loop)
    result = {
        "what": "step time of porter run visualglm train --mode performance --npus 1 (SAT training_main, DeepSpeed "
                "ZeRO 1, gloo) vs a plain PyTorch loop over the same model, data, batch 4, fp32 and fused AdamW; "
                "both pinned to one core with 1 thread",
        **info, "rounds": args.rounds, "steady_steps": f"{STEADY_FROM}-{args.iters}",
        "zero_stage": args.zero_stage or "recipe default (0 for one worker)",
        "framework_step_s": summary([f["step_s"] for f in framework]),
        "plain_step_s": summary([p["step_s"] for p in loop]),
        "ratio": ratio, "ratio_per_round": summary([f["step_s"] / p["step_s"] for f, p in zip(framework, loop)]),
        "target": TARGET, "met": ratio <= TARGET,
        "framework_runs": framework, "plain_runs": loop,
    }
    save("train_overhead" + (f"_zero{args.zero_stage}" if args.zero_stage else ""), result)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_runs")}, indent=2))
    return result


if __name__ == "__main__":
    main()
