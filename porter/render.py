"""Terminal output: tables and diffs, coloured on a terminal and plain when piped."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

_CODES = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}
STATUS_COLOURS = {"ok": "green", "fail": "red", "skip": "yellow", "clean": "green", "patched": "cyan",
                  "drifted": "red", "interrupted": "red", "orphaned": "red", "damaged": "red", "in-progress": "yellow", "original": "green",
                  "missing": "red"}


def _isatty(stream) -> bool:
    try:
        return bool(stream and stream.isatty())
    except (OSError, ValueError):  # a closed stream
        return False


class Console:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, colour: bool | None = None):
        # the streams of the moment, not of import time (a caller may have redirected them)
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        if colour is None:
            colour = _isatty(self.out) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self.colour = colour

    def paint(self, text: str, colour: str) -> str:
        return f"\033[{_CODES[colour]}m{text}\033[0m" if self.colour and colour in _CODES else text

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        """Progress and warnings go to stderr, so stdout stays data (diffs, JSON, tables)."""
        print(text, file=self.err, flush=True)

    def status(self, word: str) -> str:
        return self.paint(word, STATUS_COLOURS.get(word, ""))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], status_col: int | None = None) -> str:
        cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        lines = []
        for n, row in enumerate(cells):
            parts = []
            for i, cell in enumerate(row):
                pad = cell.ljust(widths[i]) if i < len(row) - 1 else cell
                if n == 0:
                    pad = self.paint(pad, "bold")
                elif i == status_col:
                    pad = self.paint(pad, STATUS_COLOURS.get(cell, ""))
                parts.append(pad)
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines)

    def diff(self, text: str) -> str:
        if not self.colour:
            return text
        out = []
        for line in text.splitlines():
            if line.startswith(("+++", "---")):
                out.append(self.paint(line, "bold"))
            elif line.startswith("@@"):
                out.append(self.paint(line, "cyan"))
            elif line.startswith("+"):
                out.append(self.paint(line, "green"))
            elif line.startswith("-"):
                out.append(self.paint(line, "red"))
            else:
                out.append(line)
        return "\n".join(out) + ("\n" if text.endswith("\n") else "")
