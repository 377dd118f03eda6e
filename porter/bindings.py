"""Which import a name in a file is bound to, from Python's own parser and symbol tables.

libcst's ScopeProvider and QualifiedNameProvider answer the same question by walking every node of the tree in
Python; on SAT that walk was half of planning a patch. ``ast`` and ``symtable`` are CPython's C implementation
of the same scoping rules, so this module asks them instead, and only for files where a rule asks at all.

A name is looked up where it is used: the innermost function, lambda, class or comprehension around it. In that
scope ``symtable`` says whether the name is local, global or free; the lookup moves outwards the way Python's
does (class bodies are skipped by the functions inside them). In the scope that binds it, the name *means* an
import only when every binding of it there is an import of the same thing.
"""
from __future__ import annotations

import ast
import builtins
import io
import re
import symtable
import tokenize
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import BaseMetadataProvider

NOT_AN_IMPORT = object()
"""What ``Bindings.meaning`` answers for a name bound to something other than one import (a parameter, an
assignment, two different imports)."""

_SCOPE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp,
                ast.DictComp, ast.GeneratorExp)
_SYMTABLE_NAMES = {ast.Lambda: "lambda", ast.ListComp: "listcomp", ast.SetComp: "setcomp", ast.DictComp: "dictcomp",
                   ast.GeneratorExp: "genexpr"}


@dataclass(eq=False)
class _Scope:
    table: symtable.SymbolTable | None  # None where the symbol table has no match: names go to the parent
    start: tuple[int, int]  # (line, column in characters) where the scope's own code begins
    end: tuple[int, int]
    parent: _Scope | None
    is_function: bool
    children: list[_Scope] = field(default_factory=list)
    # name -> where in the scope's own code it is bound, and to what: an import's dotted name, or NOT_AN_IMPORT
    bindings: dict[str, list[tuple[tuple[int, int], object]]] = field(default_factory=dict)

    def bind(self, name: str, where: tuple[int, int], meaning: object) -> None:
        self.bindings.setdefault(name, []).append((where, meaning))

    def innermost(self, where: tuple[int, int]) -> _Scope:
        for child in self.children:
            if child.start <= where < child.end:
                return child.innermost(where)
        return self


class Bindings:
    """The scopes and imports of one module's source, built on the first question."""

    def __init__(self, code: str, lines: list[tuple[int, int]] | None = None):
        self._code = code
        self._lines = lines  # a cut file's lines -> this code's (porter.skeleton): questions come in its lines
        self._module: _Scope | None = None
        self._broken = False
        self._skips: list[tuple[int, int]] | None = None

    def meaning(self, name: str, line: int, column: int):
        """What the name ``name`` used at ``line``:``column`` (1-based line, 0-based character column) refers to:
        the dotted name of the import it is bound to (``torch.cuda`` for ``gpu`` after ``from torch import cuda
        as gpu``), ``builtins.X`` for a builtin, None for a name the file never binds (read it as written), or
        NOT_AN_IMPORT."""
        module = self._scopes()
        if module is None:
            return None
        if self._lines is not None:
            line = self._lines[line - 1][0]
        where = (line, column)
        scope: _Scope | None = module.innermost(where)
        used_in = scope
        while scope is not None and scope is not module:
            symbol = _lookup(scope.table, name)
            if symbol is None:  # not used in this scope's own code (a comprehension's first iterable)
                scope = scope.parent
                continue
            if symbol.is_global():
                break
            if symbol.is_local():
                return _bound_in(scope, name, symbol, where, scope is used_in)
            # free: bound in an enclosing function, never in a class body around it; used but unbound in a
            # class body: the class's parent is next, as in Python
            free, scope = symbol.is_free(), scope.parent
            while free and scope is not None and scope is not module and not scope.is_function:
                scope = scope.parent
        return _bound_in(module, name, _lookup(module.table, name), where, module is used_in)

    def skipped(self, start: int, end: int) -> bool:
        """Whether lines ``start``..``end`` (of the code the questions come in) lie within one statement that carries
        a ``# porter: skip`` comment (a compound statement: within its header)."""
        if self._skips is None:
            self._skips = skip_ranges(self._text())
        if not self._skips:
            return False
        if self._lines is not None:
            start, end = self._lines[start - 1][0], self._lines[end - 1][1]
        return any(a <= start and end <= b for a, b in self._skips)

    def _text(self) -> str:
        return self._code

    def _scopes(self) -> _Scope | None:
        if self._module is None and not self._broken:
            try:
                tree = ast.parse(self._code)
                table = symtable.symtable(self._code, "<module>", "exec")
            except (SyntaxError, ValueError):  # libcst accepted what this Python rejects: read names as written
                self._broken = True
                return None
            lines = self._code.splitlines()
            self._module = _Scope(table, (0, 0), (len(lines) + 2, 0), None, False)
            _Builder(lines).scan(tree.body, self._module)
        return self._module


