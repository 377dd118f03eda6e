"""The reference for porter.bindings: names resolved by libcst's own ScopeProvider and QualifiedNameProvider,
the way porter read them before it asked Python's symbol tables. Slow (a Python walk of every node) and kept
only to check the fast resolver against it, name by name, on real code."""
from __future__ import annotations

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider, QualifiedNameProvider, QualifiedNameSource, ScopeProvider

from porter.names import ResolvesNames, _dotted, _root_name


def reference_name(visitor: cst.CSTVisitor, node: cst.CSTNode) -> str | None:
    names = visitor.get_metadata(QualifiedNameProvider, node, set())
    if any(q.source not in (QualifiedNameSource.IMPORT, QualifiedNameSource.BUILTIN) for q in names):
        return None
    names = {q.name for q in names}
    if len(names) == 1:
        return names.pop()
    if names:
        return None
    dotted = _dotted(node)
    if dotted is None:
        return None
    scope = visitor.get_metadata(ScopeProvider, _root_name(node), None)
    if scope is not None and dotted.split(".")[0] in scope:
        return None
    return dotted


class _Both(ResolvesNames, cst.CSTVisitor):
    METADATA_DEPENDENCIES = (*ResolvesNames.METADATA_DEPENDENCIES, QualifiedNameProvider, ScopeProvider)

    def __init__(self):
        super().__init__()
        self.pairs = []

    def _check(self, node):
        if _dotted(node) is not None and isinstance(_root_name(node), cst.Name):
            line = self.get_metadata(PositionProvider, node).start.line
            self.pairs.append((line, cst.Module([]).code_for_node(node), reference_name(self, node),
                               self.qualified_name(node)))

    def visit_Import(self, node):
        return False  # the names an import binds are not uses

    def visit_ImportFrom(self, node):
        return False

    # what rules ask about: attribute chains, called names, decorators (not parameter or keyword names)
    def visit_Attribute(self, node):
        self._check(node)

    def visit_Call(self, node):
        if isinstance(node.func, cst.Name):
            self._check(node.func)

    def visit_Decorator(self, node):
        if isinstance(node.decorator, cst.Name):
            self._check(node.decorator)


def disagreements(code: str) -> list[tuple]:
    """(line, code, libcst's reading, porter's) for every name and attribute chain where the two differ, and
    how many were compared."""
    walker = _Both()
    MetadataWrapper(cst.parse_module(code)).visit(walker)
    return [p for p in walker.pairs if p[2] != p[3] and not _builtin_through_call(p[2], p[3])], len(walker.pairs)


def _builtin_through_call(reference: str | None, ours: str | None) -> bool:
    """libcst names ``super().__init__`` just ``builtins.super`` (an import's chain through a call keeps its
    tail: ``torch.cuda.cudart().x`` is ``torch.cuda.cudart.x``); porter keeps the tail for both."""
    return bool(reference and ours and reference.startswith("builtins.") and ours.startswith(reference + "."))
