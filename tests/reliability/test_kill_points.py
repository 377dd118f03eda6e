"""SIGKILL at every named step of a patch and of a revert (tests/fault_runner.py): afterwards `porter status`
names the state, `porter revert` (or the next `porter patch`) repairs it, and every byte comes back."""
import json
import os
import subprocess
import sys

import pytest

from porter.testing import run_porter, tree_digest

FAULT_RUNNER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fault_runner.py")
# step -> the state `porter status` must report after a SIGKILL there
PATCH_STEPS = {"originals-saved": "clean", "journal-pending": "interrupted", "wrote 1/3": "interrupted",
               "wrote 2/3": "interrupted", "wrote 3/3": "interrupted", "applied": "patched"}
REVERT_STEPS = {"revert-pending": "interrupted", "restored 1/3": "interrupted", "restored 2/3": "interrupted",
                "restored 3/3": "interrupted", "restored-all": "interrupted"}


def killed(site, step, *args, env):
    r = subprocess.run([sys.executable, FAULT_RUNNER, "--kill-at", step, "--", *args, "--site-packages", str(site)],
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert r.returncode == -9, f"not killed at {step}: {r.returncode} {r.stderr[-500:]}"


def state(site, env):
    return json.loads(run_porter("status", "toylib", "--json", "--site-packages", str(site), env=env).stdout)[0]["state"]


@pytest.mark.parametrize("step", PATCH_STEPS)
@pytest.mark.parametrize("repair", ["revert", "patch"])
def test_a_patch_killed_at_any_step_is_named_and_repaired(toylib_site, porter_env, step, repair):
    pristine = tree_digest(toylib_site / "toylib")
    killed(toylib_site, step, "patch", "toylib", env=porter_env)
    assert state(toylib_site, porter_env) == PATCH_STEPS[step]
    r = run_porter(repair, "toylib", "--site-packages", str(toylib_site), env=porter_env)
    assert r.returncode == 0, r.stderr
    if repair == "revert":
        assert tree_digest(toylib_site / "toylib") == pristine and not (toylib_site / ".porter-state").exists()
    else:
        assert state(toylib_site, porter_env) == "patched"
        assert run_porter("revert", "toylib", "--site-packages", str(toylib_site), env=porter_env).returncode == 0
        assert tree_digest(toylib_site / "toylib") == pristine


@pytest.mark.parametrize("step", REVERT_STEPS)
def test_a_revert_killed_at_any_step_is_named_and_finished(toylib_site, porter_env, step):
    pristine = tree_digest(toylib_site / "toylib")
    assert run_porter("patch", "toylib", "--site-packages", str(toylib_site), env=porter_env).returncode == 0
    killed(toylib_site, step, "revert", "toylib", env=porter_env)
    assert state(toylib_site, porter_env) == REVERT_STEPS[step]
    r = run_porter("revert", "toylib", "--site-packages", str(toylib_site), env=porter_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site / "toylib") == pristine and not (toylib_site / ".porter-state").exists()


def test_a_patch_racing_a_reinstall_is_reported_as_drift(toylib_site, porter_env):
    """pip install --force-reinstall while porter writes: simulated by copying the pristine files back."""
    import shutil

    pristine_copy = toylib_site.parent / "pristine"
    shutil.copytree(toylib_site / "toylib", pristine_copy)
    proc = subprocess.Popen([sys.executable, FAULT_RUNNER, "--pause-at", "wrote 2/3", "--", "patch", "toylib",
                             "--site-packages", str(toylib_site)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env={**os.environ, **porter_env, "PORTER_FAULT_PAUSE": "3"})
    lines = [proc.stderr.readline() for _ in range(3)]
    assert lines[-1].startswith("paused at wrote 2/3"), lines
    shutil.copytree(pristine_copy, toylib_site / "toylib", dirs_exist_ok=True)  # the "reinstall"
    assert proc.wait(timeout=60) == 0  # porter writes its third file and marks the patch applied
    r = run_porter("status", "toylib", "--site-packages", str(toylib_site), "--json", env=porter_env)
    s = json.loads(r.stdout)[0]
    assert s["state"] == "drifted" and sorted(s["files"].values()) == ["original", "original", "patched"]
    r = run_porter("patch", "toylib", "--site-packages", str(toylib_site), env=porter_env)
    assert r.returncode == 4 and "files changed since" in r.stderr
    r = run_porter("revert", "toylib", "--site-packages", str(toylib_site), env=porter_env)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site / "toylib") == tree_digest(pristine_copy)
