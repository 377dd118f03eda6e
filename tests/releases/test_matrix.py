"""Each SAT release, as pip installs it, is planned, patched, verified (compile, import, fixpoint, op and model
parity, the training smoke run), scanned and reverted byte-identically, through the CLI.

`make test` runs a sample (oldest, middle, newest); `make test-releases` runs every release and rewrites
docs/releases.md. PORTER_SAT_RELEASES=0.4.3,0.4.9 picks others. Wheels come from pip (cached, never committed).
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import matrix  # noqa: E402


def _chosen() -> list[str]:
    wanted = os.environ.get("PORTER_SAT_RELEASES", "sample")
    if wanted == "sample":
        return matrix.SAMPLE
    if wanted == "all":
        return matrix.RELEASES
    return [v.strip() for v in wanted.split(",") if v.strip()]


@pytest.mark.parametrize("version", _chosen())
def test_release_patches_verifies_and_reverts(version, tmp_path):
    row = matrix.run_release(version, tmp_path)
    matrix.save(row)
    assert "error" not in row, row
    assert row["rules_matched"] > 0 and row["files"] > 0
    assert row["verify_ok"], row.get("verify_failures")
    assert set(row["verify"]) == {"journal", "compile", "import", "fixpoint", "parity-ops", "parity-model", "smoke"}
    assert all(status == "ok" for status in row["verify"].values()), row["verify"]
    assert row["scan_left"] == 0, "CUDA-only sites left on the VisualGLM path"
    assert row["revert_ok"] and row["byte_identical"]
