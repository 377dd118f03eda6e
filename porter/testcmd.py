"""`porter verify TARGET --test-cmd CMD`: the project's own tests (or any command) against the original and the
ported tree, compared.

Both runs see the same files on disk (the ported ones): the original run is given porter exec's boot file and
import hook serving the journal's saved originals in memory, so nothing is reverted, copied or written in the
target. A command that runs pytest is given ``--junitxml`` (and ``--assert=plain``, so test modules are imported
through the import system, where the originals are served, rather than read by pytest's assertion rewriter), and
the two runs are compared test by test: a test that passed before the port and does not after fails the stage;
one that fails on both is listed, not blamed on the port. Any other command is compared by its exit status."""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from .journal import Journal
from .target import InstalledTarget
from .verify import FAIL, OK, SKIP, CheckResult, originals_env

MAX_LISTED = 20  # tests named in one result line


def is_pytest(command: str) -> bool:
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    return any(Path(w).name in ("pytest", "py.test") or w == "pytest" for w in words)


def _run(command: str, env: dict[str, str], cwd: Path | None, timeout: float, junit: Path | None
         ) -> tuple[int | None, str]:
    """The command's exit status (None: it ran past ``timeout`` and was killed, with every process it started)
    and its last line of output. pytest's options go through PYTEST_ADDOPTS, never pasted onto the command (a
    pipe or `;` in it would take them)."""
    import signal

    if junit is not None:
        extra = f"--junitxml={shlex.quote(str(junit))} --assert=plain -p no:cacheprovider"
        env = {**env, "PYTEST_ADDOPTS": f"{env.get('PYTEST_ADDOPTS', '')} {extra}".strip()}
    proc = subprocess.Popen(command, shell=True, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # its own process group: a timeout ends all of it
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return None, f"timed out after {timeout:.0f} s (killed, with what it started)"
    tail = out.strip().splitlines()[-1:] or [""]
    return proc.returncode, tail[0][:200]


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed | failed | error | skipped, from a JUnit XML report (what pytest --junitxml writes)."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return {}
    found = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        found[name] = "failed" if "failure" in kinds else "error" if "error" in kinds else \
            "skipped" if "skipped" in kinds else "passed"
    return found


def compare(installed: InstalledTarget, journal: Journal, command: str, timeout: float,
            progress: Callable[[str], None]) -> list[CheckResult]:
    cwd = installed.root if installed.target.kind == "folder" else None
    pytest = is_pytest(command)
    with tempfile.TemporaryDirectory(prefix="porter-test-cmd-") as tmp:
        before_xml = Path(tmp) / "original.xml" if pytest else None
        after_xml = Path(tmp) / "ported.xml" if pytest else None
        progress(f"running `{command}` against the original tree (served in memory)")
        code_before, tail_before = _run(command, originals_env(installed, journal), cwd, timeout, before_xml)
        progress(f"running `{command}` against the ported tree")
        code_after, tail_after = _run(command, dict(os.environ), cwd, timeout, after_xml)
        results = [CheckResult("test-cmd", "original", OK if code_before == 0 else FAIL if code_before is None
                               else SKIP, _said(code_before, tail_before)),
                   CheckResult("test-cmd", "ported", OK if code_after == 0 else FAIL
                               if code_before == 0 or code_after is None else SKIP, _said(code_after, tail_after))]
        if code_before is None or code_after is None:  # nothing to compare: a run that never ended is a failure
            return results
        if not pytest:
            same = code_before == code_after
            results.append(CheckResult("test-cmd", "exit status", OK if same else FAIL,
                                       "the same" if same else f"{code_before} before the port, {code_after} after"))
            return results
        before, after = outcomes(before_xml), outcomes(after_xml)  # type: ignore[arg-type]
        if not before and not after:
            results.append(CheckResult("test-cmd", "tests", FAIL, "pytest reported no test on either side"))
            return results
        broke = sorted(t for t, o in before.items() if o == "passed" and after.get(t) != "passed")
        fixed = sorted(t for t, o in after.items() if o == "passed" and before.get(t) not in (None, "passed"))
        both = sorted(t for t, o in before.items() if o in ("failed", "error") and after.get(t) in ("failed", "error"))
        passed = sum(o == "passed" for o in after.values())
        results.append(CheckResult("test-cmd", "tests", FAIL if broke else OK,
                                   f"{passed} of {len(after)} pass after the port, "
                                   f"{sum(o == 'passed' for o in before.values())} of {len(before)} before"))
        if broke:
            results.append(CheckResult("test-cmd", "passed before, not after", FAIL, _names(broke)))
        if fixed:
            results.append(CheckResult("test-cmd", "pass only after the port", OK, _names(fixed)))
        if both:
            results.append(CheckResult("test-cmd", "fail before and after", SKIP, _names(both)))
        return results


def _said(code: int | None, tail: str) -> str:
    return tail if code is None else f"exit {code}: {tail}"


def _names(tests: list[str]) -> str:
    shown = ", ".join(tests[:MAX_LISTED])
    return shown + (f" (and {len(tests) - MAX_LISTED} more)" if len(tests) > MAX_LISTED else "")
