"""CPU workers' threads, core binding (--bind-cores) and malloc settings, decided by porter/launch.py."""
import os
import subprocess
import sys

import pytest

from porter import launch
from porter.errors import PorterError
from porter.testing import run_porter


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("OMP_NUM_THREADS", "GLIBC_TUNABLES", *launch.MALLOC_ENV):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_threads_default_to_an_even_share_of_the_usable_cores(clean_env):
    clean_env.setattr(launch, "usable_cores", lambda: 8)
    assert launch.cpu_worker_env(2, bind=False) == {"OMP_NUM_THREADS": "4"}
    assert launch.cpu_worker_env(16, bind=False) == {"OMP_NUM_THREADS": "1"}  # never 0


def test_an_explicit_thread_count_wins(clean_env):
    clean_env.setattr(launch, "usable_cores", lambda: 8)
    clean_env.setenv("OMP_NUM_THREADS", "1")
    assert launch.cpu_worker_env(2, bind=True) == {"OMP_NUM_THREADS": "1", launch.BIND_ENV: "2"}
    clean_env.setenv("OMP_NUM_THREADS", "zero")  # not a count: the default share
    assert launch.cpu_worker_env(2, bind=False) == {"OMP_NUM_THREADS": "4"}


def test_bind_refuses_more_threads_than_cores(clean_env):
    clean_env.setattr(launch, "usable_cores", lambda: 2)
    clean_env.setenv("OMP_NUM_THREADS", "2")
    with pytest.raises(PorterError, match="2 worker\\(s\\) x 2 thread\\(s\\) need 4 cores"):
        launch.cpu_worker_env(2, bind=True)


def test_malloc_settings_unless_the_user_chose_their_own(clean_env):
    assert launch.malloc_env() == launch.MALLOC_ENV
    clean_env.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert launch.malloc_env() == {}
    clean_env.delenv("MALLOC_TRIM_THRESHOLD_")
    clean_env.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert launch.malloc_env() == {}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 usable cores and sched_setaffinity")
def test_a_bound_worker_takes_its_own_slice_of_the_cores():
    # in a child process: pinning this one would slow the rest of the suite
    code = ("import os; from porter.launch import bind_this_worker; "
            "print(bind_this_worker({'PORTER_BIND_CORES': '2', 'OMP_NUM_THREADS': '1'}), sorted(os.sched_getaffinity(0)))")
    cores = sorted(os.sched_getaffinity(0))
    for rank in (0, 1):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LOCAL_RANK": str(rank)},
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == [f"[{cores[rank]}]", f"[{cores[rank]}]"]
    assert launch.bind_this_worker({"OMP_NUM_THREADS": "1"}) is None  # not asked: nothing changes


def test_bind_cores_through_the_cli(clean_env):
    r = run_porter("run", "visualglm", "train", "--help")
    assert "--bind-cores" in r.stdout and "one core and one thread per worker" in " ".join(r.stdout.split())
    env = {"OMP_NUM_THREADS": "1", "PORTER_DEVICE": "cpu"}
    r = run_porter("run", "visualglm", "train", "--npus", "1", "--device", "cpu", "--bind-cores", "--dry-run",
                   "--patch", "off", env=env)
    assert r.returncode == 0, r.stderr
    assert "--module porter.worker" in r.stdout and f"{launch.BIND_ENV}=1" in r.stdout
    assert "OMP_NUM_THREADS=1" in r.stdout and "MALLOC_TRIM_THRESHOLD_=" in r.stdout
    r = run_porter("run", "visualglm", "train", "--npus", "1", "--device", "cpu", "--dry-run", "--patch", "off",
                   env=env)
    assert r.returncode == 0, r.stderr
    assert "--module porter.worker" in r.stdout and launch.BIND_ENV not in r.stdout
    r = run_porter("run", "visualglm", "train", "--npus", "1", "--device", "npu", "--bind-cores", "--dry-run")
    assert r.returncode == 2 and "--bind-cores pins CPU workers" in r.stderr
