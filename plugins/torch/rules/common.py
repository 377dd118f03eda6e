"""What the torch pack's rules share: how rewritten code names porter's runtime, how a rule finds the
references to a name (through the file's imports), which arguments receive a device, and the catalogue entries
that docs/porting-any-project.md's rule table is generated from."""
from __future__ import annotations

import re
from typing import ClassVar

import libcst as cst
from libcst.metadata import PositionProvider

from porter.rules import ANY_TARGET, NOT_A_LITERAL, Match, ProjectRule, Rule, RuleDocs, literal

RUNTIME = "porter.runtime.device"
ALIAS = "porter_device"

REMOVAL = ("When the project reaches devices through a device-neutral layer itself (torch.accelerator, "
           "accelerate, DeepSpeed's get_accelerator()), or when it only ever runs on CUDA.")


def keyword(name: str, value: cst.BaseExpression) -> cst.Arg:
    """``name=value``, written the way PEP 8 writes keyword arguments."""
    return cst.Arg(value, keyword=cst.Name(name), equal=cst.AssignEqual(
        whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))


def runtime_attr(rule: ProjectRule, function: str) -> cst.Attribute:
    """``porter_device.<function>``, with ``import porter.runtime.device as porter_device`` added to the module."""
    return cst.Attribute(rule.require_import(RUNTIME, ALIAS), cst.Name(function))


def runtime_call(rule: ProjectRule, function: str, args=(), keywords: dict | None = None) -> cst.Call:
    """``porter_device.<function>(*args, **keywords)``; ``args`` are expressions or ready ``cst.Arg``s."""
    arguments = [a.with_changes(comma=cst.MaybeSentinel.DEFAULT) if isinstance(a, cst.Arg) else cst.Arg(a)
                 for a in args]
    arguments += [keyword(name, value) for name, value in (keywords or {}).items()]
    return cst.Call(func=runtime_attr(rule, function), args=arguments)


def is_runtime_call(rule: ProjectRule, node: cst.CSTNode) -> bool:
    """Whether ``node`` already calls porter's runtime (what a rule wrote: it never rewrites that again)."""
    return isinstance(node, cst.Call) and (rule.qualified_name(node.func) or "").startswith(RUNTIME + ".")


def record_span(rule: ProjectRule, first: cst.CSTNode, last: cst.CSTNode, message: str) -> None:
    """Record a match from the start of ``first`` to the end of ``last`` (two nodes of the original tree): a rule
    that rewrites a call but not the object it is called on (``x.cuda()``) claims only ``.cuda()``, so a rule that
    rewrites the object does not meet it."""
    start = rule.get_metadata(PositionProvider, first).start
    end = rule.get_metadata(PositionProvider, last).end
    rule.matches.append(Match(rule.rule_id, rule.path, start.line, end.line, message, start.column, end.column))


# -- references: a name or attribute chain in an expression, resolved through the file's imports -------------


class References(ProjectRule):
    """Base: every *reference* to one of ``NAMES`` (a qualified name: ``torch.cuda.synchronize``, however the file
    imported it) becomes what ``replace`` returns, by default ``porter_device.<NAMES[name]>``. A call keeps its
    arguments (``torch.cuda.synchronize(d)`` -> ``porter_device.synchronize(d)``); a reference that is not called
    (``sync = torch.cuda.synchronize``) is rewritten too, except the names in ``CALLS_ONLY`` (classes, where the
    runtime has a factory function: ``isinstance(s, torch.cuda.Stream)`` must keep the class).

    Names that only look like a reference are not: an attribute (``timer.synchronize``), a keyword argument's
    name, anything an import statement binds; a local variable or parameter of the same name resolves to nothing.
    """

    NAMES: ClassVar[dict[str, str]] = {}
    CALLS_ONLY: ClassVar[frozenset[str]] = frozenset()
    CATALOGUE: ClassVar[tuple[tuple[str, str], ...]] = ()

    @classmethod
    def matched_names(cls):
        return cls.NAMES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._not_references: set[cst.CSTNode] = set()
        self._called: set[cst.CSTNode] = set()

    def visit_Import(self, node):
        return False

    def visit_ImportFrom(self, node):
        return False

    def visit_Attribute(self, node):
        self._not_references.add(node.attr)

    def visit_Arg(self, node):
        if node.keyword is not None:
            self._not_references.add(node.keyword)

    def visit_Call(self, node):
        self._called.add(node.func)

    def leave_Attribute(self, original_node, updated_node):
        return self._reference(original_node, updated_node)

    def leave_Name(self, original_node, updated_node):
        if original_node in self._not_references:
            return updated_node
        return self._reference(original_node, updated_node)

    def _reference(self, original_node, updated_node):
        name = self.qualified_name(original_node)
        if name not in self.NAMES or (name in self.CALLS_ONLY and original_node not in self._called):
            return updated_node
        replacement, message = self.replace(original_node, name)
        if replacement is None:
            return updated_node
        self.record(original_node, message)
        return replacement

    def replace(self, node: cst.CSTNode, name: str) -> tuple[cst.BaseExpression | None, str]:
        function = self.NAMES[name]
        return runtime_attr(self, function), f"{name} -> porter_device.{function}"


