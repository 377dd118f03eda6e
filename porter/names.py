"""What code means, for matching it: names resolved through a file's imports, expressions compared as Python
parses them, constants by value. Rules (porter.rules) and the CUDA-site scan (porter.scan) both read code this
way, so an alias, a reformatted line or a renamed local reads the same as the original spelling."""
from __future__ import annotations

import ast
import textwrap
from typing import ClassVar

import libcst as cst
from libcst.metadata import PositionProvider

from .bindings import NOT_AN_IMPORT, BindingsProvider


class ResolvesNames(cst.MetadataDependent):
    """Mixin for libcst visitors and transformers: ``self.qualified_name(node)``, ``self.refers_to(node, ...)``.
    Its metadata (positions, bindings) is inherited by the classes that mix it in."""

    METADATA_DEPENDENCIES: ClassVar = (PositionProvider, BindingsProvider)

    def qualified_name(self, node: cst.CSTNode) -> str | None:
        """The dotted name ``node`` refers to through the file's imports, or None for anything else.

        A root name the file never binds (a star import, a snippet) is taken as written: that is the only
        reading Python could give it; a builtin reads as ``builtins.name``. A name bound to something that is not an import (a parameter, a local)
        resolves to nothing, so ``torch`` as a function's parameter is not the torch module; nor does a name
        bound to two different imports.
        """
        dotted = _dotted(node)
        if dotted is None:
            return None
        root = _root_name(node)
        try:
            where = self.get_metadata(PositionProvider, root).start
            bindings = self.get_metadata(BindingsProvider, self._module_of())
        except KeyError:  # a node the rule built itself: no position, read as written
            return dotted
        head, _, tail = dotted.partition(".")
        meaning = bindings.meaning(head, where.line, where.column)
        if meaning is NOT_AN_IMPORT:
            return None
        return (meaning or head) + ("." + tail if tail else "")

    def skipped(self, node: cst.CSTNode) -> bool:
        """Whether ``node`` lies within a statement its author marked ``# porter: skip``."""
        try:
            where = self.get_metadata(PositionProvider, node)
            bindings = self.get_metadata(BindingsProvider, self._module_of())
        except KeyError:  # a node the rule built itself
            return False
        return bindings.skipped(where.start.line, where.end.line)

    def refers_to(self, node: cst.CSTNode, *names: str) -> bool:
        return self.qualified_name(node) in names

    def _module_of(self) -> cst.Module:
        module = next(iter(self.metadata[BindingsProvider]))
        assert isinstance(module, cst.Module)  # BindingsProvider answers for the module node only
        return module


def _dotted(node: cst.CSTNode) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    if isinstance(node, cst.Call):  # torch.cuda.cudart().x reads as torch.cuda.cudart.x
        return _dotted(node.func)
    return None


def _root_name(node: cst.CSTNode) -> cst.CSTNode:
    while isinstance(node, (cst.Attribute, cst.Call)):
        node = node.value if isinstance(node, cst.Attribute) else node.func
    return node


def _python_ast(node: cst.CSTNode) -> str:
    text = cst.Module([]).code_for_node(node)
    try:
        return ast.dump(ast.parse(text.strip(), mode="eval"))
    except SyntaxError:
        return ast.dump(ast.parse(textwrap.dedent(text)))


def same(a: cst.CSTNode, b: cst.CSTNode) -> bool:
    """Whether two nodes are the same code as Python parses it: layout, comments and parentheses aside."""
    return _python_ast(a) == _python_ast(b)


NOT_A_LITERAL = object()


def literal(node: cst.CSTNode) -> object:
    """The value of a constant expression (``'nccl'``, ``0.0``, ``-1``, ``True``); NOT_A_LITERAL otherwise."""
    try:
        return ast.literal_eval(cst.Module([]).code_for_node(node).strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return NOT_A_LITERAL
