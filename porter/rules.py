"""Rules: one named, documented rewrite of one or more files of a target."""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import libcst as cst
from libcst.metadata import PositionProvider

from .names import NOT_A_LITERAL, ResolvesNames, literal, same  # noqa: F401  (what rule authors use)
from .target import version_in

CATEGORIES = ("device", "imports", "rotary", "fused-op", "quantization", "compat", "test", "unsupported")

# The target name of rules for any code: they run over every Python file of a target no plugin registered (a
# project folder, or an installed distribution by its pip name) that holds one of their trigger words
ANY_TARGET = "any"


@dataclass(frozen=True)
class RuleDocs:
    """What `porter rules` prints: the reasons a reviewer needs to trust, and later drop, a rule."""

    why: str  # what breaks without it
    how: str  # what the rewrite does
    upstream: str = ""  # the upstream code, issue or fix it answers to
    removal: str = ""  # when the rule can be deleted


@dataclass(frozen=True)
class Match:
    """One place a rule changed: file, line range (1-based, inclusive) and what it did."""

    rule_id: str
    path: str
    start_line: int
    end_line: int
    message: str
    start_col: int = 0
    end_col: int = 1 << 30

    def overlaps(self, other: Match) -> bool:
        a0, a1 = (self.start_line, self.start_col), (self.end_line, self.end_col)
        b0, b1 = (other.start_line, other.start_col), (other.end_line, other.end_col)
        return a0 < b1 and b0 < a1

    def to_json(self) -> dict:
        return {"rule": self.rule_id, "path": self.path, "lines": [self.start_line, self.end_line],
                "message": self.message}


class RuleTransformer(ResolvesNames, cst.CSTTransformer):
    """Base for Python rules: a libcst transformer that records what it changes.

    Rules match code by what it means, not how it is written: ``self.qualified_name(node)`` resolves a name
    or attribute chain through the file's imports (``th.cuda.synchronize`` after ``import torch as th`` is
    ``torch.cuda.synchronize``), ``same(a, b)`` compares two expressions as Python reads them (layout,
    comments and redundant parentheses aside), and ``literal(node)`` gives a constant's value.

    Call ``self.record(original_node, message)`` for every rewrite, with the *original* node (the one
    libcst passes as ``original_node``): its position in the file is what the report shows.
    """

    @classmethod
    def matched_names(cls) -> Iterable[str]:
        """The qualified names (``torch.cuda.synchronize``) this rule rewrites references to, where it is driven by
        such a table: a ``Rule`` that names no ``triggers`` takes their last parts as its triggers (how each is
        written at a call, or the import alias it is reached through). () for a rule that matches otherwise,
        which then names its triggers."""
        return ()

    def __init__(self, rule_id: str = "", path: str = "") -> None:
        super().__init__()
        self.rule_id = rule_id
        self.path = path
        self.matches: list[Match] = []
        self.imports: list[tuple[str, str | None]] = []  # what require_import asked for: (module, alias)
        self._context: Any = None

    @property
    def context(self):
        """A libcst CodemodContext, for a rule that schedules other imports itself
        (``AddImportsVisitor.add_needed_import(self.context, ...)``); made on first use (libcst.codemod is a
        tenth of porter's import time)."""
        if self._context is None:
            from libcst.codemod import CodemodContext

            self._context = CodemodContext()
        return self._context

    def record(self, node: cst.CSTNode, message: str) -> None:
        pos = self.get_metadata(PositionProvider, node)
        self.matches.append(Match(self.rule_id, self.path, pos.start.line, pos.end.line, message,
                                  pos.start.column, pos.end.column))

    def require_import(self, module: str, alias: str | None = None) -> cst.Name:
        """Make ``import module as alias`` (or plain ``import module``) present in the rewritten module; returns
        the name to use.

        It is added once, after the module's leading imports, and not at all when they already have it (as
        libcst's AddImportsVisitor does: see ``add_needed_imports``), so a rule that uses it stays a fixpoint.
        """
        self.imports.append((module, alias))
        return cst.Name(alias or module)

    def finish(self, module: cst.Module) -> cst.Module:
        """The rewritten module with the imports the rewrite asked for."""
        return add_needed_imports(module, [self])


