"""Planning, patching, verifying and reverting large distributions with the rules for any code: transformers and
DeepSpeed (both of which Ascend ModelZoo recipes hand-edit), each on a throwaway copy of the installed one, never
the environment's own. results/plan_any.json.

    .venv/bin/python benchmarks/bench_plan_any.py [DIST ...]      (default: transformers deepspeed)

For each: the cold plan (`porter patch DIST --dry-run`, plan cache off) timed by the wall clock and by the CPU time
of the porter process and its planning workers; files read, files parsed (those holding a rule's trigger word),
files changed, sites per rule; then `patch`, `verify` (how many changed modules imported before the port and
still do), `revert`, and whether the copy is byte for byte what it was. The goal the issue sets: a
transformers-sized distribution planned in well under a minute of CPU per thousand files, transformers' files in
under 2 minutes cold on this 2-core machine.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import save

from porter.testing import copy_distribution, tree_digest

ENV = {**os.environ, "PORTER_PLAN_CACHE": "0", "PORTER_DEVICE": "cpu"}


def porter(*args: str, site: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """The CLI in a fresh process: (result, wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "porter.cli", *args, "--site-packages", str(site)],
                          capture_output=True, text=True, env=ENV, timeout=3600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def one(dist: str) -> dict:
    from importlib.metadata import version

    with tempfile.TemporaryDirectory(prefix=f"porter-bench-{dist}-") as tmp:
        site = copy_distribution(dist, Path(tmp) / "site")
        digest = tree_digest(site)
        out: dict = {"distribution": dist, "version": version(dist)}
        plan, out["plan_wall_s"], out["plan_cpu_s"] = porter("patch", dist, "--dry-run", "--json", site=site)
        if plan.returncode != 0:
            return {**out, "error": plan.stderr.strip().splitlines()[-1]}
        data = json.loads(plan.stdout)
        out.update(files_read=data["files_read"], files_parsed=data["files_parsed"],
                   files_changed=sum(f["changed"] for f in data["files"]),
                   sites_per_rule={k: v for k, v in sorted(data["rules"].items()) if v},
                   cpu_s_per_1000_files=round(1000 * out["plan_cpu_s"] / max(data["files_read"], 1), 2))
        patched, out["patch_wall_s"], _ = porter("patch", dist, site=site)
        out["patch_ok"] = patched.returncode == 0
        verified, out["verify_wall_s"], _ = porter("verify", dist, "--json", site=site)
        results = json.loads(verified.stdout)["results"] if verified.stdout.startswith("{") else []
        imports = [r for r in results if r["stage"] == "import"]
        out["verify"] = {"ok": verified.returncode == 0,
                         "imported_before_and_after": sum(r["status"] == "ok" for r in imports),
                         "did_not_import_before_either": sum(r["status"] == "skip" for r in imports),
                         "broke": [r["item"] for r in imports if r["status"] == "fail"],
                         "other_failures": [f"{r['stage']} {r['item']}: {r['detail']}" for r in results
                                            if r["status"] == "fail" and r["stage"] != "import"][:10]}
        reverted, out["revert_wall_s"], _ = porter("revert", dist, site=site)
        out["revert_ok"] = reverted.returncode == 0
        out["byte_identical_after_revert"] = tree_digest(site) == digest
    return out


def main(dists: list[str]) -> dict:
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
            "results": [one(d) for d in dists]}


if __name__ == "__main__":
    result = main(sys.argv[1:] or ["transformers", "deepspeed"])
    print(json.dumps(result, indent=2))
    save("plan_any", result)
