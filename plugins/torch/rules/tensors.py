"""device: tensors and modules sent to CUDA (``.cuda()``, ``.is_cuda``, ``torch.cuda.FloatTensor``, pinned
memory) go to the selected device instead."""
from __future__ import annotations

import re

import libcst as cst

from porter.rules import ProjectRule, literal

from .common import References, any_code_rule, docs, is_module, is_runtime_call, keyword, record_span, runtime_call


class DotCuda(ProjectRule):
    """``x.cuda()`` -> ``x.to(porter_device.current_device())``; ``x.cuda(i)`` / ``x.cuda(device=i)`` ->
    ``x.to(porter_device.as_device(i))``; ``non_blocking`` and ``memory_format`` are kept (``Tensor.to`` and
    ``Module.to`` take them)."""

    CATALOGUE = (("x.cuda()", "x.to(porter_device.current_device())"),
                 ("x.cuda(i)", "x.to(porter_device.as_device(i))"))

    def leave_Call(self, original_node, updated_node):
        func = updated_node.func
        if not (isinstance(func, cst.Attribute) and func.attr.value == "cuda") or is_module(self, original_node.func.value):
            return updated_node
        args = list(updated_node.args)
        if any(arg.star for arg in args):
            return updated_node
        positional = [arg for arg in args if arg.keyword is None]
        named = {arg.keyword.value: arg for arg in args if arg.keyword is not None}
        if len(positional) > 2 or set(named) - {"device", "non_blocking", "memory_format"} or \
                (positional and "device" in named) or (len(positional) > 1 and "non_blocking" in named):
            return updated_node  # not Tensor.cuda's / Module.cuda's signature: some other object's method
        device = positional[0].value if positional else named["device"].value if "device" in named else None
        if device is None or literal(device) is None:
            target = runtime_call(self, "current_device")
        else:
            target = runtime_call(self, "as_device", [device])
        new_args = [cst.Arg(target)]
        if len(positional) > 1:
            new_args.append(keyword("non_blocking", positional[1].value))
        new_args += [arg.with_changes(comma=cst.MaybeSentinel.DEFAULT) for name, arg in named.items()
                     if name != "device"]
        record_span(self, original_node.func.attr, original_node, ".cuda() -> .to(the selected device)")
        return updated_node.with_changes(func=func.with_changes(attr=cst.Name("to")), args=new_args)


class IsCuda(ProjectRule):
    """``x.is_cuda`` -> ``porter_device.on_accelerator(x)``."""

    CATALOGUE = (("x.is_cuda", "porter_device.on_accelerator(x)"),)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._targets: set[cst.CSTNode] = set()

    def visit_AssignTarget(self, node):
        self._targets.add(node.target)

    def leave_Attribute(self, original_node, updated_node):
        if updated_node.attr.value != "is_cuda" or original_node in self._targets \
                or is_module(self, original_node.value):
            return updated_node
        record_span(self, original_node.attr, original_node, ".is_cuda -> porter_device.on_accelerator()")
        return runtime_call(self, "on_accelerator", [updated_node.value]).with_changes(lpar=updated_node.lpar,
                                                                          rpar=updated_node.rpar)


TYPED_TENSORS = ("FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "LongTensor", "IntTensor",
                 "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor")
_TYPE_NAME = re.compile(r"torch\.cuda\.(" + "|".join(TYPED_TENSORS) + ")")


class TypedTensor(References):
    """``torch.cuda.FloatTensor`` (called, given to ``.type()``, compared, chosen as a "dtype") ->
    ``porter_device.tensor_type("FloatTensor")``; the string ``"torch.cuda.FloatTensor"`` given to ``x.type()`` or
    ``torch.set_default_tensor_type()`` too."""

    NAMES = {f"torch.cuda.{name}": name for name in TYPED_TENSORS}
    CATALOGUE = (("torch.cuda.FloatTensor (and the other typed tensors), called or as a type",
                  'porter_device.tensor_type("FloatTensor")'),
                 ('x.type("torch.cuda.FloatTensor")', 'x.type(porter_device.tensor_type("FloatTensor"))'))

    def replace(self, node, name):
        kind = self.NAMES[name]
        return runtime_call(self, "tensor_type", [cst.SimpleString(f'"{kind}"')]), \
            f'{name} -> porter_device.tensor_type("{kind}")'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._type_names: set[cst.CSTNode] = set()

    def visit_Call(self, node):
        super().visit_Call(node)
        func = node.func
        if (isinstance(func, cst.Attribute) and func.attr.value == "type" and not is_module(self, func.value)) or \
                self.qualified_name(func) == "torch.set_default_tensor_type":
            if node.args and node.args[0].keyword is None:
                self._type_names.add(node.args[0].value)

    def leave_SimpleString(self, original_node, updated_node):
        value = literal(original_node)
        found = _TYPE_NAME.fullmatch(value) if original_node in self._type_names and isinstance(value, str) else None
        if found is None:
            return updated_node
        self.record(original_node, f'"{value}" -> porter_device.tensor_type("{found.group(1)}")')
        return runtime_call(self, "tensor_type", [cst.SimpleString(f'"{found.group(1)}"')])


