"""`porter verify sat` checks: the patched SAT computes what the original did, and SAT's own training runs.

Each check runs SAT in a fresh interpreter with the verified site-packages first on sys.path, so the
porter process itself never imports the library it patched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from porter.verify import FAIL, OK, SKIP, Check, CheckResult, VerifyContext


def _run(site_packages: Path, module_args: list[str], timeout: float = 900,
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(site_packages), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", *module_args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _tagged(proc: subprocess.CompletedProcess, tag: str) -> list:
    found = [json.loads(line[len(tag) + 1:]) for line in proc.stdout.splitlines() if line.startswith(tag + " ")]
    if not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(tail))
    return found


def op_parity(context: VerifyContext):
    proc = _run(context.site_packages, ["porter_sat.parity", "ops", "--originals", str(context.originals_dir),
                                        "--patched", ",".join(context.patched_files),
                                        "--rules", ",".join(context.applied_rules)])
    for row in _tagged(proc, "PORTER-PARITY")[0]:
        if "skipped" in row:
            yield CheckResult("parity-ops", f"{row['op']} {row['dtype']}", SKIP, row["skipped"])
            continue
        yield CheckResult("parity-ops", f"{row['op']} {row['dtype']}", OK if row["ok"] else FAIL,
                          f"max |patched - original| = {row['max_abs_diff']:.2e} (tolerance {row['tolerance']:.0e})"
                          + (f"; {row['detail']}" if row["detail"] else ""))


def model_parity(context: VerifyContext):
    import torch
    from porter_sat.parity import compare_model_runs

    with tempfile.TemporaryDirectory(prefix="porter-parity-") as scratch:
        tmp = Path(scratch)
        runs = {}
        for label, site in (("original", context.original_tree(tmp / "original")), ("patched", context.site_packages)):
            out = tmp / f"{label}.pt"
            proc = _run(site, ["porter_sat.parity", "model", "--out", str(out)])
            if proc.returncode != 0 or not out.exists():
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                yield CheckResult("parity-model", label, FAIL, f"tiny ChatGLM run failed: {tail}")
                return
            runs[label] = torch.load(out, weights_only=True)  # tensors only: what porter_sat.parity saves
    for row in compare_model_runs(runs["original"], runs["patched"]):
        measured = row.get("max_abs_diff", row.get("max_rel_diff"))
        kind = "max abs diff" if "max_abs_diff" in row else "max rel diff"
        yield CheckResult("parity-model", f"tiny ChatGLM {row['what']}", OK if row["ok"] else FAIL,
                          f"{kind} {measured:.2e} (tolerance {row['tolerance']:.0e})")


def smoke_run(context: VerifyContext):
    with tempfile.TemporaryDirectory(prefix="porter-smoke-") as tmp:
        proc = _run(context.site_packages, ["porter_sat.smoke", "--iters", "3", "--save", tmp])
        result = _tagged(proc, "PORTER-SMOKE")[0]
        saved = Path(result["save"]) / "latest"
        ok = proc.returncode == 0 and result["finite"] and saved.exists()
        yield CheckResult("smoke", "get_args + training_main, 3 steps", OK if ok else FAIL,
                          f"losses {', '.join(f'{x:.3f}' for x in result['losses'])}; checkpoint "
                          + ("written" if saved.exists() else "missing"))


CHECKS = [
    Check("sat.parity.ops", "sat", "each rewritten op: patched vs original function, fp32 and bf16", op_parity),
    Check("sat.parity.model", "sat", "tiny ChatGLM logits, gradients and 20-step losses: patched vs original",
          model_parity),
    Check("sat.smoke", "sat", "SAT's get_args + training_main for 3 steps on the current device", smoke_run),
]
