"""Where training's system time goes, and what porter's malloc settings for CPU workers change.

`porter run visualglm train --mode performance` (tiny preset, shipped data, pinned: OMP_NUM_THREADS=1
--bind-cores) with 1 and 2 processes, each with glibc's default malloc and with the settings porter's launcher
gives CPU workers (porter/launch.py, MALLOC_ENV), alternating in every round. Per run: steady step time, and for
the whole process tree (start-up included) user and system CPU seconds, minor page faults and context switches.

"glibc defaults" is asked for with GLIBC_TUNABLES=glibc.malloc.perturb=0: a malloc tunable at its default value,
which makes porter leave malloc alone (a user's own malloc settings win) and changes nothing in glibc;
"thresholds only" is porter's two thresholds without its one-arena limit.

    .venv/bin/python benchmarks/bench_train_syscpu.py [--rounds 2]      -> results/train_syscpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics

from _porter_train import machine, porter_train
from _shared import save, summary

DEFAULTS = {"GLIBC_TUNABLES": None, "MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None,
            "MALLOC_ARENA_MAX": None}
ARMS = {
    "glibc_defaults": {**DEFAULTS, "GLIBC_TUNABLES": "glibc.malloc.perturb=0"},
    # porter's thresholds without its arena limit, set by hand (porter then adds nothing)
    "thresholds_only": {**DEFAULTS, "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
    "porter_malloc": DEFAULTS,  # what porter/launch.py gives CPU workers (MALLOC_ENV)
}
FIELDS = ("step_s", "samples_per_s", "wall_s", "user_s", "system_s", "minor_faults", "voluntary_switches",
          "involuntary_switches")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    args = parser.parse_args()
    info = machine()
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for n in args.processes:
            for arm, env in ARMS.items():
                run = porter_train(n, bind=True, threads=1, env=env)
                runs.setdefault(f"{n}/{arm}", []).append(run)
                print(f"round {r + 1}: {n} process(es), {arm}: step {run['step_s']:.3f} s, user {run['user_s']:.1f} "
                      f"s, system {run['system_s']:.1f} s, {run['minor_faults']:,} minor faults", flush=True)
    table = {key: {field: summary([run[field] for run in rs]) for field in FIELDS} for key, rs in runs.items()}
    speedup = {f"{n}/{arm}": statistics.median(r["step_s"] for r in runs[f"{n}/glibc_defaults"])
               / statistics.median(r["step_s"] for r in runs[f"{n}/{arm}"]) for n in args.processes for arm in ARMS}
    result = {"what": "porter run visualglm train --mode performance (tiny, shipped data, 20 steps, pinned 1 core + 1 "
                      "thread per process): glibc's default malloc vs porter's CPU-worker malloc settings (and its thresholds alone)",
              **info, "rounds": args.rounds, "step_speedup_over_glibc_defaults": speedup, "summary": table,
              "runs": runs}
    save("train_syscpu", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "summary")}, indent=2))
    for key, fields in table.items():
        print(key, {f: round(v["median"], 3) for f, v in fields.items()})
    return result


if __name__ == "__main__":
    main()
