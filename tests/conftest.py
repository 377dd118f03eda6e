from __future__ import annotations

import sys
from pathlib import Path

import pytest

from porter.testing import copy_distribution, make_distribution

TESTS = Path(__file__).parent
FIXTURE_PLUGIN = str(TESTS / "fixture_plugin.py")
sys.path.insert(0, str(TESTS))

from fixture_plugin import TOYLIB_FILES  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _no_plan_cache():
    """Every test plans for real (and CLI runs inherit it); tests/test_plancache.py turns the cache on."""
    import os

    saved = os.environ.get("PORTER_PLAN_CACHE")
    os.environ["PORTER_PLAN_CACHE"] = "0"
    yield
    if saved is None:
        os.environ.pop("PORTER_PLAN_CACHE", None)
    else:
        os.environ["PORTER_PLAN_CACHE"] = saved


@pytest.fixture
def toylib_site(tmp_path) -> Path:
    """A temporary site-packages holding the toylib 1.0 fixture distribution."""
    return make_distribution(tmp_path / "site-packages", "toylib", "1.0", TOYLIB_FILES)


@pytest.fixture
def porter_env(monkeypatch) -> dict:
    """Environment for CLI subprocesses: the fixture plugin loaded as a third-party plugin would be."""
    monkeypatch.setenv("PORTER_PLUGINS", FIXTURE_PLUGIN)
    return {"PORTER_PLUGINS": FIXTURE_PLUGIN}


@pytest.fixture(scope="session")
def sat_pristine(tmp_path_factory) -> Path:
    """One copy of the real installed SwissArmyTransformer, never patched: copy it, don't touch it."""
    return copy_distribution("SwissArmyTransformer", tmp_path_factory.mktemp("sat-pristine"))


@pytest.fixture
def sat_site(sat_pristine, tmp_path) -> Path:
    """A throwaway site-packages with a copy of the real installed SAT, for patching."""
    import shutil

    dest = tmp_path / "sat-site"
    shutil.copytree(sat_pristine, dest)
    return dest


@pytest.fixture
def cpu_device(monkeypatch):
    """The runtime's device forced to the CPU (as PORTER_DEVICE=cpu does), selection reset afterwards."""
    from porter.runtime import device, ops

    monkeypatch.setenv("PORTER_DEVICE", "cpu")
    device.reset()
    ops.reset_counts()
    yield device.current()
    device.reset()


@pytest.fixture
def fake_npu(monkeypatch):
    """FAKE Ascend NPU: tests/fakes/torch_npu.py as torch_npu, and the runtime's device set to it."""
    from fakes import torch_npu as fake

    from porter.runtime import device, ops

    monkeypatch.setattr(device, "_extra", {})
    monkeypatch.delenv("PORTER_DEVICE", raising=False)
    fake.reset()
    ops.reset_counts()
    yield fake.install(monkeypatch)
    device.reset()


@pytest.fixture(scope="session")
def sat_patched(sat_pristine, tmp_path_factory) -> Path:
    """A copy of the real installed SAT, patched once with the whole catalogue. Read-only for tests."""
    import shutil

    from porter.testing import run_porter

    dest = tmp_path_factory.mktemp("sat-patched") / "site-packages"
    shutil.copytree(sat_pristine, dest)
    r = run_porter("patch", "sat", "--site-packages", str(dest))
    assert r.returncode == 0, r.stderr
    return dest


@pytest.fixture
def immutable():
    """``immutable(path)`` sets chattr +i on a path (skipping the test where the file system has no such flag),
    cleared again after the test."""
    import subprocess

    made = []

    def make(path):
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this file system")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)
