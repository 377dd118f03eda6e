"""The core on the real installed SwissArmyTransformer: plan, patch, verify, revert, byte for byte."""
import json

from porter import plugins
from porter.plan import make_plan
from porter.target import locate
from porter.testing import run_porter, tree_digest


def test_every_rule_matches_the_installed_sat():
    """Planned read-only against this environment's SAT: every required rule finds its code."""
    registry = plugins.load()
    installed = locate(registry.target("sat"))
    assert installed.version == "0.4.12"
    plan = make_plan(installed, registry.rules_for("sat"))
    counts = plan.rule_counts()
    assert counts and all(n > 0 for rid, n in counts.items() if registry.rules[rid].required), counts


def test_patch_verify_revert_round_trip_on_a_copy_of_sat(sat_site):
    before, package_before = tree_digest(sat_site), tree_digest(sat_site / "sat")
    r = run_porter("patch", "sat", "--site-packages", str(sat_site))
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree_digest(sat_site / "sat") != package_before
    once = tree_digest(sat_site / "sat")
    r = run_porter("patch", "sat", "--site-packages", str(sat_site))
    assert r.returncode == 0 and "already patched" in r.stdout
    assert tree_digest(sat_site / "sat") == once
    status = json.loads(run_porter("status", "sat", "--json", "--site-packages", str(sat_site)).stdout)
    assert status[0]["state"] == "patched"
    r = run_porter("revert", "sat", "--site-packages", str(sat_site))
    assert r.returncode == 0, r.stderr
    assert tree_digest(sat_site) == before
