"""A file cut down to the statements its rules can match, so libcst parses, positions and walks only those.

A Python rule names its trigger words (``Rule.triggers``): code it can match, as installed, always contains one
of them (the name of the function it rewrites, the attribute it looks for). Before a file is planned, every
statement whose text holds no trigger of the file's rules becomes a one-line placeholder,
``pass  # porter-skeleton:N``; a statement that holds one is kept, and a compound one (``def``, ``class``, ``if``,
``try``...) is opened so that its own untriggered statements are cut in turn. A rule that reads several
statements (``reads="function"``) gets every compound statement other than a class that holds its triggers whole,
and where a trigger sits in a plain statement of the module or of a class body, that whole body. The module's
head (docstring and leading imports) always stays: that is where the imports a rewrite needs are added.

After the rules ran, each placeholder is put back as the lines it stood for, and every line of the cut file is
mapped to the lines of the whole one: matches are reported, and names are resolved (``porter.bindings``), against
the whole file, so a cut never changes what a name means. A rewrite that lost, doubled, moved or re-indented a
placeholder raises ``Lost``; on that, or on any other failure, the engine plans the whole file instead.
"""
from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PLACEHOLDER = "pass  # porter-skeleton:{}"
_PLACEHOLDER_LINE = re.compile(r"([ \t]*)pass  # porter-skeleton:(\d+)\n?")

_COMPOUND = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If, ast.For, ast.AsyncFor, ast.While,
             ast.With, ast.AsyncWith, ast.Try, ast.Match) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())


class Lost(Exception):
    """A rewrite removed, doubled, moved or re-indented a placeholder: the cut file cannot be expanded."""


@dataclass(frozen=True)
class Run:
    """What one placeholder stands for: its indentation, the original text, and where in that text the last
    statement ends (its line, counted from the run's first, and its column in characters): a match that ends on
    the placeholder ends there, not on the comments or blank lines the run also took."""

    indent: str
    text: str
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Skeleton:
    """The cut file and what each of its placeholders stands for."""

    text: str
    runs: tuple[Run, ...]

    @functools.cached_property
    def original(self) -> tuple[list[tuple[int, int]], dict[int, tuple[int, int]]]:
        """``expand_ends`` of this skeleton's own text: how matches on it map to the file's lines."""
        _, lines, ends = self.expand_ends(self.text)
        return lines, ends

    def expand(self, text: str) -> tuple[str, list[tuple[int, int]]]:
        """``text`` (this skeleton, maybe rewritten) with every placeholder put back, and for each of its lines
        the first and last line (1-based) of the whole text that line became."""
        full, lines, _ = self.expand_ends(text)
        return full, lines

    def expand_ends(self, text: str) -> tuple[str, list[tuple[int, int]], dict[int, tuple[int, int]]]:
        """As ``expand``, and for each placeholder's line the line and column its last statement ends at."""
        out: list[str] = []
        lines: list[tuple[int, int]] = []
        ends: dict[int, tuple[int, int]] = {}
        line = 1
        seen = 0
        for piece in _lines(text):
            found = _PLACEHOLDER_LINE.fullmatch(piece) if "porter-skeleton:" in piece else None
            if found is None:
                out.append(piece)
                lines.append((line, line))
                line += 1
                continue
            index = int(found.group(2))
            if index != seen or index >= len(self.runs) or found.group(1) != self.runs[index].indent:
                raise Lost(f"placeholder {index} is out of place")
            run = self.runs[index]
            count = run.text.count("\n") + (0 if run.text.endswith("\n") else 1)
            out.append(run.text if piece.endswith("\n") or not run.text.endswith("\n") else run.text[:-1])
            lines.append((line, line + count - 1))
            ends[len(lines)] = (line + run.end_line - 1, run.end_column)
            line += count
            seen += 1
        if seen != len(self.runs):
            raise Lost(f"{len(self.runs) - seen} placeholder(s) removed")
        return "".join(out), lines, ends


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their ``\\n`` (the only line end a cut file has: see ``cut``)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def cut(text: str, statement_words: Iterable[str], function_words: Iterable[str] = ()) -> Skeleton | None:
    r"""``text`` with the statements that contain none of the words cut to placeholders (see the module's
    docstring for what ``function_words`` keep). None when nothing would be cut, or for text this cut does not
    handle (a syntax error, ``\r`` line ends, form feeds: Python counts lines there as libcst may not)."""
    if "\r" in text or "\x0c" in text:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    statement, function = set(statement_words), set(function_words)
    if not statement | function:
        return None
    lines = list(_lines(text))
    cutter = _Cutter(lines, _pattern(statement | _aliases(tree, statement)),
                     _pattern(function | _aliases(tree, function)))
    cutter.block(tree.body, top=True)
    if not cutter.runs:
        return None
    out: list[str] = []
    runs: list[Run] = []
    previous = 0
    for number, (first, last, end_column) in enumerate(cutter.runs):
        statements_end = last
        if number == len(cutter.runs) - 1 and last == (tree.body[-1].end_lineno or 0) \
                and all(not line.strip() or line.lstrip().startswith("#") for line in lines[last:]):
            # what follows the file's last statement goes with it: libcst would drop whitespace-only lines left
            # after a top-level placeholder where the file had them after an indented block
            last = len(lines)
        original = "".join(lines[first - 1:last])
        indent = lines[first - 1][:len(lines[first - 1]) - len(lines[first - 1].lstrip(" \t"))]
        out.extend(lines[previous:first - 1])
        out.append(indent + PLACEHOLDER.format(len(runs)) + ("\n" if original.endswith("\n") else ""))
        runs.append(Run(indent, original, statements_end - first + 1, end_column))
        previous = last
    out.extend(lines[previous:])
    return Skeleton("".join(out), tuple(runs))


