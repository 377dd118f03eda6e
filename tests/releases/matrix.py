"""The SAT release matrix: every release porter supports, downloaded as its wheel, installed as pip installs it,
then planned, patched, verified, scanned and reverted through the CLI, as a user would.

    python tests/releases/matrix.py run 0.4.6 0.4.12     # rows for these releases (JSON, one file each)
    python tests/releases/matrix.py render               # docs/releases.md from the rows

`make test-releases` runs every release through pytest (tests/releases/test_matrix.py) and renders the page.
Wheels are cached in $PORTER_WHEEL_CACHE (default ~/.cache/porter/sat-wheels), never in the repository.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from porter.testing import run_porter, tree_digest

# SwissArmyTransformer releases on the package index from the old recipe's (0.3.6) to the newest supported one.
RELEASES = ["0.3.6", "0.3.7", *(f"0.4.{n}" for n in range(13))]
SAMPLE = ["0.3.6", "0.4.6", "0.4.12"]  # oldest, middle, newest: what `make test` runs
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / ".cache" / "releases"  # one JSON row per release, rendered into docs/releases.md
PAGE = ROOT / "docs" / "releases.md"


def wheel_cache() -> Path:
    return Path(os.environ.get("PORTER_WHEEL_CACHE", Path.home() / ".cache" / "porter" / "sat-wheels"))


def wheel(version: str) -> Path:
    """The release's wheel, from the cache or downloaded with `pip download --no-deps`."""
    cache = wheel_cache()
    found = sorted(cache.glob(f"[Ss]wiss[Aa]rmy[Tt]ransformer-{version}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                    f"SwissArmyTransformer=={version}", "-d", str(cache)], check=True, capture_output=True, text=True)
    found = sorted(cache.glob(f"[Ss]wiss[Aa]rmy[Tt]ransformer-{version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip downloaded no wheel of SwissArmyTransformer {version} into {cache}")
    return found[0]


def install(version: str, site_packages: Path) -> Path:
    """The release installed into its own site-packages folder, by pip (so its RECORD is pip's)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(site_packages), str(wheel(version))],
                   check=True, capture_output=True, text=True)
    return site_packages


def _cli_json(*args: str, site: Path) -> tuple[int, object, str]:
    r = run_porter(*args, "--json", site_packages=site, timeout=900)
    try:
        return r.returncode, json.loads(r.stdout), r.stderr
    except ValueError:
        return r.returncode, None, (r.stderr or r.stdout)[-2000:]


def run_release(version: str, workdir: Path) -> dict:
    """Plan, patch, verify, scan and revert one release; the row says what happened at each step."""
    site = install(version, Path(workdir) / f"sat-{version}")
    before = tree_digest(site / "sat")
    row: dict = {"release": version}
    start = time.perf_counter()
    r = run_porter("patch", "sat", "--dry-run", "--report", str(Path(workdir) / f"plan-{version}.json"),
                   site_packages=site, timeout=900)
    row["plan_s"] = round(time.perf_counter() - start, 1)
    if r.returncode != 0:
        row["error"] = f"plan: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
        return row
    plan = json.loads((Path(workdir) / f"plan-{version}.json").read_text())
    row["rules_matched"] = sum(1 for n in plan["rules"].values() if n)
    row["rules_skipped"] = len(plan["skipped"])
    row["sites_rewritten"] = len(plan["matches"])
    row["files"] = sum(1 for f in plan["files"] if f["changed"])
    start = time.perf_counter()
    code, _, err = _cli_json("patch", "sat", site=site)
    row["patch_s"] = round(time.perf_counter() - start, 1)
    if code != 0:
        row["error"] = f"patch: {err.strip().splitlines()[-1] if err.strip() else code}"
        return row
    start = time.perf_counter()
    code, report, err = _cli_json("verify", "sat", site=site)
    row["verify_s"] = round(time.perf_counter() - start, 1)
    seen: dict[str, set[str]] = {}
    for result in (report or {}).get("results", []):
        seen.setdefault(result["stage"], set()).add(result["status"])
    # a stage failed if any item failed; it is "ok" when something was checked and nothing failed (items that
    # do not exist in a release, such as an op its rules never bring in, are skipped); "skip" if nothing ran
    row["verify"] = {stage: "fail" if "fail" in got else "ok" if "ok" in got else "skip" for stage, got in seen.items()}
    row["verify_ok"] = code == 0 and bool(report) and report.get("ok", False)
    if not row["verify_ok"]:
        failed = [r for r in (report or {}).get("results", []) if r["status"] == "fail"]
        row["verify_failures"] = [f"{r['stage']} {r['item']}: {r['detail']}"[:300] for r in failed] or [err[-300:]]
    code, sites, _ = _cli_json("scan", "sat", site=site)
    row["scan_left"] = len(sites["open"]) if isinstance(sites, dict) and "open" in sites else None
    r = run_porter("revert", "sat", site_packages=site, timeout=600)
    row["revert_ok"] = r.returncode == 0
    row["byte_identical"] = tree_digest(site / "sat") == before
    row["seconds"] = round(row["plan_s"] + row["patch_s"] + row["verify_s"], 1)
    return row


def save(row: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{row['release']}.json"
    path.write_text(json.dumps(row, indent=2) + "\n")
    return path


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def render(rows: list[dict]) -> str:
    import deepspeed
    import torch

    stages = ["journal", "compile", "import", "fixpoint", "parity-ops", "parity-model", "smoke"]
    lines = [
        "# SwissArmyTransformer releases",
        "",
        "Every SAT release from the old Ascend recipe's (0.3.6) to the newest, downloaded as its wheel, installed",
        "by pip into a folder of its own, then `porter patch sat --dry-run`, `patch`, `verify`, `scan` and `revert`",
        "through the CLI. Generated by `make test-releases` (tests/releases/matrix.py); do not edit by hand.",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"DeepSpeed {deepspeed.__version__}, CPU only.",
        "",
        "| release | rules matched | sites rewritten | files | " + " | ".join(stages) +
        " | CUDA sites left | reverted byte-identical | plan s | verify s |",
        "|---" * (len(stages) + 8) + "|",
    ]
    for row in sorted(rows, key=lambda r: _key(r["release"])):
        if "error" in row:
            lines.append(f"| {row['release']} | {row['error']} |" + " |" * (len(stages) + 6))  # as many cells
            continue
        verify = row.get("verify", {})
        lines.append("| " + " | ".join([
            row["release"], str(row["rules_matched"]), str(row["sites_rewritten"]), str(row["files"]),
            *(verify.get(s, "-") for s in stages),
            "-" if row.get("scan_left") is None else str(row["scan_left"]),
            "yes" if row["byte_identical"] and row["revert_ok"] else "**no**",
            str(row["plan_s"]), str(row["verify_s"])]) + " |")
    lines += [
        "",
        "Columns: *rules matched* of the catalogue's rules (the others do not apply to that release, by their",
        "release ranges); *sites rewritten*, the matches of the plan; the verify stages as `porter verify` names",
        "them (*parity-ops* compares only the ops the applied rules bring in, on one thread: with several, one",
        "call of ChatGLM's original GELU was seen to differ from the next by 1.7e-4 in some processes);",
        "*smoke* is SAT's own `get_args` + `training_main` for a few steps on the",
        "CPU, so every release's training loop runs with this torch and DeepSpeed; *CUDA sites left*, what",
        "`porter scan sat` finds after the rules outside the plugin's documented exemptions; *plan s* and",
        "*verify s*, whole CLI processes on this 2-core machine.",
    ]
    failures = [(r["release"], f) for r in rows for f in r.get("verify_failures", [])]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {v}: {f}" for v, f in failures]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    import tempfile

    if argv[:1] == ["run"]:
        for version in argv[1:] or RELEASES:
            with tempfile.TemporaryDirectory() as tmp:
                row = run_release(version, Path(tmp))
            print(json.dumps(row), flush=True)
            save(row)
        return 0
    if argv[:1] == ["render"]:
        rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
        missing = sorted(set(RELEASES) - {r["release"] for r in rows}, key=_key)
        if missing:
            print(f"no results for {', '.join(missing)}: run `make test-releases` first", file=sys.stderr)
            return 1
        PAGE.write_text(render([r for r in rows if r["release"] in RELEASES]))
        print(f"wrote {PAGE}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
