"""Three packages from PyPI, written by others, whose public API crashes on a CPU-only machine because of
hard-coded CUDA in their own code (found by reading their source; pinned). Each is installed by pip into a
throwaway site-packages: the call raises; after `porter patch DIST` it returns the right result on CPU; `revert`
is byte for byte; and under `porter exec --target DIST` (nothing written) it returns the same result.

- PyHessian 0.1: `hessian(model, criterion, data=...)` defaults to `cuda=True`, sets `self.device = 'cuda'` and
  calls `.cuda()`. The Hessian of mean squared error for a bias-free linear model is (2/N) X^T X = diag(1, 4).
- torchgpipe 0.0.7: `balance_by_time(partitions, module, sample)` defaults to `device=torch.device('cuda')`.
  One partition holds all 5 layers; 5 partitions hold one each (exact, whatever the timings).
- torchensemble 0.2.0 (with joblib 1.4.2, which its __init__ imports): `FusionRegressor(..., cuda=True)` builds
  `torch.device("cuda" if cuda else "cpu")` and moves every estimator there in `fit`. Fitting y = 2x + 1 gives
  2x + 1.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from porter.testing import run_porter, tree_digest

PACKAGES = {
    "PyHessian": ("PyHessian==0.1", [], '''
import torch, torch.nn as nn
from pyhessian import hessian
torch.manual_seed(0)
model = nn.Linear(2, 1, bias=False)
X = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)
h = hessian(model, nn.MSELoss(), data=(X, y))
values, _ = h.eigenvalues(maxIter=200, tol=1e-6, top_n=2)
print("RESULT", round(values[0], 3), round(values[1], 3), h.trace())
''', "RESULT 4.0 1.0 [5.0, 5.0]"),
    "torchgpipe": ("torchgpipe==0.0.7", [], '''
import torch, torch.nn as nn
from torchgpipe.balance import balance_by_time
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
sample = torch.randn(3, 4)
print("RESULT", balance_by_time(1, model, sample, timeout=0.05), balance_by_time(5, model, sample, timeout=0.05))
''', "RESULT [5] [1, 1, 1, 1, 1]"),
    "torchensemble": ("torchensemble==0.2.0", ["joblib==1.4.2"], '''
import torch, torch.nn as nn
from torch.utils.data import TensorDataset, DataLoader
from torchensemble import FusionRegressor
torch.manual_seed(0)
X = torch.linspace(-1, 1, 32).unsqueeze(1); y = 2 * X + 1
loader = DataLoader(TensorDataset(X, y), batch_size=32)
ens = FusionRegressor(estimator=nn.Linear, estimator_args={"in_features": 1, "out_features": 1}, n_estimators=2)
ens.set_optimizer("SGD", lr=0.5)
ens.fit(loader, epochs=200, save_model=False)
pred = ens.predict(torch.tensor([[0.0], [0.5]]))
print("RESULT", [round(float(v), 3) for v in pred.flatten()])
''', "RESULT [1.0, 2.0]"),
}


def wheel_cache() -> Path:
    return Path(os.environ.get("PORTER_PYPI_CACHE", Path.home() / ".cache" / "porter" / "pypi-wheels"))


def install(requirement: str, site: Path) -> None:
    """``requirement`` as pip installs it into ``site`` (so RECORD is pip's), the download cached outside the
    repository."""
    cache = wheel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "download", "--no-deps", requirement, "-d", str(cache)], check=True, capture_output=True)
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--no-index", "--find-links", str(cache),
                    "--target", str(site), requirement], check=True, capture_output=True)


def call(code: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(site), "PORTER_DEVICE": "cpu"})


@pytest.mark.slow
@pytest.mark.parametrize("dist", sorted(PACKAGES))
def test_a_real_package_crashes_then_works_ported(dist, tmp_path):
    requirement, extra, code, expected = PACKAGES[dist]
    site = tmp_path / "site"
    for req in [requirement, *extra]:
        install(req, site)
    before = tree_digest(site)
    plain = call(code, site, tmp_path)
    assert plain.returncode != 0 and "Torch not compiled with CUDA enabled" in plain.stderr, plain.stderr[-500:]

    # in memory: nothing written
    script = tmp_path / "use_it.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, "-m", "porter.cli", "exec", "--no-script-folder", "--target", dist,
                        "--site-packages", str(site), "--", sys.executable, str(script)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(site), "PORTER_DEVICE": "cpu"})
    assert expected in r.stdout, r.stderr[-2000:]
    assert tree_digest(site) == before

    # on disk, then back
    r = run_porter("patch", dist, site_packages=site)
    assert r.returncode == 0, r.stderr
    ported = call(code, site, tmp_path)
    assert expected in ported.stdout, ported.stderr[-2000:]
    r = run_porter("revert", dist, site_packages=site)
    assert r.returncode == 0, r.stderr
    assert tree_digest(site) == before
