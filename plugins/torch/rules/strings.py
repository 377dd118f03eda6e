"""device: the string "cuda" where it names a device, and the questions "is this CUDA?" asked of a device."""
from __future__ import annotations

import libcst as cst

from porter.rules import ProjectRule, literal

from .common import (
    any_code_rule,
    device_arguments,
    docs,
    is_device_name,
    is_device_string,
    is_runtime_call,
    runtime_call,
    target_name,
)


def _branches(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(node, cst.IfExp):
        return [*_branches(node.body), *_branches(node.orelse)]
    return [node]


class DeviceStrings(ProjectRule):
    """A device string (``"cuda"``, ``"cuda:0"``, ``f"cuda:{rank}"``...) where a device goes ->
    ``porter_device.device_string(<it>)``, still a string; ``torch.device(<it>)`` -> ``porter_device.as_device(<it>)``,
    still a torch.device.

    Where a device goes: a device argument of a call (see ``common.device_arguments``), a parameter's default
    (``def f(device="cuda")``), a value assigned to a device name (``device``, ``self.device``, ``*_device``...),
    a dict entry under such a key, an argparse option's default whose flag names a device (``--device``), and
    either side of ``<device> if ... else "cpu"``. A "cuda" anywhere else (a message, a dict key, a comparison) is
    not a device and is left alone."""

    CATALOGUE = (('torch.device("cuda"), torch.device("cuda:0"), torch.device("cuda", i)',
                  'porter_device.as_device("cuda"), as_device("cuda:0"), as_device("cuda", i)'),
                 ('"cuda", "cuda:0", f"cuda:{i}" as a device: device=, map_location=, .to(), a default parameter, '
                  'a device variable, --device\'s default, "cuda" if ... else "cpu"',
                  'porter_device.device_string("cuda") (a str)'))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._strings: set[cst.CSTNode] = set()
        self._devices: set[cst.CSTNode] = set()  # torch.device(...) calls to replace whole

    def _mark(self, node: cst.BaseExpression | None) -> None:
        if node is None:
            return
        for branch in _branches(node):
            if is_device_string(branch):
                self._strings.add(branch)

    def visit_Call(self, node):
        name = self.qualified_name(node.func)
        positional = [arg for arg in node.args if arg.keyword is None]
        if name == "torch.device" and positional and is_device_string(positional[0].value) and \
                all(arg.keyword is None or arg.keyword.value == "index" for arg in node.args) and \
                not any(arg.star for arg in node.args):
            self._devices.add(node)
            return
        for value in device_arguments(self, node, runtime=False):
            self._mark(value)
        func = node.func
        last = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        if last == "add_argument" and any(isinstance(flag := literal(arg.value), str) and "device" in flag
                                          for arg in positional):
            for arg in node.args:
                if arg.keyword is not None and arg.keyword.value == "default":
                    self._mark(arg.value)

    def visit_Param(self, node):
        if node.default is not None and is_device_name(node.name.value):
            self._mark(node.default)

    def visit_Assign(self, node):
        if any(is_device_name(target_name(t.target) or "") for t in node.targets):
            self._mark(node.value)

    def visit_AnnAssign(self, node):
        if is_device_name(target_name(node.target) or ""):
            self._mark(node.value)

    def visit_DictElement(self, node):
        if is_device_name(target_name(node.key) or "") and isinstance(node.key, (cst.SimpleString,
                                                                                  cst.ConcatenatedString)):
            self._mark(node.value)

    def visit_IfExp(self, node):
        if literal(node.orelse) == "cpu":
            self._mark(node.body)
        elif literal(node.body) == "cpu":
            self._mark(node.orelse)

    def _wrap(self, original_node, updated_node):
        if original_node not in self._strings:
            return updated_node
        self.record(original_node, "device string -> porter_device.device_string()")
        inner = updated_node.with_changes(lpar=[], rpar=[]) if hasattr(updated_node, "lpar") else updated_node
        return runtime_call(self, "device_string", [inner])

    leave_SimpleString = leave_ConcatenatedString = leave_FormattedString = leave_BinaryOperation = _wrap

    def leave_Call(self, original_node, updated_node):
        if original_node in self._devices:
            self.record(original_node, "torch.device(<cuda>) -> porter_device.as_device(<cuda>)")
            return runtime_call(self, "as_device", updated_node.args).with_changes(lpar=updated_node.lpar,
                                                                                   rpar=updated_node.rpar)
        return self._wrap(original_node, updated_node)


class TypeCheck(ProjectRule):
    """``<device>.type == "cuda"`` / ``<device> == "cuda"`` -> ``porter_device.on_accelerator(<device>...)``
    (``!=``: ``not ...``)."""

    CATALOGUE = (('x.device.type == "cuda", device == "cuda"', "porter_device.on_accelerator(x.device.type)"),
                 ('... != "cuda"', "not porter_device.on_accelerator(...)"))

    def leave_Comparison(self, original_node, updated_node):
        if len(updated_node.comparisons) != 1:
            return updated_node
        target = updated_node.comparisons[0]
        if not isinstance(target.operator, (cst.Equal, cst.NotEqual)):
            return updated_node
        left, right = updated_node.left, target.comparator
        if literal(right) == "cuda":
            side = left
        elif literal(left) == "cuda":
            side = right
        else:
            return updated_node
        if not (isinstance(side, cst.Attribute) and (side.attr.value == "type" or is_device_name(side.attr.value))
                or isinstance(side, cst.Name) and is_device_name(side.value)) or is_runtime_call(self, side):
            return updated_node
        self.record(original_node, '== "cuda" -> porter_device.on_accelerator()')
        check: cst.BaseExpression = runtime_call(self, "on_accelerator", [side])
        if isinstance(target.operator, cst.NotEqual):
            check = cst.UnaryOperation(cst.Not(), check)
        return check.with_changes(lpar=updated_node.lpar, rpar=updated_node.rpar)


STRINGS = any_code_rule(
    id="torch.device.strings",
    summary='"cuda" where it names a device becomes the selected device', rewrite=DeviceStrings, triggers=("cuda",),
    after=("torch.device.current-device",),  # torch.device("cuda", torch.cuda.current_device())
    docs=docs(why='"cuda" / "cuda:0" / torch.device("cuda") given as a device send tensors, modules, checkpoints '
                  "(map_location) and generators to CUDA: an error on a CPU machine and the wrong device on an NPU.",
              how='Where the string is a device (a device argument: device=, map_location= and its dict\'s values, '
                  "device_id=, output_device=, pin_memory_device=, device_type=, .to()'s first argument, torch.load's "
                  "second, set_default_device's and Generator's first; a parameter's default; a value assigned to a "
                  "device name such as device, self.device or *_device; a dict entry under such a key; an argparse "
                  "--device default; either side of `... if ... else \"cpu\"`) it becomes "
                  'porter_device.device_string("cuda"): "npu", "cuda" or "cpu", keeping the index and still a str, so '
                  'string code around it keeps working; torch.device("cuda"[, i]) becomes '
                  'porter_device.as_device("cuda"[, i]), still a torch.device. f"cuda:{i}", "cuda:%d" % i, '
                  '"cuda:" + str(i) and "cuda:{}".format(i) count as device strings. "cuda" in a message, as a dict '
                  "key or in a comparison is not a device and is left alone (comparisons are torch.device.type-check's)."
                  " The amp calls' device_type is theirs. The call runs where the string was evaluated: a default or a "
                  "module constant selects the device when its module is imported (set PORTER_DEVICE before that); a "
                  "device the user passes at run time (--device cuda) is not ported: pass npu, cuda or cpu."))

TYPE_CHECK = any_code_rule(
    id="torch.device.type-check",
    summary='x.device.type == "cuda" asks whether x is on the selected accelerator', rewrite=TypeCheck,
    triggers=("cuda",),
    docs=docs(why='Code asks x.device.type == "cuda" (or args.device == "cuda") to mean "on the accelerator": False '
                  "on an NPU, so ported code takes its CPU path there (no amp, no pinned memory, no synchronize).",
              how='porter_device.on_accelerator(<the device or its type>) (with != "cuda": not ...): True for the '
                  'selected accelerator\'s type (and a leftover "cuda"), False for "cpu" and always on the CPU. Only '
                  'an equality with exactly "cuda" of a .type or a device name (device, args.device, *_device); '
                  'a device string with an index ("cuda:1" == "cuda" was False) then counts as the accelerator.'))

RULES = [STRINGS, TYPE_CHECK]