def add_needed_imports(module: cst.Module, parts: Iterable[RuleTransformer]) -> cst.Module:
    """``module`` with the imports ``parts`` (rule transformers, one or several that shared a walk) asked for, each
    added once.

    ``require_import``'s ``import m`` / ``import m as a`` are placed as libcst's AddImportsVisitor places them
    (tests/test_head_imports.py holds the two side by side), by ``add_module_imports``: that touches the module's
    head only, where the visitor (a matcher transformer) costs 20 ms to build for every walk. Imports a rule
    scheduled through ``self.context`` itself go through the visitor.
    """
    parts = list(parts)
    wanted = [pair for part in parts for pair in part.imports]
    contexts = [part._context for part in parts if part._context is not None]
    if contexts:
        from libcst.codemod import CodemodContext
        from libcst.codemod.visitors import AddImportsVisitor

        scheduled = [item for context in contexts for item in context.scratch.get(AddImportsVisitor.CONTEXT_KEY, [])]
        if scheduled:
            merged = CodemodContext()
            for module_name, alias in wanted:
                AddImportsVisitor.add_needed_import(merged, module_name, asname=alias)
            merged.scratch[AddImportsVisitor.CONTEXT_KEY] = [*merged.scratch.get(AddImportsVisitor.CONTEXT_KEY, []),
                                                             *scheduled]
            return AddImportsVisitor(merged).transform_module(module)
    return add_module_imports(module, wanted) if wanted else module


def add_module_imports(module: cst.Module, wanted: Iterable[tuple[str, str | None]]) -> cst.Module:
    """``import m`` (sorted) then ``import m as a`` (in the order asked) for each pair the module's top imports
    lack, after those imports; the first statement after them is given a blank line before it. The top imports
    are the one-import lines at the start, after a docstring or ``__strict__`` flag: what AddImportsVisitor reads."""
    body = list(module.body)
    end = 1 if body and _docstring_or_strict(body[0]) else 0
    plain: set[str] = set()
    aliased: dict[str, str | None] = {}
    while end < len(body) and _one_import(body[end]):
        statement = body[end].body[0]  # type: ignore[index]  # _one_import checked it is a one-import line
        if isinstance(statement, cst.Import):
            for name in statement.names:
                if name.asname is not None:
                    aliased[name.evaluated_name] = name.evaluated_alias
                else:
                    plain.add(name.evaluated_name)
        end += 1
    new_plain = sorted({name for name, alias in wanted if alias is None} - plain)
    asked = {name: alias for name, alias in wanted if alias is not None}
    new_aliased = {name: alias for name, alias in asked.items() if aliased.get(name, None) != alias}
    if not new_plain and not new_aliased:
        return module
    after = body[end:]
    if after and (not after[0].leading_lines or after[0].leading_lines[0].comment is not None):
        after[0] = after[0].with_changes(leading_lines=(cst.EmptyLine(), *after[0].leading_lines))
    config = module.config_for_parsing
    added = [cst.parse_statement(f"import {name}", config=config) for name in new_plain]
    added += [cst.parse_statement(f"import {name} as {alias}", config=config) for name, alias in new_aliased.items()]
    return module.with_changes(body=[*body[:end], *added, *after])


def _one_import(statement: cst.CSTNode) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 \
        and isinstance(statement.body[0], (cst.Import, cst.ImportFrom))


def _docstring_or_strict(statement: cst.CSTNode) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    if isinstance(small, cst.Expr):
        return isinstance(small.value, cst.SimpleString)
    return isinstance(small, cst.Assign) and len(small.targets) == 1 \
        and isinstance(small.targets[0].target, cst.Name) and small.targets[0].target.value == "__strict__"


class TextRewrite:
    """Base for rules over non-Python files (JSON configs shipped as package data)."""

    def rewrite(self, text: str, rule_id: str, path: str) -> tuple[str, list[Match]]:  # pragma: no cover
        raise NotImplementedError


class JsonValue(TextRewrite):
    """Change one JSON field's value by editing its text, so the file keeps its layout and comments-free diff.

    ``key`` names the field (anywhere in the document), ``old`` and ``new`` are the JSON texts of the value.
    The result is parsed to check the edit did what it says.
    """

    def __init__(self, key: str, old: str, new: str):
        self.key, self.old, self.new = key, old, new

    def rewrite(self, text: str, rule_id: str, path: str) -> tuple[str, list[Match]]:
        import json
        import re

        pattern = re.compile(rf'("{re.escape(self.key)}"\s*:\s*){re.escape(self.old)}(?=\s*[,}}\n])')
        matches, out, last = [], [], 0
        for found in pattern.finditer(text):
            line = text.count("\n", 0, found.start()) + 1
            matches.append(Match(rule_id, path, line, line, f'"{self.key}": {self.old} -> {self.new}'))
            out.append(text[last:found.start()] + found.group(1) + self.new)
            last = found.end()
        if not matches:
            return text, []
        new_text = "".join(out) + text[last:]
        try:
            json.loads(new_text)
        except ValueError as exc:
            from .errors import PlanError

            raise PlanError(f"{path}: rule {rule_id} produced invalid JSON ({exc})") from None
        return new_text, matches