def cuda_names(table: dict[str, str], *, modules: tuple[str, ...] = ("torch.cuda",)) -> dict[str, str]:
    """``{"synchronize": "synchronize"}`` as qualified names under each of ``modules``."""
    return {f"{module}.{name}": function for module in modules for name, function in table.items()}


def docs(why: str, how: str, upstream: str = "", removal: str = REMOVAL) -> RuleDocs:
    return RuleDocs(why=why, how=how, upstream=upstream or TRANSFER_TO_NPU, removal=removal)


TRANSFER_TO_NPU = ("torch_npu.contrib.transfer_to_npu patches the same API at import time, in every process, "
                   "and cannot be undone; msFmkTransplt rewrites it in a copy of the project.")


# -- device strings and where a device goes ----------------------------------------------------------------

DEVICE_STRING = re.compile(r"cuda(:\d+)?")
DEVICE_KEYWORDS = frozenset({"device", "map_location", "device_id", "output_device", "pin_memory_device",
                             "device_type"})
# names that hold a device, for assignments, defaults and dict keys: `device`, `self.device`, `train_device`...
DEVICE_NAMES = frozenset({"device", "dev", "device_type", "device_name", "map_location", "default_device"})

# calls whose device argument is the amp rules' to rewrite (they drop it: the runtime knows the device)
AMP_CALLS = frozenset({"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast",
                       "torch.amp.GradScaler", "torch.amp.grad_scaler.GradScaler", "torch.GradScaler",
                       "torch.cuda.amp.autocast", "torch.cuda.amp.GradScaler"})
# positional device arguments of torch functions: qualified name -> index
POSITIONAL_DEVICE = {"torch.load": 1, "torch.set_default_device": 0, "torch.Generator": 0,
                     "torch.device": 0}
DDP = frozenset({"torch.nn.parallel.DistributedDataParallel",
                 "torch.nn.parallel.distributed.DistributedDataParallel"})
FSDP = frozenset({"torch.distributed.fsdp.FullyShardedDataParallel",
                  "torch.distributed.fsdp.fully_sharded_data_parallel.FullyShardedDataParallel"})
# a receiver of `.cuda()` / `.is_cuda` that is a module, not a tensor (torch.cuda itself, numba.cuda, cupy.cuda)
MODULE_ROOTS = frozenset({"torch", "numba", "cupy", "pycuda", "jax", "tensorflow", "paddle", "mxnet", "cv2"})


def is_device_name(name: str) -> bool:
    """Whether an identifier names a device: ``device``, ``dev``, ``map_location``, ``*_device``..."""
    lowered = name.lower()
    return lowered in DEVICE_NAMES or lowered.endswith("_device")


