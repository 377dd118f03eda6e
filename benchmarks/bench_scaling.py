"""Data-parallel scaling on the CPU: samples/s of `porter run visualglm train --mode performance` (tiny
VisualGLM, shipped data, at most 20 steps, no checkpoint) with 1 and 2 processes, alternating, `--rounds`
each. The figure is the recipe's own throughput (summary.json), steady steps only.

    .venv/bin/python benchmarks/bench_scaling.py [--rounds 2]      -> results/scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _shared import save, summary


def throughput(processes: int, save: Path) -> float:
    proc = subprocess.run([sys.executable, "-m", "porter.cli", "run", "visualglm", "train", "--mode", "performance",
                           "--npus", str(processes), "--device", "cpu", "--patch", "memory", "--save", str(save)],
                          capture_output=True, text=True, env={**os.environ, "PORTER_DEVICE": "cpu"})
    if proc.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed: {proc.stderr[-2000:]}")
    summaries = sorted(save.rglob("summary.json"))
    if not summaries:
        raise SystemExit(f"no summary.json under {save}")
    return float(json.loads(summaries[-1].read_text())["samples_per_s"])


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    samples: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for n in (1, 2):
                samples[n].append(throughput(n, Path(tmp) / f"run-{r}-{n}"))
                print(f"{n} process(es): {samples[n][-1]:.2f} samples/s", flush=True)
    result = {"what": "porter run visualglm train --mode performance (tiny, shipped data), CPU processes through "
                      "DeepSpeed and gloo", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "rounds": rounds,
              "samples_per_s": {str(n): summary(v)
                                for n, v in samples.items()},
              "speedup_2_over_1": statistics.median(samples[2]) / statistics.median(samples[1])}
    save("scaling", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
