"""What code means, for matching it: names resolved through a file's imports, expressions compared as Python
parses them, constants by value. Rules (porter.rules) and the CUDA-site scan (porter.scan) both read code this
way, so an alias, a reformatted line or a renamed local reads the same as the original spelling."""
from __future__ import annotations

import ast
import textwrap
from typing import ClassVar

import libcst as cst
from libcst.metadata import QualifiedNameProvider, QualifiedNameSource, ScopeProvider


class ResolvesNames:
    """Mixin for libcst visitors and transformers: ``self.qualified_name(node)``, ``self.refers_to(node, ...)``."""

    METADATA_DEPENDENCIES: ClassVar = (QualifiedNameProvider, ScopeProvider)

    def qualified_name(self, node: cst.CSTNode) -> str | None:
        """The dotted name ``node`` refers to through the file's imports, or None for anything else.

        A root name the file never binds (a star import, a snippet) is taken as written: that is the only
        reading Python could give it. A name bound to something that is not an import (a parameter, a local)
        resolves to itself in its scope, so ``torch`` as a function's parameter is not the torch module.
        """
        try:
            names = self.get_metadata(QualifiedNameProvider, node, set())
        except KeyError:  # a node the rule built itself: it has no metadata
            names = set()
        if any(q.source not in (QualifiedNameSource.IMPORT, QualifiedNameSource.BUILTIN) for q in names):
            return None  # bound in this file (a module-level assignment, a local): not what an import names
        names = {q.name for q in names}
        if len(names) == 1:
            return names.pop()
        if names:
            return None  # bound differently on different paths: not one meaning
        dotted = _dotted(node)
        if dotted is None:
            return None
        root = _root_name(node)
        try:
            scope = self.get_metadata(ScopeProvider, root, None)
        except KeyError:
            scope = None
        if scope is not None and dotted.split(".")[0] in scope:
            return None  # bound, but not to an import QualifiedNameProvider could follow
        return dotted

    def refers_to(self, node: cst.CSTNode, *names: str) -> bool:
        return self.qualified_name(node) in names


def _dotted(node: cst.CSTNode) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    if isinstance(node, cst.Call):  # torch.cuda.cudart().x reads as torch.cuda.cudart.x, as libcst names it
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