class ProjectRule(RuleTransformer):
    """Base for rules over any code (``target=ANY_TARGET``): a node whose statement carries a ``# porter: skip``
    comment is left as it is, and what the rule recorded for it is dropped. That is the opt-out a project commits
    beside the code (a whole file: ``# porter: skip-file``, which the planner reads; folders: ``[tool.porter]
    exclude`` in its pyproject.toml)."""

    def on_leave(self, original_node, updated_node):
        before, imports = len(self.matches), len(self.imports)
        result = super().on_leave(original_node, updated_node)
        if result is not updated_node and self.skipped(original_node):
            del self.matches[before:], self.imports[imports:]
            return updated_node
        return result


Rewrite = Union[type[RuleTransformer], TextRewrite]  # noqa: UP007  (evaluated at runtime on 3.10 too)


@dataclass(frozen=True)
class Rule:
    id: str  # stable, dotted: "sat.device.synchronize"; shown in diffs, reports, --only
    target: str  # the Target.name it applies to
    files: tuple[str, ...]  # paths relative to site-packages: "sat/training/utils.py"
    category: str
    summary: str  # one line
    rewrite: Rewrite
    docs: RuleDocs
    versions: str = ""  # target versions this rule applies to; "" means all the target supports
    required: bool = True  # a required rule that matches nothing in one of its files aborts the plan
    after: tuple[str, ...] = field(default=())  # ids of rules whose output this one rewrites
    # files the code to rewrite is in only for some releases: path -> PEP 440 range ("sat/x.py": ">=0.4.10");
    # outside that range the rule does not look at the file, so `required` still holds for the files it does
    file_versions: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    # names the code this rule matches, as installed, always contains as whole words (or an import alias of a
    # dotted name holding one: the planner adds those per file): statements holding none are not shown to the
    # rule (porter.skeleton). () shows it every file whole. With reads="function", a compound statement holding a
    # trigger is shown whole, for rules that read several statements (a list assigned then passed, a run of them)
    triggers: tuple[str, ...] = ()
    reads: str = "statement"
    # a rule for any code: words (whole) of which a file must hold at least one for the rule to be shown it at all,
    # beside its triggers; ("cuda",) for a rule that only matches torch.cuda names (an import alias of torch.cuda
    # or of one of its names holds the word too). Lets a common trigger ("device", "seed") not send every file of a
    # large library to the parser. () asks nothing more
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.files, str):
            object.__setattr__(self, "files", (self.files,))
        if isinstance(self.after, str):
            object.__setattr__(self, "after", (self.after,))
        stray = set(self.file_versions) - set(self.files)
        if stray:
            raise ValueError(f"rule {self.id}: file_versions names files not in files: {', '.join(sorted(stray))}")
        object.__setattr__(self, "triggers", (self.triggers,) if isinstance(self.triggers, str) else tuple(self.triggers))
        if not self.triggers and isinstance(self.rewrite, type) and issubclass(self.rewrite, RuleTransformer):
            # derived from what the rule matches, never kept by hand beside it
            object.__setattr__(self, "triggers", tuple(dict.fromkeys(
                name.rsplit(".", 1)[-1] for name in self.rewrite.matched_names())))
        object.__setattr__(self, "requires", (self.requires,) if isinstance(self.requires, str) else tuple(self.requires))
        wrong = [word for word in self.triggers if not (isinstance(word, str) and word.isidentifier())]
        if wrong:
            raise ValueError(f"rule {self.id}: triggers are single names (the last part of a dotted one), not {wrong!r}")
        if self.reads not in ("statement", "function"):
            raise ValueError(f"rule {self.id}: reads must be 'statement' or 'function', not {self.reads!r}")
        if self.target == ANY_TARGET:
            if self.files or self.file_versions:
                raise ValueError(f"rule {self.id}: a rule for any code runs over every file holding its triggers; it "
                                 "names no files")
            if self.required:
                raise ValueError(f"rule {self.id}: a rule for any code cannot be required (most files lack its code)")
            if not self.triggers:
                raise ValueError(f"rule {self.id}: a rule for any code must name its triggers: files without them are "
                                 "never parsed")
            if not (isinstance(self.rewrite, type) and issubclass(self.rewrite, ProjectRule)):
                raise TypeError(f"rule {self.id}: a rule for any code needs a porter.rules.ProjectRule subclass (it "
                                "honours `# porter: skip`)")
        if self.category not in CATEGORIES:
            raise ValueError(f"rule {self.id}: category {self.category!r} is not one of {', '.join(CATEGORIES)}")
        python = all(f.endswith(".py") for f in self.files)
        if python and not (isinstance(self.rewrite, type) and issubclass(self.rewrite, RuleTransformer)):
            raise TypeError(f"rule {self.id}: a rule over .py files needs a RuleTransformer subclass")
        if not python and not isinstance(self.rewrite, TextRewrite):
            raise TypeError(f"rule {self.id}: a rule over data files needs a TextRewrite instance")

    @property
    def any_code(self) -> bool:
        """A rule for any code: its files are the target's Python files that hold its triggers."""
        return self.target == ANY_TARGET

    def applies_to(self, version: str) -> bool:
        return version_in(version, self.versions) and (self.any_code or bool(self.files_for(version)))

    def files_for(self, version: str) -> tuple[str, ...]:
        """The files this rule rewrites in that release of its target."""
        return tuple(f for f in self.files if version_in(version, self.file_versions.get(f, "")))


