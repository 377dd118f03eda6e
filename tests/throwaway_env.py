"""A throwaway Python environment that sees this one's packages (porter, torch, libcst, ...) but installs into
itself: what `pip install -e` does there never touches the environment the tests run in.

``bin/`` gets ``porter`` and ``pip`` commands bound to it, so shell lines written for a user (the guide's)
run as written. ``pip install`` there adds ``--no-deps --no-build-isolation``: the dependencies are this
environment's, and nothing is downloaded.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path


def make(root: Path) -> Path:
    """Create the environment under ``root``; returns its ``bin/`` folder (put it first on PATH)."""
    venv = Path(root)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    # addsitedir, not a plain path: this environment's own .pth files (porter's editable install) must run too
    (Path(purelib) / "porter-base.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    shims = {
        "porter": f'exec "{python}" -m porter.cli "$@"\n',
        "pip": (f'if [ "$1" = install ]; then shift; set -- install --no-deps --no-build-isolation "$@"; fi\n'
                f'exec "{sys.executable}" -m pip --python "{python}" "$@"\n'),
    }
    for name, body in shims.items():
        shim = venv / "bin" / name
        shim.write_text("#!/bin/sh\n" + body)
        shim.chmod(0o755)
    return venv / "bin"


def env_with(bin_dir: Path, **extra: str) -> dict:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
