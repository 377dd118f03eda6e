"""Planning in worker processes gives what one process gives: the same plan, the same first error."""
from __future__ import annotations

import json
import subprocess
import sys

from porter.testing import copy_distribution, refresh_record


def _dry_run(site, target, env, workers):
    return subprocess.run([sys.executable, "-m", "porter.cli", "patch", target, "--dry-run", "--json",
                           "--site-packages", str(site)], capture_output=True, text=True,
                          env={**env, "PORTER_PLAN_WORKERS": str(workers), "PORTER_PLAN_CACHE": "0"})


def test_sat_planned_in_two_processes_equals_one(tmp_path, porter_env):
    site = copy_distribution("SwissArmyTransformer", tmp_path / "site")
    one, two = _dry_run(site, "sat", porter_env, 1), _dry_run(site, "sat", porter_env, 2)
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    plan = json.loads(two.stdout)
    assert len(plan["files"]) > 10
    assert plan == json.loads(one.stdout)


def test_an_error_in_a_worker_is_the_same_error(toylib_site, porter_env):
    (toylib_site / "toylib/dist.py").write_text("BACKEND = 'mpi'\n")  # toylib.backend is required: it fails
    refresh_record(toylib_site, "toylib")
    one, two = _dry_run(toylib_site, "toylib", porter_env, 1), _dry_run(toylib_site, "toylib", porter_env, 3)
    assert two.returncode == one.returncode == 3
    assert "required rule toylib.backend matched nothing in toylib/dist.py" in two.stderr
    assert two.stderr == one.stderr  # the hint came back from the worker too


def test_the_error_of_the_first_file_wins(tmp_path):
    from porter.errors import PlanError
    from porter.plan import plan_files
    from porter.rules import CATEGORIES, Rule, RuleDocs
    from fixture_plugin import rename_call
    import pytest

    rule = Rule(id="t.sync", target="t", files=("a.py", "b.py", "c.py", "d.py"), category=CATEGORIES[0],
                summary="s", docs=RuleDocs("w", "h"), rewrite=rename_call("old", "new"), required=True)
    jobs = [("a.py", "old()\n", [rule]), ("b.py", "x = 1\n", [rule]), ("c.py", "y = 1\n", [rule]),
            ("d.py", "old()\n", [rule])]
    with pytest.raises(PlanError, match="matched nothing in b.py") as err:
        plan_files(jobs, workers=2)
    assert err.value.hint and err.value.exit_code == 3
    assert [f.after for f in plan_files([jobs[0], jobs[3]], workers=2)] == ["new()\n", "new()\n"]


def test_a_pool_that_cannot_start_plans_in_this_process(monkeypatch):
    import porter.plan as planning
    from porter.rules import CATEGORIES, Rule, RuleDocs
    from fixture_plugin import rename_call

    class NoPool:
        def Pool(self, n):
            raise OSError("no semaphores here (a file size limit, a read-only /dev/shm)")

    monkeypatch.setattr(planning.multiprocessing, "get_context", lambda kind: NoPool())
    rule = Rule(id="t.sync", target="t", files=("a.py", "b.py", "c.py"), category=CATEGORIES[0], summary="s",
                docs=RuleDocs("w", "h"), rewrite=rename_call("old", "new"))
    jobs = [(f, "old()\n", [rule]) for f in ("a.py", "b.py", "c.py")]
    assert [f.after for f in planning.plan_files(jobs, workers=2)] == ["new()\n"] * 3