def target_name(node: cst.CSTNode) -> str | None:
    """The last identifier of an assignment target or key: ``self.device`` -> ``device``."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return node.attr.value
    value = literal(node) if isinstance(node, (cst.SimpleString, cst.ConcatenatedString)) else NOT_A_LITERAL
    return value if isinstance(value, str) else None


def is_device_string(node: cst.CSTNode) -> bool:
    """Whether ``node`` is a string expression that names a CUDA device: ``"cuda"``, ``"cuda:0"``,
    ``f"cuda:{rank}"``, ``"cuda:%d" % rank``, ``"cuda:" + str(rank)``, ``"cuda:{}".format(rank)``."""
    if isinstance(node, (cst.SimpleString, cst.ConcatenatedString)):
        value = literal(node)
        return isinstance(value, str) and DEVICE_STRING.fullmatch(value) is not None
    if isinstance(node, cst.FormattedString):
        parts = node.parts
        return len(parts) == 2 and isinstance(parts[0], cst.FormattedStringText) and parts[0].value == "cuda:" \
            and isinstance(parts[1], cst.FormattedStringExpression)
    if isinstance(node, cst.BinaryOperation):
        left = literal(node.left)
        if isinstance(node.operator, cst.Add):
            return left == "cuda:"
        if isinstance(node.operator, cst.Modulo):
            return isinstance(left, str) and re.fullmatch(r"cuda:%[dis]", left) is not None
        return False
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value == "format":
        return literal(node.func.value) in ("cuda:{}", "cuda:{0}")
    return False


def method_name(call: cst.Call) -> str | None:
    """``to`` for ``x.to(...)`` where ``x`` is not a module (``torch.to`` is no method call)."""
    return call.func.attr.value if isinstance(call.func, cst.Attribute) else None


def is_module(rule: ProjectRule, node: cst.CSTNode) -> bool:
    """Whether ``node`` (the object of ``node.cuda()``) is a module such as torch or numba, not a tensor."""
    if not isinstance(node, (cst.Name, cst.Attribute)):
        return False
    name = rule.qualified_name(node)
    return name is not None and name.split(".")[0] in MODULE_ROOTS


def device_arguments(rule: ProjectRule, call: cst.Call, *, runtime: bool) -> list[cst.BaseExpression]:
    """The argument values of ``call`` that receive a device: ``device=``, ``map_location=`` (a dict's values),
    ``device_id=``, ``output_device=``, ``pin_memory_device=`` and ``device_type=`` of any call (but amp's, whose
    rules drop the argument), the first argument of ``x.to(...)`` and ``x.cuda(...)``, ``torch.load``'s second,
    ``torch.device``'s, ``set_default_device``'s and ``Generator``'s first, each entry of ``device_ids=`` (and
    DistributedDataParallel's second argument); a conditional expression there gives both its branches. With
    ``runtime``, the first argument of porter's own ``as_device``/``device_string``/``set_device`` too."""
    name = rule.qualified_name(call.func) or ""
    if name in AMP_CALLS:
        return []
    if name.startswith(RUNTIME + "."):
        if runtime and name.rsplit(".", 1)[1] in ("as_device", "device_string", "set_device", "device_context"):
            return _expand(call.args[0].value) if call.args and call.args[0].keyword is None else []
        return []
    found: list[cst.BaseExpression] = []
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    for arg in call.args:
        if arg.keyword is None:
            continue
        word = arg.keyword.value
        if word in DEVICE_KEYWORDS:
            value = arg.value
            if word == "map_location" and isinstance(value, cst.Dict):
                found.extend(v for e in value.elements if isinstance(e, cst.DictElement) for v in _expand(e.value))
            else:
                found.extend(_expand(value))
        elif word == "device_ids":
            found.extend(_entries(arg.value))
    index = None
    method = method_name(call)
    if method in ("to", "cuda") and not is_module(rule, call.func.value):  # type: ignore[attr-defined]
        index = 0
    elif name in POSITIONAL_DEVICE and not (name == "torch.device" and len(positional) > 1):
        index = POSITIONAL_DEVICE[name]
    if index is not None and len(positional) > index:
        found.extend(_expand(positional[index].value))
    if name in DDP and len(positional) > 1:
        found.extend(_entries(positional[1].value))
    return found


def _expand(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(node, cst.IfExp):
        return [*_expand(node.body), *_expand(node.orelse)]
    return [node]


def _entries(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(node, (cst.List, cst.Tuple)):
        return [e.value for e in node.elements if isinstance(e, cst.Element)]
    return []


def conjuncts(test: cst.BaseExpression) -> list[cst.BaseExpression]:
    """``a and b and c`` -> [a, b, c] (parentheses that hold an ``or`` stop it)."""
    if isinstance(test, cst.BooleanOperation) and isinstance(test.operator, cst.And) and not test.lpar:
        return conjuncts(test.left) + conjuncts(test.right)
    return [test]


def any_code_rule(**fields) -> Rule:
    """A rule of this pack: for any code (every file holding its triggers), never required, in the device
    category; ``fields`` are the rest of porter.rules.Rule's."""
    return Rule(target=ANY_TARGET, files=(), required=False, category="device", **fields)
