"""Data-parallel efficiency on the CPU: samples/s of `porter run visualglm train --mode performance` (tiny
VisualGLM, shipped data, batch 4 per worker, DeepSpeed ZeRO 1 over gloo: the recipe's own path) with N = 1 and
N = 2 processes, every process pinned to a core of its own with one thread (`OMP_NUM_THREADS=1 --bind-cores`), so
the two runs differ only in the number of workers. Rounds alternate 1, 2, 1, 2, ... so drift in the machine's
load hits both alike.

    efficiency = samples/s with N processes / (N x samples/s with 1 process)

samples/s is all workers' samples over the steps' time, steps 4 to 20 (the first three pay for warm-up), read
from the run's metrics.jsonl. Run it on an otherwise idle machine with at least 2 free cores: a busy core slows
one worker and, through the all-reduce, all of them (the result records the load average at the start).

    .venv/bin/python benchmarks/bench_scaling.py [--rounds 3]      -> results/scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

from _porter_train import machine, porter_train
from _shared import save, summary

COUNTS = (1, 2)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of 1 and 2 processes (default 3)")
    parser.add_argument("--iters", type=int, default=20, help="steps per run (the recipe's performance mode: at most 20)")
    parser.add_argument("--batch-size", type=int, default=None, help="per worker (default: the recipe's, 4)")
    parser.add_argument("--zero-stage", choices=("0", "1", "2"), default=None,
                        help="for both counts (default: the recipe's, 0 for one worker and 1 for two)")
    args = parser.parse_args()
    extra = [*(["--batch-size", str(args.batch_size)] if args.batch_size else []),
             *(["--zero-stage", args.zero_stage] if args.zero_stage else [])]
    if len(os.sched_getaffinity(0)) < max(COUNTS):
        raise SystemExit(f"needs {max(COUNTS)} usable cores, this process may use {len(os.sched_getaffinity(0))}")
    info = machine()
    if info["load_average_at_start"] > 0.5:
        print(f"warning: load average {info['load_average_at_start']:.2f}: the machine is not idle, figures will "
              f"be low and noisy", flush=True)
    runs: dict[int, list[dict]] = {n: [] for n in COUNTS}
    for r in range(args.rounds):
        for n in COUNTS:
            run = porter_train(n, bind=True, threads=1, iters=args.iters, extra=extra)
            runs[n].append(run)
            print(f"round {r + 1}: {n} process(es): {run['samples_per_s']:.2f} samples/s, step {run['step_s']:.3f} s, "
                  f"user {run['user_s']:.1f} s, system {run['system_s']:.1f} s, workers {run['workers']}", flush=True)
    rate = {n: [run["samples_per_s"] for run in runs[n]] for n in COUNTS}
    paired = [two / (2 * one) for one, two in zip(rate[1], rate[2])]
    result = {
        "what": f"porter run visualglm train --mode performance (tiny preset, shipped data, batch "
                f"{args.batch_size or 4} per worker), CPU processes through DeepSpeed (ZeRO "
                f"{args.zero_stage or '0 for one, 1 for two: the recipe defaults'}) and gloo, each pinned to its own "
                "core with 1 thread (OMP_NUM_THREADS=1 --bind-cores)",
        "batch_size": args.batch_size or 4, "zero_stage": args.zero_stage or "recipe default",
        **info, "rounds": args.rounds, "steady_steps": f"4-{args.iters}",
        "samples_per_s": {str(n): summary(rate[n]) for n in COUNTS},
        "step_s": {str(n): summary([run["step_s"] for run in runs[n]]) for n in COUNTS},
        "efficiency_2": statistics.median(rate[2]) / (2 * statistics.median(rate[1])),
        "speedup_2_over_1": statistics.median(rate[2]) / statistics.median(rate[1]),  # report.py's figure
        "efficiency_2_per_round": summary(paired),
        "runs": {str(n): runs[n] for n in COUNTS},
    }
    save("scaling" + (f"_batch{args.batch_size}" if args.batch_size else "")
         + (f"_zero{args.zero_stage}" if args.zero_stage else ""), result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return result


if __name__ == "__main__":
    main()