class PinMemory(ProjectRule):
    """``pin_memory=True`` -> ``pin_memory=porter_device.pin_memory()``; ``x.pin_memory()`` ->
    ``porter_device.pinned(x)``."""

    CATALOGUE = (("pin_memory=True", "pin_memory=porter_device.pin_memory()"),
                 ("x.pin_memory()", "porter_device.pinned(x)"))

    def leave_Arg(self, original_node, updated_node):
        if updated_node.keyword is not None and updated_node.keyword.value == "pin_memory" \
                and literal(updated_node.value) is True:
            self.record(original_node.value, "pin_memory=True -> pin_memory=porter_device.pin_memory()")
            return updated_node.with_changes(value=runtime_call(self, "pin_memory"))
        return updated_node

    def leave_Call(self, original_node, updated_node):
        func = updated_node.func
        if isinstance(func, cst.Attribute) and func.attr.value == "pin_memory" and not updated_node.args \
                and not is_module(self, original_node.func.value) and not is_runtime_call(self, original_node):
            record_span(self, original_node.func.attr, original_node, "x.pin_memory() -> porter_device.pinned(x)")
            return runtime_call(self, "pinned", [func.value]).with_changes(lpar=updated_node.lpar,
                                                                          rpar=updated_node.rpar)
        return updated_node


DOT_CUDA = any_code_rule(
    id="torch.device.dot-cuda",
    summary=".cuda() moves tensors and modules to the selected device", rewrite=DotCuda, triggers=("cuda",),
    after=("torch.device.current-device", "torch.device.strings", "torch.device.typed-tensor",
           "torch.device.pin-memory"),  # their sites can sit inside x.cuda(...)
    docs=docs(why="x.cuda() raises 'Torch not compiled with CUDA enabled' on a CPU machine and moves nothing to an "
                  "NPU: it is the first line every CUDA script fails on.",
              how="x.cuda() becomes x.to(porter_device.current_device()), x.cuda(i) x.to(porter_device.as_device(i)) "
                  "(npu:i, cuda:i, or the CPU), keeping non_blocking and memory_format. Left alone: .cuda reached "
                  "on a module (torch.cuda, numba.cuda), and calls that do not fit Tensor.cuda's signature. An object "
                  "of the project's own with a .cuda() method and no .to() needs one (or `# porter: skip`)."))

IS_CUDA = any_code_rule(
    id="torch.device.is-cuda",
    summary=".is_cuda asks whether a tensor is on the selected accelerator", rewrite=IsCuda, triggers=("is_cuda",),
    docs=docs(why="x.is_cuda is False for every tensor on an NPU, so code that branches on it (copies, pinned "
                  "memory, kernels) takes its CPU path there.",
              how="porter_device.on_accelerator(x): whether x is on the selected accelerator (the NPU's or CUDA's); "
                  "always False on the CPU, as x.is_cuda was there."))

TYPED_TENSOR = any_code_rule(
    id="torch.device.typed-tensor",
    summary="torch.cuda.FloatTensor and the other typed tensors are the selected device's", rewrite=TypedTensor,
    requires=("cuda",),  # torch.cuda.FloatTensor, or the "torch.cuda.FloatTensor" string
    docs=docs(why="torch.cuda.FloatTensor(...) raises without CUDA; old code also picks it as a 'dtype' (dtype = "
                  "torch.cuda.FloatTensor if cuda else torch.FloatTensor; x.type(dtype)).",
              how="porter_device.tensor_type('FloatTensor'), the device's own class: torch.cuda.FloatTensor on "
                  "CUDA, torch.npu.FloatTensor on an NPU (DoubleTensor: its FloatTensor, as transfer_to_npu maps it), "
                  "torch.FloatTensor on the CPU. Called it builds the tensor as the legacy constructor did (sizes or "
                  "data); it also serves x.type(), isinstance and set_default_tensor_type, as does the string "
                  "'torch.cuda.FloatTensor' given to them."))

PIN_MEMORY = any_code_rule(
    id="torch.device.pin-memory",
    summary="Pin host memory only where the device uses it", rewrite=PinMemory, triggers=("pin_memory",),
    docs=docs(why="DataLoader(pin_memory=True) warns on every loader of a CPU-only torch and x.pin_memory() raises "
                  "there ('Cannot access accelerator device when none is available').",
              how="pin_memory=True becomes pin_memory=porter_device.pin_memory() (on for npu and cuda, off for the "
                  "CPU); x.pin_memory() becomes porter_device.pinned(x) (x itself where nothing pins). A "
                  "pin_memory flag given as a variable is the project's own choice and is left alone."))

RULES = [DOT_CUDA, IS_CUDA, TYPED_TENSOR, PIN_MEMORY]
