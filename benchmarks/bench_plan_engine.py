"""Planning in-process, the ways porter could plan, alternating in one run, on the installed SAT (its rules) and on
the installed transformers (the rules for any code): results/plan_engine.json.

    .venv/bin/python benchmarks/bench_plan_engine.py [--rounds 5] [--large-rounds 1] [--large transformers]

The ways:
- "porter": porter's planner (porter.rewrite.rewrite_file): files cut to the statements holding their rules'
  trigger words, every rule reading the original in one walk, the rules that matched rewriting in one walk per
  ``after`` layer.
- "whole files, shared walks": the same with cutting turned off.
- "reference, one rule at a time": the planner's fallback (porter.rewrite._one_at_a_time): the whole file, each
  rule its own walk over the previous one's output.
- "before #25": the planner at commit SHARED_WALK_COMMIT, read from git (cut files, shared walks with a second
  fallback). Skipped outside a git checkout holding that commit.
All ways must give the same files and matches (the run fails otherwise). The plan cache is off and planning runs
in this process (no workers), so this measures the engine alone.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _shared import save, summary

os.environ["PORTER_PLAN_CACHE"] = "0"  # every plan computed: this measures planning, not the plan cache
os.environ["PORTER_PLAN_WORKERS"] = "1"  # the engine itself, in this process (bench_patch_cost has the workers)

import porter.plan as planning
import porter.rewrite as engine
from porter import plugins
from porter.plan import make_plan
from porter.target import locate

SHARED_WALK_COMMIT = "ef1beebce74867123698f0486463b085faffd3a2"  # the last commit with the shared walk
ROOT = Path(__file__).resolve().parent.parent


def shared_walk_engine():
    """porter/rewrite.py as it was at SHARED_WALK_COMMIT, loaded as a module of today's porter package (it needs
    only names of porter.bindings, porter.errors, porter.rules and porter.skeleton that still exist), or None."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{SHARED_WALK_COMMIT}:porter/rewrite.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("porter._rewrite_shared_walk", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "porter"
    sys.modules[spec.name] = module
    exec(compile(source, f"{SHARED_WALK_COMMIT[:8]}:porter/rewrite.py", "exec"), module.__dict__)
    return module


def never_cut(text, rules):
    return None  # porter.rewrite._cut answering None: every file planned whole


def reference(path, text, rules):
    return engine._one_at_a_time(path, text, list(rules))


def ways() -> dict:
    """label -> (rewrite_file to plan with, porter.rewrite._cut to use)."""
    out = {"porter": (engine.rewrite_file, engine._cut),
           "whole files, shared walks": (engine.rewrite_file, never_cut),
           "reference, one rule at a time": (reference, engine._cut)}
    old = shared_walk_engine()
    if old is not None:
        out["before #25"] = (old.rewrite_file, engine._cut)
    return out


def timed_plan(installed, rules) -> tuple[float, dict]:
    start = time.perf_counter()
    plan = make_plan(installed, rules)
    seconds = time.perf_counter() - start
    return seconds, {f.path: (f.after, [m.to_json() for m in f.matches]) for f in plan.files}


def measure(installed, rules, rounds: int) -> dict:
    chosen = ways()
    samples: dict[str, list[float]] = {label: [] for label in chosen}
    outputs = {}
    real_rewrite, real_cut = planning.rewrite_file, engine._cut
    timed_plan(installed, rules)  # warm imports and caches alike for all
    try:
        for _ in range(rounds):
            for label, (rewrite_file, cut) in chosen.items():
                planning.rewrite_file, engine._cut = rewrite_file, cut
                seconds, outputs[label] = timed_plan(installed, rules)
                samples[label].append(seconds)
    finally:
        planning.rewrite_file, engine._cut = real_rewrite, real_cut
    assert len({json.dumps(o, sort_keys=True) for o in outputs.values()}) == 1, "the ways gave different plans"
    base = samples["porter"]
    return {"target": f"{installed.target.distribution} {installed.version}", "rules": len(rules),
            "files_planned": len(outputs["porter"]), "rounds": rounds,
            "seconds": {k: summary(v) for k, v in samples.items()},
            "ratio_to_porter": {k: statistics.median(a / b for a, b in zip(v, base)) for k, v in samples.items()},
            "plans_identical": True}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help="rounds on SAT")
    parser.add_argument("--large", default="transformers", help="a large installed distribution ('' skips it)")
    parser.add_argument("--large-rounds", type=int, default=1)
    args = parser.parse_args()
    registry = plugins.load()
    result = {"what": "make_plan in-process, plan cache off, no workers; ratio_to_porter: median of per-round "
                      "ratios (each way / porter's, in the same round)",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "sat": measure(locate(registry.target("sat")), registry.rules_for("sat"), args.rounds)}
    if args.large:
        from porter.generic import distribution_target
        from porter.rules import ANY_TARGET

        result["large"] = measure(distribution_target(args.large), registry.rules_for(ANY_TARGET), args.large_rounds)
    save("plan_engine", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
