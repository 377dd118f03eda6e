"""The census of bad inputs and faults: shared by the table-driven ``test_census_*.py`` modules.

Each module holds ``CASES``, a list of :class:`Case` (one row per distinct bad input: variants that differ only
in random bytes are one case), and parametrizes its test over it. ``docs/reliability.md`` lists every case id;
``test_census_index.py`` checks that the list and the tables agree and that there are at least 150.

Cases run the CLI in this interpreter (:func:`cli`) wherever a fresh process proves nothing more: that is what
keeps a few hundred cases inside CI's budget. Signals, closed or full stdout and anything that depends on the
``porter`` executable's own exit path run in a subprocess (``porter.testing.run_porter``).
"""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KINDS = ("state", "journal", "permissions", "disk", "signals", "cli", "scan", "checkpoint", "data", "numeric",
         "serve", "paths")


@dataclass(frozen=True)
class Case:
    id: str  # unique across the census: "<kind>/<what>"
    kind: str  # one of KINDS
    proves: str  # one line for docs/reliability.md: what is done and what must hold

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        assert self.id.startswith(self.kind + "/"), self.id


def ids(cases: Sequence) -> list[str]:
    """pytest ids for a list of cases (or of tuples whose first item is a Case)."""
    return [(c[0] if isinstance(c, tuple) else c).id for c in cases]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*argv: str, env: Mapping[str, str] | None = None) -> Result:
    """``porter ARGV`` in this interpreter, its output captured: exit code, stdout, stderr."""
    from porter import cli as porter_cli

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = porter_cli.main(list(argv))
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Result(code, out.getvalue(), err.getvalue())


def assert_refused(result, code: int, *needles: str) -> None:
    """Exit ``code``, no traceback, and one error line (plus at most its hint) that holds every needle."""
    text = result.stderr
    assert result.returncode == code, f"exit {result.returncode}, wanted {code}:\n{text}\n{result.stdout}"
    assert "Traceback" not in text and "Traceback" not in result.stdout, text
    errors = [line for line in text.splitlines() if "error:" in line]  # porter's and argparse's
    assert len(errors) == 1, f"wanted one error line, got {len(errors)}:\n{text}"
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


# -- the census's page ---------------------------------------------------------------------------------------------

DOC = "docs/reliability.md"
BEGIN, END = "<!-- census:begin -->", "<!-- census:end -->"


def all_cases() -> list[Case]:
    """Every case of every ``test_census_*.py`` module beside this file, in file order."""
    import importlib
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    for folder in (here, here.parent):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    cases = []
    for module in sorted(here.glob("test_census_*.py")):
        cases += [c[0] if isinstance(c, tuple) else c for c in importlib.import_module(module.stem).CASES]
    return cases


def render(cases: Sequence[Case]) -> str:
    """The census section of docs/reliability.md: the count, then a table per kind."""
    lines = [BEGIN, "", f"**{len(cases)} cases.** Each row is one distinct bad input or fault (variants that differ "
             "only in random bytes count once) and names the test id that asserts it: its exit code or HTTP status, "
             "one line without a traceback, and the tree's bytes where files are involved. Regenerate this section "
             "with `.venv/bin/python tests/reliability/census.py`.", ""]
    for kind in KINDS:
        rows = [c for c in cases if c.kind == kind]
        if not rows:
            continue
        lines += [f"### {kind} ({len(rows)})", "", "| case | what it proves |", "|---|---|"]
        lines += [f"| `{c.id}` | {c.proves.replace('|', '/')} |" for c in rows]
        lines.append("")
    return "\n".join(lines + [END])


def main() -> None:
    from pathlib import Path

    doc = Path(__file__).parent.parent.parent / DOC
    text = doc.read_text()
    section = render(all_cases())
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## The census\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
