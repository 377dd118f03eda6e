"""`porter verify`: prove a patched target is what the journal says, and that it works.

Generic stages run for every target; a target plugin adds its own checks (numeric parity, smoke runs).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .diskio import sha256_file
from .journal import APPLIED, Journal, read_original
from .rewrite import rewrite_file
from .rules import Rule
from .target import InstalledTarget, module_name  # noqa: F401  (module_name: verify's import probe)

StageResult = Literal["ok", "fail", "skip"]
OK: StageResult = "ok"
FAIL: StageResult = "fail"
SKIP: StageResult = "skip"


@dataclass
class CheckResult:
    stage: str
    item: str
    status: StageResult
    detail: str = ""

    def to_json(self) -> dict:
        return {"stage": self.stage, "item": self.item, "status": self.status, "detail": self.detail}


@dataclass
class VerifyContext:
    """What a plugin check may use: where the target is, what was patched, and the original sources."""

    installed: InstalledTarget
    journal: Journal

    @property
    def site_packages(self) -> Path:
        return self.installed.site_packages

    @property
    def patched_files(self) -> list[str]:
        """The files the patch changed, relative to ``site_packages``."""
        return [entry.path for entry in self.journal.files]

    @property
    def applied_rules(self) -> list[str]:
        """The ids of the rules the patch applied."""
        return list(self.journal.rules)

    @property
    def originals_dir(self) -> Path:
        """Where the byte-exact originals of ``patched_files`` are kept, laid out as in site-packages."""
        from .journal import originals_dir

        return originals_dir(self.installed.state_dir)

    def original_source(self, rel: str) -> str:
        """The file as it was before the patch (from the journal's saved originals; untouched files from disk)."""
        return read_original(self.installed, self.journal)(rel)

    def original_tree(self, dest: Path) -> Path:
        """The target's package as it was before the patch, written under ``dest`` (a site-packages-like folder
        to put first on ``sys.path``): the patched tree with every patched file restored."""
        import shutil

        package = self.installed.target.package
        shutil.copytree(self.installed.package_dir, Path(dest) / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for rel in self.patched_files:
            (Path(dest) / rel).write_bytes(self.original_source(rel).encode("utf-8"))
        return Path(dest)


@dataclass(frozen=True)
class Check:
    id: str
    target: str
    description: str
    run: Callable[[VerifyContext], Iterable[CheckResult]]

    @property
    def key(self) -> str:
        return self.id


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.status != FAIL for r in self.results)

    def to_json(self) -> dict:
        return {"ok": self.ok, "results": [r.to_json() for r in self.results]}


_IMPORT_PROBE = textwrap.dedent("""
    import importlib, json, sys, traceback
    sys.path.insert(0, sys.argv[1])
    results = {}
    for name in sys.argv[2:]:
        try:
            mod = importlib.import_module(name)
            results[name] = ["ok", getattr(mod, "__file__", "") or ""]
        except BaseException as exc:
            results[name] = ["fail", f"{type(exc).__name__}: {exc}"]
    print("PORTER-IMPORT-RESULTS " + json.dumps(results))
""")


def import_in_subprocess(site_packages: Path, modules: Sequence[str], timeout: float = 600,
                         env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, tuple[StageResult, str]]:
    """Import ``modules`` in a fresh interpreter with ``site_packages`` first on sys.path (``env``: its
    environment, e.g. porter exec's, which serves the originals in memory)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(site_packages), *modules],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {m: ("fail", f"the imports did not finish in {timeout:.0f} s") for m in modules}
    for line in proc.stdout.splitlines():
        if line.startswith("PORTER-IMPORT-RESULTS "):
            return {k: tuple(v) for k, v in json.loads(line.split(" ", 1)[1]).items()}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {m: ("fail", f"interpreter exited {proc.returncode}: {tail[0]}") for m in modules}


def verify(installed: InstalledTarget, rules: Sequence[Rule], checks: Sequence[Check],
           progress: Callable[[str], None] = lambda _m: None, test_cmd: str | None = None,
           timeout: float = 1800) -> Report:
    """Every stage in order: the journal, compile, import, fixpoint, ``--test-cmd``, then the plugin's checks."""
    from .state import load_journal

    report = Report()
    journal = load_journal(installed)  # paths inside the package, like every reader of a journal
    if journal is None or journal.status != APPLIED:
        why = "not patched: no journal" if journal is None else \
            f"journal is {journal.status}: the last patch was interrupted"
        report.results.append(CheckResult("journal", installed.name, FAIL, why))
        return report
    py_files = [e.path for e in journal.files if e.path.endswith(".py")]
    progress("checking files against the journal")
    report.results += _journal_stage(installed, journal)
    progress("compiling patched modules")
    report.results += _compile_stage(installed, py_files)
    progress("importing patched modules in a fresh interpreter")
    report.results += _generic_imports(installed, journal, py_files, progress) if installed.target.generic \
        else _import_stage(installed, py_files)
    progress("re-running the rules over their own output")
    report.results += _fixpoint_stage(installed, journal, rules)
    if test_cmd:
        from .testcmd import compare

        report.results += compare(installed, journal, test_cmd, timeout, progress)
    report.results += _plugin_checks(VerifyContext(installed, journal), checks, progress)
    return report


def _journal_stage(installed: InstalledTarget, journal: Journal) -> list[CheckResult]:
    results = []
    for entry in journal.files:
        ok = sha256_file(installed.path(entry.path)) == entry.patched_sha256
        results.append(CheckResult("journal", entry.path, OK if ok else FAIL,
                                   "matches patched sha256" if ok else "differs from the patched sha256 in the journal"))
    return results


def _compile_stage(installed: InstalledTarget, py_files: list[str]) -> list[CheckResult]:
    results = []
    for rel in py_files:
        try:
            compile(installed.path(rel).read_bytes(), str(installed.path(rel)), "exec")
            results.append(CheckResult("compile", rel, OK))
        except SyntaxError as exc:
            results.append(CheckResult("compile", rel, FAIL, f"line {exc.lineno}: {exc.msg}"))
        except FileNotFoundError:
            results.append(CheckResult("compile", rel, FAIL, "file missing"))
    return results


def _import_stage(installed: InstalledTarget, py_files: list[str]) -> list[CheckResult]:
    """A plugin's target: every patched module imports, from the target's site-packages."""
    results = []
    names = [name for name in map(module_name, py_files) if name is not None]
    for name, (status, detail) in import_in_subprocess(installed.site_packages, names).items():
        if status == OK and detail and not Path(detail).resolve().is_relative_to(installed.site_packages):
            status, detail = FAIL, f"imported from {detail}, not from {installed.site_packages}"
        results.append(CheckResult("import", name, status, detail if status == FAIL else ""))
    return results


def _fixpoint_stage(installed: InstalledTarget, journal: Journal, rules: Sequence[Rule]) -> list[CheckResult]:
    """The rules the patch applied change nothing more in the files they patched."""
    results = []
    applied = [r for r in rules if r.id in journal.rules]
    missing = sorted(set(journal.rules) - {r.id for r in applied})
    if missing:
        results.append(CheckResult("fixpoint", ", ".join(missing), FAIL, "rules in the journal are no longer installed"))
    for entry in journal.files:
        if not installed.path(entry.path).exists():
            results.append(CheckResult("fixpoint", entry.path, FAIL, "file missing"))
            continue
        text = installed.path(entry.path).read_bytes().decode("utf-8")
        mine = [r for r in applied if r.any_code or entry.path in r.files_for(installed.version)]
        try:
            again = rewrite_file(entry.path, text, mine, enforce_required=False)
        except Exception as exc:  # noqa: BLE001  a rule that fails on its own output is a failed stage, named
            results.append(CheckResult("fixpoint", entry.path, FAIL, f"a rule failed on the patched file: "
                                                                     f"{type(exc).__name__}: {exc}"))
            continue
        results.append(CheckResult("fixpoint", entry.path, OK if not again.changed else FAIL,
                                   "" if not again.changed else "rules still change it: " + ", ".join(again.rule_ids)))
    return results


def _plugin_checks(context: VerifyContext, checks: Sequence[Check], progress: Callable[[str], None]
                   ) -> list[CheckResult]:
    results: list[CheckResult] = []
    for check in checks:
        progress(f"check {check.id}: {check.description}")
        try:
            found = list(check.run(context)) or [CheckResult(check.id, "-", FAIL, "the check reported nothing")]
        except Exception as exc:  # a crashing check is a failed check, reported with its reason
            found = [CheckResult(check.id, "-", FAIL, f"{type(exc).__name__}: {exc}")]
        results += found
    return results


def originals_env(installed: InstalledTarget, journal: Journal) -> dict[str, str]:
    """An environment in which Python reads the journaled files as they were before the patch (porter exec's
    boot file and import hook, serving the saved originals in memory); nothing on disk changes."""
    import os

    from . import execute

    originals = {str(installed.path(e.path)): read_original(installed, journal)(e.path)
                 for e in journal.files if e.path.endswith(".py")}
    manifest = execute.write_manifest(originals)
    env = dict(os.environ)
    env[execute.MANIFEST_ENV] = str(manifest)
    env["PYTHONPATH"] = os.pathsep.join([str(execute.boot_folder()),
                                         *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    return env


def importable(installed: InstalledTarget, rel: str) -> str | None:
    """Why a folder's module is compiled but not imported, or None: a module outside a package whose top level
    runs code (a call, a loop, a with block) is a script, and importing it would run it."""
    import ast

    if installed.target.kind != "folder":
        return None
    parts = rel.split("/")
    for n in range(1, len(parts)):
        if not installed.path("/".join(parts[:n]) + "/__init__.py").is_file():
            return f"{'/'.join(parts[:n])}/ is not a package (no __init__.py): imported as a script would run it"
    try:
        tree = ast.parse(installed.path(rel).read_bytes())
    except (SyntaxError, ValueError, OSError):
        return None  # the compile stage says why
    for node in tree.body:
        if isinstance(node, (ast.Expr,)) and not isinstance(node.value, ast.Constant):
            return f"line {node.lineno} runs code at import (a script): compiled, not imported"
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
            return f"line {node.lineno} runs code at import (a script): compiled, not imported"
    return None


def _generic_imports(installed: InstalledTarget, journal: Journal, py_files: list[str],
                     progress: Callable[[str], None]) -> list[CheckResult]:
    """Every changed module that imported before the port must import after it: both in one fresh interpreter
    each (the originals served in memory for the first), so thousands of modules are two processes, not
    thousands. A module that did not import before either (a missing optional dependency) is a skip."""
    results = []
    names = {}
    for rel in py_files:
        name = module_name(rel)
        why = importable(installed, rel)
        if name is None:
            continue
        if why:
            results.append(CheckResult("import", name, SKIP, why))
        else:
            names[name] = rel
    if not names:
        return results
    cwd = installed.root if installed.target.kind == "folder" else None
    progress(f"importing {len(names)} module(s) as they were before the port")
    before = import_in_subprocess(installed.root, list(names), env=originals_env(installed, journal), cwd=cwd)
    progress(f"importing {len(names)} module(s) as ported")
    after = import_in_subprocess(installed.root, list(names), cwd=cwd)
    for name in names:
        was, now = before.get(name, (FAIL, "no answer")), after.get(name, (FAIL, "no answer"))
        if was[0] != OK:
            results.append(CheckResult("import", name, SKIP, f"did not import before the port either: {was[1]}"))
        elif now[0] != OK:
            results.append(CheckResult("import", name, FAIL, f"imported before the port, not after: {now[1]}"))
        else:
            results.append(CheckResult("import", name, OK))
    return results
