"""Faults in the middle of a patch or a revert: a full disk, a file size limit, an immutable file. Each leaves the
target as it was (or in a state `porter revert` repairs) and says which file, with exit code 4."""
import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from porter import patcher, plugins, state
from porter.errors import StateError
from porter.target import locate
from porter.testing import run_porter, tree_digest

FIXTURE_PLUGIN = str(Path(__file__).parents[1] / "fixture_plugin.py")


def porter(site, *args, env, **kw):
    return run_porter(*args, env=env, site_packages=site, **kw)


@pytest.fixture
def toylib(toylib_site):
    registry = plugins.load(extra=[FIXTURE_PLUGIN])
    return locate(registry.target("toylib"), toylib_site), registry.rules_for("toylib")


@pytest.mark.parametrize("after_rename", [False, True], ids=["before-rename", "after-rename"])
@pytest.mark.parametrize("failing_write", [1, 2, 3])
def test_disk_full_on_the_nth_file_puts_back_what_was_written(toylib, monkeypatch, failing_write, after_rename):
    installed, rules = toylib
    pristine = tree_digest(installed.package_dir)
    real = patcher.atomic_write
    calls = {"target": 0}

    def full_disk(path, data, mode=None):
        if ".porter-state" not in str(path):  # the target's files, not the saved originals
            calls["target"] += 1
            if calls["target"] == failing_write:
                if after_rename:  # the file is replaced, then fsyncing its folder fails (EIO)
                    real(path, data, mode)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, mode)

    monkeypatch.setattr(patcher, "atomic_write", full_disk)
    with pytest.raises(StateError) as caught:
        patcher.apply_patch(installed, rules)
    assert caught.value.exit_code == 4
    assert "No space left on device" in caught.value.message and "nothing is changed" in caught.value.message
    assert "already written were put back" in caught.value.message
    assert tree_digest(installed.package_dir) == pristine
    assert not installed.state_dir.exists()


def test_a_failing_roll_back_leaves_an_interrupted_patch_that_revert_repairs(toylib, monkeypatch):
    installed, rules = toylib
    pristine = tree_digest(installed.package_dir)
    real = patcher.atomic_write
    calls = {"target": 0}

    def failing(path, data, mode=None):
        if ".porter-state" not in str(path):
            calls["target"] += 1
            if calls["target"] >= 2:  # the second file fails, and so does putting the first one back
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, mode)

    monkeypatch.setattr(patcher, "atomic_write", failing)
    with pytest.raises(StateError, match="the patch is interrupted"):
        patcher.apply_patch(installed, rules)
    monkeypatch.setattr(patcher, "atomic_write", real)
    assert state.status(installed).state == "interrupted"
    patcher.revert(installed)
    assert tree_digest(installed.package_dir) == pristine


def test_a_file_size_limit_while_saving_originals_changes_nothing(toylib_site, porter_env):
    pristine = tree_digest(toylib_site)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # smaller than every file porter writes

    r = subprocess.run([sys.executable, "-m", "porter.cli", "patch", "toylib", "--site-packages", str(toylib_site)],
                       capture_output=True, text=True, preexec_fn=limit, env={**os.environ, **porter_env})
    assert r.returncode == 4, r.stderr
    assert "could not save the originals" in r.stderr and "File too large" in r.stderr
    assert "Traceback" not in r.stderr
    assert tree_digest(toylib_site) == pristine


def test_an_immutable_file_is_refused_before_the_first_write(toylib_site, porter_env, immutable):
    pristine = tree_digest(toylib_site)
    immutable(toylib_site / "toylib" / "timer.py")
    r = porter(toylib_site, "patch", "toylib", env=porter_env)
    assert r.returncode == 4
    assert "cannot write: " in r.stderr and "toylib/timer.py is immutable or append-only" in r.stderr
    assert "nothing was changed" in r.stderr and tree_digest(toylib_site) == pristine


def test_an_immutable_file_is_refused_before_reverting(toylib_site, porter_env, immutable):
    assert porter(toylib_site, "patch", "toylib", env=porter_env).returncode == 0
    patched = tree_digest(toylib_site / "toylib")
    immutable(toylib_site / "toylib" / "dist.py")
    r = porter(toylib_site, "revert", "toylib", env=porter_env)
    assert r.returncode == 4 and "toylib/dist.py is immutable or append-only" in r.stderr
    assert tree_digest(toylib_site / "toylib") == patched
    journal = json.loads((toylib_site / ".porter-state/toylib/journal.json").read_text())
    assert journal["status"] == "applied"  # still patched, not half-reverted