def _pattern(words: set[str]) -> re.Pattern | None:
    if not words:
        return None
    return re.compile(r"(?<![\w])(?:" + "|".join(sorted(map(re.escape, words))) + r")(?![\w])")


def _aliases(tree: ast.Module, words: set[str]) -> set[str]:
    """Names the file binds, by ``import ... as`` or ``from ... import``, to something one of whose dotted parts
    is a trigger: ``from torch.cuda import synchronize as sync`` makes ``sync`` a trigger of ``synchronize``,
    because that is how the rule's resolved name reaches the call site."""
    found: set[str] = set()
    if not words:
        return found
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and words & set(alias.name.split(".")):
                    found.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            parts = set((node.module or "").split("."))
            for alias in node.names:
                if alias.name != "*" and words & (parts | {alias.name}):
                    found.add(alias.asname or alias.name)
    return found


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones included (imports are statements: no expression needs a visit)."""
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        nested = [*getattr(node, "body", ()), *getattr(node, "orelse", ()), *getattr(node, "finalbody", ())]
        for part in (*getattr(node, "handlers", ()), *getattr(node, "cases", ())):
            nested.extend(part.body)
        stack.extend(reversed([child for child in nested if isinstance(child, ast.stmt)]))


class _Cutter:
    """Walks statement lists, collecting the runs of statements to cut as (first, last) lines."""

    def __init__(self, lines: list[str], statement: re.Pattern | None, function: re.Pattern | None):
        self.lines = lines
        self.statement = statement
        self.function = function
        self.runs: list[tuple[int, int, int]] = []  # first line, last line, end column of the last statement

    def block(self, body: list[ast.stmt], top: bool = False) -> None:
        groups = list(self._groups(body))
        if self.function is not None and any(
                len(nodes) > 1 or not isinstance(nodes[0], (*_COMPOUND, ast.Import, ast.ImportFrom))
                for first, last, nodes in groups if self.function.search("".join(self.lines[first - 1:last]))):
            # a plain statement here (not an import: that only names a trigger) holds a trigger of a rule that
            # reads the statements around it: they all stay
            return
        run: tuple[int, int, int] | None = None
        head = top
        for index, (first, last, nodes) in enumerate(groups):
            head = head and all(_in_head(node, index == 0) for node in nodes)
            text = "".join(self.lines[first - 1:last])
            whole = self.function is not None and self.function.search(text) is not None
            hit = whole or (self.statement is not None and self.statement.search(text) is not None)
            node = nodes[0]
            elif_ = isinstance(node, ast.If) and self.lines[first - 1].lstrip().startswith("elif")
            if not head and not hit and not elif_ and self._cuttable(first, last, nodes):
                end = nodes[-1]
                column = len(self.lines[last - 1].encode()[:end.end_col_offset].decode(errors="ignore"))  # type: ignore[index]
                run = (run[0] if run else first, last, column)
                continue
            if run:
                self.runs.append(run)
                run = None
            if head or len(nodes) > 1 or not isinstance(node, _COMPOUND):
                continue  # kept as it is
            if whole and not isinstance(node, ast.ClassDef):
                continue  # holds a trigger of a rule that reads whole functions: kept whole
            self._open(node)
        if run:
            self.runs.append(run)

    def _open(self, node: ast.stmt) -> None:
        """Cut inside a kept compound statement: its header lines stay, each of its blocks is cut in turn."""
        blocks = [getattr(node, field, None) or [] for field in ("body", "orelse", "finalbody")]
        blocks += [part.body for part in (*getattr(node, "handlers", ()), *getattr(node, "cases", ()))]
        for body in blocks:
            if body and isinstance(body[0], ast.stmt) and self._own_lines(body[0]):
                self.block(body)

    def _own_lines(self, node: ast.stmt) -> bool:
        """Whether ``node`` starts its line (not ``if x: y``, not after a ``;``)."""
        first = _first_line(node)
        column = node.col_offset if first == node.lineno else node.decorator_list[0].col_offset - 1  # type: ignore[attr-defined]
        return self.lines[first - 1].encode()[:column].strip() == b""

    def _cuttable(self, first: int, last: int, nodes: list[ast.stmt]) -> bool:
        """Whether the lines first..last hold these statements and nothing else (comments aside)."""
        if not self._own_lines(nodes[0]):
            return False
        end = nodes[-1]
        rest = self.lines[last - 1].encode()[end.end_col_offset:].strip()  # type: ignore[index]
        return rest == b"" or rest.startswith(b"#")

    @staticmethod
    def _groups(body: list[ast.stmt]) -> Iterator[tuple[int, int, list[ast.stmt]]]:
        """The statements of a block, those sharing a line (``a = 1; b = 2``) together, as (first, last, nodes)."""
        group: list[ast.stmt] = []
        first = last = 0
        for node in body:
            start, end = _first_line(node), node.end_lineno or node.lineno
            if group and start <= last:
                group.append(node)
                last = max(last, end)
                continue
            if group:
                yield first, last, group
            group, first, last = [node], start, end
        if group:
            yield first, last, group


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", None)
    return min(node.lineno, *(d.lineno for d in decorators)) if decorators else node.lineno


def _in_head(node: ast.stmt, first: bool) -> bool:
    """Docstring (first statement only) or import: where libcst adds the imports a rewrite needs."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    return first and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
        and isinstance(node.value.value, str)
