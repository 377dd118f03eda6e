"""Planning in worker processes gives what one process gives: the same plan, the same first error."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fixture_plugin import rename_call

import porter.plan as planning
from porter.errors import PlanError
from porter.rules import CATEGORIES, Rule, RuleDocs
from porter.testing import copy_distribution, refresh_record

RENAME = Rule(id="t.sync", target="t", files=("a.py", "b.py", "c.py", "d.py"), category=CATEGORIES[0], summary="s",
              docs=RuleDocs("w", "h"), rewrite=rename_call("old", "new"), required=True)


@pytest.fixture
def only_in_workers(monkeypatch):
    """Planning a file in this process fails the test, so a result can only have come from a worker (which
    inherits this patch through fork and runs the real engine)."""
    parent, real = os.getpid(), planning.rewrite_file

    def rewrite_file(*args, **kwargs):
        assert os.getpid() != parent, "planned in the parent: the pool did not run"
        return real(*args, **kwargs)

    monkeypatch.setattr(planning, "rewrite_file", rewrite_file)


def _dry_run(site, target, env, workers):
    return subprocess.run([sys.executable, "-m", "porter.cli", "patch", target, "--dry-run", "--json",
                           "--site-packages", str(site)], capture_output=True, text=True,
                          env={**env, "PORTER_PLAN_WORKERS": str(workers)})


def test_sat_planned_in_two_processes_equals_one(tmp_path, porter_env):
    site = copy_distribution("SwissArmyTransformer", tmp_path / "site")
    one, two = _dry_run(site, "sat", porter_env, 1), _dry_run(site, "sat", porter_env, 2)
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    plan = json.loads(two.stdout)
    assert len(plan["files"]) > 10
    assert plan == json.loads(one.stdout)


def test_workers_plan_what_this_process_plans(only_in_workers):
    jobs = [(f, "old()\nx = 1\n", [RENAME]) for f in ("a.py", "b.py", "c.py")]
    planned = planning.plan_files(jobs, workers=2)
    assert [(f.path, f.after, [m.start_line for m in f.matches]) for f in planned] == \
        [(f, "new()\nx = 1\n", [1]) for f in ("a.py", "b.py", "c.py")]


def test_the_first_files_error_comes_back_whole(only_in_workers):
    jobs = [("a.py", "old()\n", [RENAME]), ("b.py", "x = 1\n", [RENAME]), ("c.py", "y = 1\n", [RENAME]),
            ("d.py", "old()\n", [RENAME])]
    with pytest.raises(PlanError, match="required rule t.sync matched nothing in b.py") as err:
        planning.plan_files(jobs, workers=2)
    assert err.value.hint and err.value.exit_code == 3  # the hint and exit code survived pickling


def test_an_error_through_the_cli_is_the_same_error(toylib_site, porter_env):
    (toylib_site / "toylib/dist.py").write_text("BACKEND = 'mpi'\n")  # toylib.backend is required: it fails
    refresh_record(toylib_site, "toylib")
    one, three = _dry_run(toylib_site, "toylib", porter_env, 1), _dry_run(toylib_site, "toylib", porter_env, 3)
    assert three.returncode == one.returncode == 3
    assert "required rule toylib.backend matched nothing in toylib/dist.py" in three.stderr
    assert three.stderr == one.stderr


def test_a_pool_that_cannot_start_plans_in_this_process(monkeypatch):
    class NoPool:
        def Pool(self, n):
            raise OSError("no semaphores here (a file size limit, a read-only /dev/shm)")

    monkeypatch.setattr(planning.multiprocessing, "get_context", lambda kind: NoPool())
    jobs = [(f, "old()\n", [RENAME]) for f in ("a.py", "b.py", "c.py")]
    assert [f.after for f in planning.plan_files(jobs, workers=2)] == ["new()\n"] * 3
