"""Golden plans: what every planned file becomes (a sha256 of its planned text, and of its matches), recorded once
and held equal by the tests while the planner changes underneath (issue #25 keeps one planning path; every step of
that must reproduce these).

    .venv/bin/python tests/golden/plans.py record [KEY ...]     re-record (all, or the named keys)
    .venv/bin/python tests/golden/plans.py check [KEY ...]      compare, print what differs; exit 1 if anything does

Keys: ``sat-X.Y.Z`` (the release's wheel, installed by pip into a throwaway folder, planned with the SAT rules),
``any-deepspeed`` and ``any-transformers`` (throwaway copies of the installed ones, planned with the rules for any
code). The plan cache is off: every file is planned.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
GOLDEN = HERE / "plans.json"
sys.path.insert(0, str(HERE.parent / "releases"))
sys.path.insert(0, str(HERE.parent))


def keys() -> list[str]:
    from matrix import RELEASES

    return [f"sat-{v}" for v in RELEASES] + ["any-deepspeed", "any-transformers"]


def digest(plan) -> dict:
    """Each planned file's sha256 (its text after the rules) and one over every match (file, lines, rule,
    message): a plan is the same only if both are."""
    files = {f.path: hashlib.sha256(f.after.encode()).hexdigest() for f in plan.files if f.changed}
    matches = hashlib.sha256(json.dumps([m.to_json() for m in plan.matches()], sort_keys=True).encode()).hexdigest()
    return {"files": files, "matches": matches, "rules": sorted(r.id for r in plan.rules)}


def plan_of(key: str) -> dict:
    os.environ["PORTER_PLAN_CACHE"] = "0"
    from porter import plugins
    from porter.plan import make_plan
    from porter.rules import ANY_TARGET
    from porter.testing import copy_distribution

    registry = plugins.load()
    with tempfile.TemporaryDirectory(prefix="porter-golden-") as tmp:
        if key.startswith("sat-"):
            from matrix import install

            from porter.target import locate

            site = install(key.removeprefix("sat-"), Path(tmp) / "site")
            installed = locate(registry.target("sat"), site)
            return digest(make_plan(installed, registry.rules_for("sat")))
        from porter.generic import distribution_target

        name = key.removeprefix("any-")
        site = copy_distribution(name, Path(tmp) / "site")
        return digest(make_plan(distribution_target(name, site), registry.rules_for(ANY_TARGET)))


def load() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def differences(key: str, found: dict, golden: dict) -> list[str]:
    want = golden.get(key)
    if want is None:
        return [f"{key}: no golden plan recorded"]
    out = []
    for path in sorted(set(want["files"]) | set(found["files"])):
        if want["files"].get(path) != found["files"].get(path):
            out.append(f"{key}: {path} planned differently" if path in want["files"] and path in found["files"]
                       else f"{key}: {path} {'no longer' if path in want['files'] else 'now'} changed")
    if want["matches"] != found["matches"]:
        out.append(f"{key}: the matches (files, lines, rules, messages) differ")
    if want["rules"] != found["rules"]:
        out.append(f"{key}: other rules ran")
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("record", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    chosen = argv[1:] or keys()
    golden = load()
    bad = []
    for key in chosen:
        found = plan_of(key)
        if argv[0] == "record":
            golden[key] = found
            print(f"{key}: {len(found['files'])} file(s) recorded", flush=True)
        else:
            bad += differences(key, found, golden)
            print(f"{key}: " + ("differs" if differences(key, found, golden) else "same"), flush=True)
    if argv[0] == "record":
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1, sort_keys=True) + "\n")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
