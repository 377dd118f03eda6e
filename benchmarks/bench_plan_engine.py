"""Planning the SAT port: rules of a layer in one shared walk (porter's engine) against the same rules one at a
time (its fallback), on the installed SAT, alternating A and B in one run. results/plan_engine.json.

    .venv/bin/python benchmarks/bench_plan_engine.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from _shared import save, summary

os.environ["PORTER_PLAN_CACHE"] = "0"  # every plan computed: this measures planning, not the plan cache
os.environ["PORTER_PLAN_WORKERS"] = "1"  # the engine itself, in this process (bench_patch_cost has the workers)

import porter.rewrite as engine
from porter import plugins
from porter.plan import make_plan
from porter.target import locate


def one_at_a_time(*args, **kwargs):
    return None  # `_in_layers` answering None sends every file through the rules one at a time


def timed_plan(installed, rules) -> tuple[float, dict]:
    start = time.perf_counter()
    plan = make_plan(installed, rules)
    return time.perf_counter() - start, {f.path: f.after for f in plan.files}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    registry = plugins.load()
    rules = registry.rules_for("sat")
    installed = locate(registry.target("sat"))
    shared_walk = engine._in_layers
    samples: dict[str, list[float]] = {"shared walk": [], "one at a time": []}
    outputs = {}
    timed_plan(installed, rules)  # warm imports and caches alike for both
    for _ in range(rounds):
        for label, layers in (("shared walk", shared_walk), ("one at a time", one_at_a_time)):
            engine._in_layers = layers
            seconds, outputs[label] = timed_plan(installed, rules)
            samples[label].append(seconds)
    engine._in_layers = shared_walk
    assert outputs["shared walk"] == outputs["one at a time"], "the two ways gave different files"
    result = {
        "what": "make_plan over the installed SAT with every rule, in-process",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "sat": installed.version, "rules": len(rules), "rounds": rounds,
        "seconds": {k: summary(v)
                    for k, v in samples.items()},
        "ratio_shared_to_one_at_a_time": statistics.median(
            a / b for a, b in zip(samples["shared walk"], samples["one at a time"])),
        "outputs_identical": True,
    }
    save("plan_engine", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