def _lookup(table: symtable.SymbolTable | None, name: str) -> symtable.Symbol | None:
    if table is None:
        return None
    try:
        return table.lookup(name)
    except KeyError:
        return None


def _bound_in(scope: _Scope, name: str, symbol: symtable.Symbol | None, where: tuple[int, int], same_scope: bool):
    """What ``name`` means in the scope that binds it. Code in that same scope sees only the bindings above it
    (as libcst's scope analysis has it: ``try: from a import f`` then ``except: from b import f`` is ``a.f``
    inside the ``try``); code in a nested scope runs later and sees them all."""
    bindings = scope.bindings.get(name)
    if not bindings:
        if symbol is None or not (symbol.is_imported() or symbol.is_assigned() or symbol.is_parameter()):
            return f"builtins.{name}" if scope.parent is None and hasattr(builtins, name) else None
        bindings = [((0, 0), NOT_AN_IMPORT)]  # bound in a way not recorded here: not an import
    if same_scope:
        bindings = [b for b in bindings if b[0] < where] or bindings
    meanings = {meaning for _, meaning in bindings}
    return meanings.pop() if len(meanings) == 1 else NOT_AN_IMPORT


class _Builder:
    """Builds the scope tree: each scope's region in the text, its symbol table and the imports in its body."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def at(self, line: int, byte_offset: int) -> tuple[int, int]:
        """ast columns count UTF-8 bytes; libcst's count characters."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        if text.isascii():
            return line, byte_offset
        return line, len(text.encode()[:byte_offset].decode(errors="ignore"))

    def scan(self, nodes, scope: _Scope) -> None:
        """Visit ``nodes`` (in ``scope``'s own code), recording imports and opening nested scopes."""
        tables: dict[tuple[str, int], list[symtable.SymbolTable]] = {}
        if scope.table is not None:
            for child in scope.table.get_children():
                tables.setdefault((child.get_name(), child.get_lineno()), []).append(child)
        stack = list(reversed(nodes))
        while stack:
            node = stack.pop()
            if isinstance(node, _SCOPE_NODES):
                self.open(node, scope, tables)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):  # binds its name here
                    scope.bind(node.name, self.at(node.lineno, node.col_offset), NOT_AN_IMPORT)
                stack.extend(reversed(_evaluated_outside(node)))
                continue
            # nodes without a position (operators, contexts) bind nothing
            where = self.at(node.lineno, node.col_offset) if hasattr(node, "lineno") else (0, 0)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    root = alias.name.split(".")[0]
                    scope.bind(alias.asname or root, where, alias.name if alias.asname else root)
            elif isinstance(node, ast.ImportFrom):
                base = "." * (node.level or 0) + (node.module or "")
                for alias in node.names:
                    if alias.name != "*":
                        joined = f"{base}.{alias.name}" if node.module else base + alias.name
                        scope.bind(alias.asname or alias.name, where, joined)
            elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                self.store(scope, node.id, where)
            elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
                self.store(scope, node.name, where)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                self.store(scope, node.rest, where)
            stack.extend(reversed(list(ast.iter_child_nodes(node))))

    def store(self, scope: _Scope, name: str, where: tuple[int, int]) -> None:
        symbol = _lookup(scope.table, name)
        if symbol is not None and symbol.is_declared_global():  # `global name` in a function: the module's
            while scope.parent is not None:
                scope = scope.parent
        scope.bind(name, where, NOT_AN_IMPORT)

    def open(self, node, parent: _Scope, tables) -> None:
        body_nodes: list[ast.AST]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name, body_nodes = node.name, list(node.body)
            first = node.body[0]
            start = self.at(first.lineno, first.col_offset)
            # decorators come first, but the symbol table counts from the `def` line, as ast does
            key_line = node.lineno
        elif isinstance(node, ast.Lambda):
            name, body_nodes, key_line = "lambda", [node.body], node.lineno
            start = self.at(node.body.lineno, node.body.col_offset)
        else:  # a comprehension: everything but its first iterable runs in its own scope
            name, key_line = _SYMTABLE_NAMES[type(node)], node.lineno
            body_nodes = [*((node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,))]
            for i, gen in enumerate(node.generators):
                body_nodes += [gen.target, *gen.ifs] + ([gen.iter] if i else [])
            start = self.at(node.lineno, node.col_offset)
        candidates = tables.get((name, key_line))
        table = candidates.pop(0) if candidates else None
        scope = _Scope(table, start, self.at(node.end_lineno, node.end_col_offset), parent,
                       is_function=not isinstance(node, ast.ClassDef))
        parent.children.append(scope)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for arg in _parameters(node.args):
                scope.bind(arg.arg, (0, 0), NOT_AN_IMPORT)
        self.scan(body_nodes, scope)


