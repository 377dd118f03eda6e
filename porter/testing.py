"""Helpers for testing porter plugins: rules as text in / text out, and throwaway installs.

Plugin authors use these from pytest::

    from porter.testing import assert_rewrites, assert_untouched
    def test_gelu(): assert_rewrites(GELU, before, after)
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

from .rewrite import apply_rule, plan_cut
from .rules import Rule
from .skeleton import Lost


def _dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def rewrite(rule: Rule, source: str, path: str | None = None) -> tuple[str, list]:
    """Apply one rule to ``source`` (dedented); returns the new source and the matches.

    The rule runs on the whole source, and again as the planner runs it, on the source cut down to the statements
    holding its triggers (porter.skeleton); the two must agree, so every fixture also checks the rule's
    ``triggers``: a trigger the matched code lacks shows up here as a missing rewrite."""
    path = path or (rule.files[0] if rule.files else "example.py")
    text = _dedent(source)
    out, matches = apply_rule(rule, path, text)
    try:
        planned = plan_cut(path, text, [rule], enforce_required=False)
    except Lost:
        planned = None  # the rule rewrote around a placeholder: the planner plans this file whole
    if planned is not None:
        assert (planned.after, planned.matches) == (out, sorted(matches, key=lambda m: (m.start_line, m.start_col))), \
            f"rule {rule.id} rewrites differently when the planner shows it only what holds its triggers " \
            f"{rule.triggers}:\n{planned.after}\n--- on the whole source:\n{out}"
    return out, matches


def assert_rewrites(rule: Rule, before: str, after: str, path: str | None = None) -> list:
    """``rule`` turns ``before`` into exactly ``after``, records at least one match, and is a fixpoint."""
    out, matches = rewrite(rule, before, path)
    expected = _dedent(after)
    assert out == expected, f"rule {rule.id} produced:\n{out}\n--- expected:\n{expected}"
    assert matches, f"rule {rule.id} changed the source but recorded no match"
    again, more = apply_rule(rule, path or (rule.files[0] if rule.files else "example.py"), out)
    assert again == out and not more, f"rule {rule.id} is not a fixpoint: a second run changed:\n{again}"
    return matches


def assert_untouched(rule: Rule, source: str, path: str | None = None) -> None:
    """``rule`` leaves ``source`` alone and records nothing."""
    out, matches = rewrite(rule, source, path)
    assert out == _dedent(source) and not matches, f"rule {rule.id} should not have changed:\n{source}\ngot:\n{out}"


def make_distribution(site_packages: Path, name: str, version: str, files: Mapping[str, str]) -> Path:
    """Install a small package into ``site_packages``: ``files`` maps relative paths to text, plus dist-info."""
    site_packages = Path(site_packages)
    for rel, text in files.items():
        path = site_packages / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dedent(text))
    info = site_packages / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{rel},{record_hash(site_packages / rel)}\n" for rel in files)
                                 + f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return site_packages


def refresh_record(site_packages: Path, name: str) -> None:
    """Rewrite a distribution's RECORD hashes to its files as they are now: a test's edit becomes what pip installed
    (another release of the package), not a change since install."""
    site_packages = Path(site_packages)
    record = next(site_packages.glob(f"{name.replace('-', '_')}-*.dist-info")) / "RECORD"
    lines = []
    for line in record.read_text().splitlines():
        rel, digest, _size = line.rsplit(",", 2)
        if digest and (site_packages / rel).is_file():
            line = f"{rel},{record_hash(site_packages / rel)}"
        lines.append(line)
    record.write_text("\n".join(lines) + "\n")


def record_hash(path: Path) -> str:
    """A RECORD entry's hash and size, as pip writes them: ``sha256=<urlsafe base64, unpadded>,<bytes>``."""
    import base64
    import hashlib

    data = Path(path).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def copy_distribution(distribution: str, dest: Path) -> Path:
    """Copy an installed distribution (its packages and dist-info) into ``dest``, a site-packages to patch."""
    dist = md.distribution(distribution)
    root = Path(str(dist.locate_file("")))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # RECORD lists console scripts as ../../../bin/NAME: only what lies under site-packages is the distribution's
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not Path(str(f)).is_absolute()} - {"..", "__pycache__"}
    for top in sorted(tops):
        src = root / top
        if src.is_dir():
            shutil.copytree(src, dest / top, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dest / top)
    return dest


def tree_digest(path: Path) -> str:
    """sha256 over every file's relative path and bytes, ``__pycache__`` excluded (porter drops stale bytecode)."""
    h = hashlib.sha256()
    path = Path(path)
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(os.fsencode(file.relative_to(path)) + b"\0")  # any name the file system holds, UTF-8 or not
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def run_porter(*args: str, env: Mapping[str, str] | None = None, timeout: float = 600,
               site_packages: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the porter CLI in a fresh interpreter, as a user would; ``site_packages`` adds --site-packages DIR."""
    full_env = {**os.environ, **(env or {})}
    where = ["--site-packages", str(site_packages)] if site_packages is not None else []
    return subprocess.run([sys.executable, "-m", "porter.cli", *args, *where], capture_output=True, text=True,
                          env=full_env, timeout=timeout, **kwargs)
