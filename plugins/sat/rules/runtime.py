"""How rewritten SAT code names porter's runtime: one import each, under fixed aliases."""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

DEVICE = ("porter.runtime.device", "porter_device")
OPS = ("porter.runtime.ops", "porter_ops")
OPTIONAL = ("porter.runtime.optional", "porter_optional")
QUANT = ("porter.runtime.quant", "porter_quant")


def keyword(name: str, value: cst.BaseExpression) -> cst.Arg:
    """``name=value``, written the way PEP 8 writes keyword arguments."""
    return cst.Arg(value, keyword=cst.Name(name), equal=cst.AssignEqual(
        whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))


def call(transformer, runtime: tuple[str, str], function: str, args=(), keywords: dict | None = None) -> cst.Call:
    """``alias.function(*args, **keywords)``, with the runtime import added to the module."""
    alias = transformer.require_import(*runtime)
    arguments = [a if isinstance(a, cst.Arg) else cst.Arg(a) for a in args]
    arguments += [keyword(name, value) for name, value in (keywords or {}).items()]
    return cst.Call(func=cst.Attribute(alias, cst.Name(function)), args=arguments)


def calls_runtime(transformer, node: cst.CSTNode, *modules: str) -> bool:
    """Whether ``node`` contains a call into one of porter's runtime modules (however it was imported): how a rule
    that rewrites a whole body sees that a file is ported already."""
    for found in m.findall(node, m.Call(func=m.Attribute())):
        name = transformer.qualified_name(cst.ensure_type(found, cst.Call).func)
        if name is not None and name.rsplit(".", 1)[0] in modules:
            return True
    return False
