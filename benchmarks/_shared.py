"""What the benchmarks share: two copies of the installed SAT, original and patched, one way to summarise
samples, and where a result is written (``results/NAME.json``, which ``report.py`` reads)."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path


def original_and_patched(folder: Path) -> tuple[Path, Path]:
    """Two site-packages folders in ``folder``: a copy of the installed SAT, and the same copy patched by the CLI."""
    from porter.testing import copy_distribution

    original = copy_distribution("SwissArmyTransformer", Path(folder) / "original")
    patched = Path(folder) / "patched"
    shutil.copytree(original, patched)
    subprocess.run([sys.executable, "-m", "porter.cli", "patch", "sat", "--site-packages", str(patched)],
                   check=True, capture_output=True)
    return original, patched


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


RESULTS = Path(__file__).parent / "results"


def save(name: str, result: dict) -> Path:
    """Write ``result`` to ``results/<name>.json``."""
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
