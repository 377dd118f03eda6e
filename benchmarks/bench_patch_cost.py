"""What the port costs a user, in whole processes, each as a ratio to `python -c "import sat"` measured just
before it in the same run (the machine is noisy: pairs, alternating, not one long series of each).

Commands, on a copy of the installed SAT (so this environment is never touched):
  porter patch sat --dry-run     cold: PORTER_PLAN_CACHE=0; warm: the plan cache filled by an earlier run
  porter status sat
  porter patch sat               (cold cache) then porter revert sat
  porter verify sat              every stage, the training smoke run included

    .venv/bin/python benchmarks/bench_patch_cost.py [--rounds 5]      -> results/patch_cost.json
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
import time
from importlib import metadata
from pathlib import Path

from _shared import save, summary

from porter.testing import copy_distribution

GOALS = {"patch --dry-run (cold)": 0.25, "status": 0.1}  # issue #11's goals, as ratios to `import sat`


def seconds(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-1000:]}")
    return elapsed


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help="pairs per command (default 5: three let one noisy pair move the median)")
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as tmp:
        site = copy_distribution("SwissArmyTransformer", Path(tmp) / "site")
        base = {**os.environ, "PORTER_CACHE": str(Path(tmp) / "cache")}
        porter = [sys.executable, "-m", "porter.cli"]
        where = ["--site-packages", str(site)]
        steps = [
            ("patch --dry-run (cold)", porter + ["patch", "sat", "--dry-run", *where], {"PORTER_PLAN_CACHE": "0"}),
            ("patch --dry-run (warm)", porter + ["patch", "sat", "--dry-run", *where], {}),
            ("status", porter + ["status", "sat", *where], {}),
            ("patch", porter + ["patch", "sat", *where], {"PORTER_PLAN_CACHE": "0"}),
            ("verify", porter + ["verify", "sat", *where], {}),
            ("revert", porter + ["revert", "sat", *where], {}),
        ]
        import_sat = [sys.executable, "-c", "import sat"]
        seconds(steps[1][1], base)  # fill the plan cache for the warm runs
        times: dict[str, list[float]] = {name: [] for name, _, _ in steps}
        ratios: dict[str, list[float]] = {name: [] for name, _, _ in steps}
        reference: list[float] = []
        for _ in range(rounds):
            for name, argv, extra in steps:
                a = seconds(import_sat, base)
                b = seconds(argv, {**base, **extra})
                reference.append(a)
                times[name].append(b)
                ratios[name].append(b / a)
                print(f"{name:<24} {b:6.2f} s   import sat {a:5.2f} s   ratio {b / a:.3f}", flush=True)
    import torch

    result = {
        "what": "whole porter processes on a copy of the installed SAT, each paired with `python -c 'import sat'` "
                "run just before it",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": {"porter": metadata.version("porter"), "SwissArmyTransformer": metadata.version("SwissArmyTransformer"),
                     "torch": torch.__version__, "libcst": metadata.version("libcst")},
        "rounds": rounds,
        "import_sat_s": summary(reference),
        "seconds": {k: summary(v) for k, v in times.items()},
        "ratio_to_import_sat": {k: summary(v) for k, v in ratios.items()},
        "goals": {k: {"ratio_at_most": g, "met": statistics.median(ratios[k]) <= g} for k, g in GOALS.items()},
    }
    save("patch_cost", result)
    print(json.dumps({k: round(v["median"], 3) for k, v in result["ratio_to_import_sat"].items()}, indent=2))
    return result


if __name__ == "__main__":
    main()