def _parameters(args: ast.arguments) -> list[ast.arg]:
    return [a for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a is not None]


def _evaluated_outside(node) -> list[ast.AST]:
    """The parts of a scope-opening node that run in the enclosing scope: decorators, defaults, annotations,
    bases; a comprehension's first iterable."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        return [*node.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d is not None),
                *(a.annotation for a in _parameters(args) if a.annotation is not None),
                *([node.returns] if node.returns else [])]
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]
    if isinstance(node, ast.Lambda):
        return [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
    return [node.generators[0].iter]


class BindingsProvider(BaseMetadataProvider["Bindings"]):
    """libcst metadata on the Module node only: the module's ``Bindings``, built lazily (no tree walk).

    A tree that is a cut-down file (porter.skeleton) must read names as the whole file binds them: the engine
    passes the whole file's ``Bindings`` as this provider's cache, ``MetadataWrapper(..., cache={BindingsProvider:
    bindings})``; libcst hands a provider its cache entry only when it declares ``gen_cache``."""

    gen_cache = staticmethod(lambda *args, **kwargs: {})  # never called: porter builds no FullRepoManager

    def __init__(self, cache: object = None) -> None:
        super().__init__(cache if cache is not None else _FROM_TREE)

    def _gen_impl(self, module: cst.Module) -> None:
        given = self.cache
        self.set_metadata(module, given if isinstance(given, Bindings) else _LazyBindings(module))


_FROM_TREE = object()  # no Bindings given: read them from the tree's own code


class _LazyBindings(Bindings):
    """Prints the module's code only when a name is first looked up."""

    def __init__(self, module: cst.Module):
        super().__init__("")
        self._source: cst.Module | None = module

    def _text(self) -> str:
        if self._source is not None:
            self._code, self._source = self._source.code, None
        return self._code

    def _scopes(self) -> _Scope | None:
        if self._module is None and not self._broken and self._source is not None:
            self._code, self._source = self._source.code, None
        return super()._scopes()


SKIP_COMMENT = re.compile(r"#\s*porter:\s*skip(?![-\w])")


def skip_ranges(code: str) -> list[tuple[int, int]]:
    """The line ranges a ``# porter: skip`` comment covers in ``code``: the statement it is written on (for a
    compound statement, its header: decorators to the line before its body). Only comments count, never the same
    words inside a string."""
    if "porter:" not in code:
        return []
    try:
        marked = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(code).readline)
                  if tok.type == tokenize.COMMENT and SKIP_COMMENT.match(tok.string)}
        tree = ast.parse(code) if marked else None
    except (SyntaxError, tokenize.TokenError, ValueError):
        return []
    if not marked or tree is None:
        return []
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])
        body = getattr(node, "body", None)
        last = body[0].lineno - 1 if isinstance(body, list) and body and isinstance(body[0], ast.stmt) \
            else node.end_lineno or node.lineno
        spans.append((first, max(first, last)))
    found = set()
    for line in marked:
        around = [span for span in spans if span[0] <= line <= span[1]]
        if around:
            found.add(min(around, key=lambda span: span[1] - span[0]))
        else:  # a comment on a line of its own: it speaks for the statement below it
            below = [span for span in spans if span[0] == line + 1]
            if below:
                found.add(min(below, key=lambda span: span[1] - span[0]))
    return sorted(found)
