"""How long the SAT port takes: plan, patch, status, revert on a copy of the installed SAT, and the in-memory
port's plan cold and cached. One run, wall-clock seconds; results/patch.json.

    .venv/bin/python benchmarks/bench_patch.py
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from _shared import save

os.environ["PORTER_PLAN_CACHE"] = "0"  # every plan computed: this measures planning, not the plan cache

from porter import memory, patcher, plugins, state
from porter.plan import make_plan
from porter.target import locate
from porter.testing import copy_distribution


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> dict:
    registry = plugins.load()
    rules = registry.rules_for("sat")
    with tempfile.TemporaryDirectory() as tmp:
        site = copy_distribution("SwissArmyTransformer", Path(tmp) / "site")
        installed = locate(registry.target("sat"), site)
        out = {"rules": len(rules), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
        out["plan_s"], plan = timed(lambda: make_plan(installed, rules))
        out["files_changed"] = len(plan.changed)
        out["patch_s"], _ = timed(lambda: patcher.apply_patch(installed, rules))
        out["repatch_noop_s"], _ = timed(lambda: patcher.apply_patch(installed, rules))
        out["status_s"], _ = timed(lambda: state.status(installed))
        out["revert_s"], _ = timed(lambda: patcher.revert(installed))
        cache = Path(tmp) / "cache"
        os.environ["PORTER_CACHE"] = str(cache)
        out["memory_plan_cold_s"], _ = timed(lambda: memory.prepare(installed, lambda: rules, registry.source_digest()))
        out["memory_plan_cached_s"], _ = timed(lambda: memory.prepare(installed, lambda: rules, registry.source_digest()))
        shutil.rmtree(cache)
    return out


if __name__ == "__main__":
    result = main()
    save("patch", result)
    for key, value in result.items():
        print(f"{key:24} {value:.3f}" if isinstance(value, float) else f"{key:24} {value}")
