"""The plans porter makes stay the golden ones recorded in tests/golden/plans.json (issue #25: the planner may be
rebuilt, its output may not change): here on the installed SAT and a copy of the installed DeepSpeed;
`make test-golden` checks all 15 SAT releases and transformers too."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))

import plans  # noqa: E402


@pytest.mark.parametrize("key", ["installed-sat", "any-deepspeed"])
def test_the_plan_is_the_golden_one(key, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTER_PLAN_CACHE", "0")
    golden = plans.load()
    if key == "installed-sat":
        from importlib.metadata import version

        from porter import plugins
        from porter.plan import make_plan
        from porter.target import locate
        from porter.testing import copy_distribution

        registry = plugins.load()
        site = copy_distribution("SwissArmyTransformer", tmp_path / "site")
        key = f"sat-{version('SwissArmyTransformer')}"
        found = plans.digest(make_plan(locate(registry.target("sat"), site), registry.rules_for("sat")))
    else:
        found = plans.plan_of(key)
    assert not plans.differences(key, found, golden)
