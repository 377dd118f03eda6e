"""`import sat` with the port applied in memory (porter's import hook serving the rewritten modules, plan cached)
against `import sat` of a copy patched on disk, whole processes alternating, `--rounds` each.

    .venv/bin/python benchmarks/bench_memory_import.py [--rounds 5]      -> results/memory_import.json
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
from pathlib import Path

from _shared import original_and_patched, save, summary

IN_MEMORY = """
import sys
from porter import memory, plugins
from porter.target import locate
registry = plugins.load(lazy=True)  # as porter's workers do: the rules load only if the plan is not cached
installed = locate(registry.target("sat"), sys.argv[1])
memory.install(memory.prepare(installed, lambda: registry.rules_for("sat"), plugin_digest=registry.source_digest()))
import sat
"""


def seconds(argv, env) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as tmp:
        original, patched = original_and_patched(Path(tmp))
        env = {**os.environ, "PORTER_CACHE": str(Path(tmp) / "cache")}
        disk = ([sys.executable, "-c", "import sat"], {**env, "PYTHONPATH": str(patched)})
        memory = ([sys.executable, "-c", IN_MEMORY, str(original)], {**env, "PYTHONPATH": str(original)})
        seconds(*disk), seconds(*memory)  # bytecode caches and the in-memory plan cache filled
        samples = {"on disk": [], "in memory": []}
        for _ in range(rounds):
            samples["on disk"].append(seconds(*disk))
            samples["in memory"].append(seconds(*memory))
    ratios = [m / d for d, m in zip(samples["on disk"], samples["in memory"])]
    result = {"what": "whole processes: import sat from a copy patched on disk vs from the original copy with the "
                      "in-memory port (plugins loaded, cached plan, import hook)",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rounds": rounds,
              "seconds": {k: summary(v)
                          for k, v in samples.items()},
              "ratio_memory_to_disk": summary(ratios),
              "goal_ratio_at_most": 1.05, "goal_met": statistics.median(ratios) <= 1.05}
    save("memory_import", result)
    print(json.dumps(result["ratio_memory_to_disk"], indent=2))
    return result


if __name__ == "__main__":
    main()