def fingerprint(rules: Iterable[Rule]) -> str:
    """A hash of what the rules are and of the code behind them: porter's version (its engine), every
    module of the package that defines each rewrite (shared helpers included) and a text rewrite's
    parameters. It changes when an upgraded plugin could rewrite differently, so a patch made with other
    rules is never taken for this one."""
    from .diskio import engine_digest, hash_files

    h = hashlib.sha256(engine_digest().encode())  # porter's engine and libcst shape every result too
    sources: set[Path] = set()
    for rule in sorted(rules, key=lambda r: r.id):
        h.update(f"{rule.id}\0{rule.files}\0{rule.versions}\0{sorted(rule.file_versions.items())}\0"
                 f"{rule.after}\0{rule.triggers}\0{rule.reads}\0{rule.requires}\0".encode())
        code = rule.rewrite if isinstance(rule.rewrite, type) else type(rule.rewrite)
        if not isinstance(rule.rewrite, type):
            h.update(repr(sorted(vars(rule.rewrite).items())).encode())
        else:
            h.update(_class_code(code))
        module = sys.modules.get(code.__module__)  # inspect.getmodule may scan every loaded module
        path = getattr(module, "__file__", None)
        if path is None:
            h.update(repr(code).encode())
            continue
        top = module.__name__.split(".")[0]  # type: ignore[union-attr]  # getmodule found its file above
        package = sys.modules.get(top)
        if top != "porter" and package is not None and getattr(package, "__path__", None) and package.__file__:
            sources.update(Path(package.__file__).parent.rglob("*.py"))  # the plugin package, helpers included
        else:
            sources.add(Path(path))
    hash_files(h, sources)
    return h.hexdigest()


def _class_code(cls: type) -> bytes:
    """The code of a transformer class and its bases up to porter's: each method's bytecode, constants and the
    values it closes over, and the class's plain attributes. Two classes made by one factory with different
    arguments (``rename_call("a", "b")``) differ here, though their module's source is the same."""
    parts = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in ("porter", "libcst", "builtins"):
            break
        parts.append(klass.__qualname__)
        for name, value in sorted(vars(klass).items()):
            function = getattr(value, "__func__", value)
            if getattr(function, "__code__", None) is not None:
                cells = [c.cell_contents for c in (function.__closure__ or ()) if _has_contents(c)]
                parts.append(f"{name}:{_stable(function.__code__)}:{_stable(cells)}")
            elif not name.startswith("_"):  # private names hold caches (libcst's metadata dependencies)
                parts.append(f"{name}={_stable(value)}")
    return "\0".join(parts).encode()


def _stable(value) -> str:
    """A text for ``value`` that is the same in every process (no memory addresses)."""
    if isinstance(value, (str, bytes, int, float, bool, complex, type(None), type(...))):
        return repr(value)
    if isinstance(value, type(_stable.__code__)):
        return f"code({value.co_code.hex()},{_stable(value.co_consts)},{value.co_names!r})"
    if isinstance(value, (tuple, list, frozenset, set)):
        items = sorted(map(_stable, value)) if isinstance(value, (set, frozenset)) else map(_stable, value)
        return f"{type(value).__name__}({','.join(items)})"
    if isinstance(value, dict):
        return "dict(" + ",".join(sorted(f"{_stable(k)}:{_stable(v)}" for k, v in value.items())) + ")"
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    function = getattr(value, "__func__", value)
    if getattr(function, "__code__", None) is not None:
        return f"function {_stable(function.__code__)}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _has_contents(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True
