"""Planning the SAT port in-process, on the installed SAT, the ways porter can plan it, alternating in one run:
files cut down to the statements holding their rules' triggers with the rules of a layer in one shared walk
(porter's engine), whole files with the shared walk (PORTER_PLAN_WHOLE_FILES=1), and cut files with the rules
one at a time (the engine's fallback). All three must give the same files. results/plan_engine.json.

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
    ways = (("cut files, shared walk", shared_walk, "0"), ("whole files, shared walk", shared_walk, "1"),
            ("cut files, one at a time", one_at_a_time, "0"))
    samples: dict[str, list[float]] = {label: [] for label, _, _ in ways}
    outputs = {}
    timed_plan(installed, rules)  # warm imports and caches alike for all
    for _ in range(rounds):
        for label, layers, whole in ways:
            engine._in_layers = layers
            os.environ[engine.WHOLE_FILES] = whole
            seconds, outputs[label] = timed_plan(installed, rules)
            samples[label].append(seconds)
    engine._in_layers = shared_walk
    os.environ.pop(engine.WHOLE_FILES)
    assert len({json.dumps(o, sort_keys=True) for o in outputs.values()}) == 1, "the ways gave different files"
    result = {
        "what": "make_plan over the installed SAT with every rule, in-process",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "sat": installed.version, "rules": len(rules), "rounds": rounds,
        "seconds": {k: summary(v)
                    for k, v in samples.items()},
        "ratio_cut_to_whole": statistics.median(
            a / b for a, b in zip(samples["cut files, shared walk"], samples["whole files, shared walk"])),
        "ratio_shared_to_one_at_a_time": statistics.median(
            a / b for a, b in zip(samples["cut files, shared walk"], samples["cut files, one at a time"])),
        "outputs_identical": True,
    }
    save("plan_engine", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
