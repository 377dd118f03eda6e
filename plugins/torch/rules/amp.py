"""device: mixed precision (autocast, GradScaler) on the selected device."""
from __future__ import annotations

from typing import ClassVar

import libcst as cst

from porter.rules import literal

from .common import References, any_code_rule, docs, keyword, runtime_attr


class DeviceTypeCalls(References):
    """Base: ``NAMES`` (torch.cuda.amp's, device implied) become the runtime function by reference; calls of
    ``GENERIC`` (torch's device-neutral spelling) whose device argument is a CUDA string become a call of the
    runtime function without it, the other positional arguments passed by name (``PARAMETERS``, in the generic
    function's order after the device)."""

    GENERIC: ClassVar[frozenset[str]] = frozenset()
    DEVICE_KEYWORD: ClassVar[str] = "device_type"
    DEFAULT_DEVICE: ClassVar[str | None] = None  # the generic function's device when none is given
    PARAMETERS: ClassVar[tuple[str, ...]] = ()
    FUNCTION: ClassVar[str] = ""

    def leave_Call(self, original_node, updated_node):
        if self.qualified_name(original_node.func) not in self.GENERIC:
            return updated_node
        args = list(updated_node.args)
        if any(arg.star for arg in args):
            return updated_node
        positional = [arg for arg in args if arg.keyword is None]
        named = [arg for arg in args if arg.keyword is not None]
        device = [arg for arg in named if arg.keyword.value == self.DEVICE_KEYWORD]
        if positional:
            if device:
                return updated_node
            device, positional = positional[:1], positional[1:]
        if device:
            if literal(device[0].value) != "cuda":
                return updated_node  # "cpu", a variable, "cuda:1" (a device type has no index): not ours
        elif self.DEFAULT_DEVICE != "cuda":
            return updated_node
        if len(positional) > len(self.PARAMETERS):
            return updated_node
        new_args = [keyword(self.PARAMETERS[i], arg.value) for i, arg in enumerate(positional)]
        new_args += [arg.with_changes(comma=cst.MaybeSentinel.DEFAULT) for arg in named
                     if arg.keyword.value != self.DEVICE_KEYWORD]
        self.record(original_node, f"{self.qualified_name(original_node.func)}('cuda', ...) -> "
                                   f"porter_device.{self.FUNCTION}(...)")
        return cst.Call(runtime_attr(self, self.FUNCTION), new_args, lpar=updated_node.lpar, rpar=updated_node.rpar)


class Autocast(DeviceTypeCalls):
    NAMES = {"torch.cuda.amp.autocast": "autocast", "torch.cuda.amp.autocast_mode.autocast": "autocast"}
    GENERIC = frozenset({"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast"})
    PARAMETERS = ("dtype", "enabled", "cache_enabled")
    FUNCTION = "autocast"
    CATALOGUE = (("torch.cuda.amp.autocast(...)", "porter_device.autocast(...)"),
                 ('torch.autocast("cuda", ...), torch.autocast(device_type="cuda", ...)',
                  "porter_device.autocast(...)"))


class GradScaler(DeviceTypeCalls):
    NAMES = {"torch.cuda.amp.GradScaler": "grad_scaler", "torch.cuda.amp.grad_scaler.GradScaler": "grad_scaler"}
    CALLS_ONLY = frozenset(NAMES)  # a class: isinstance(s, torch.cuda.amp.GradScaler) keeps it
    GENERIC = frozenset({"torch.amp.GradScaler", "torch.amp.grad_scaler.GradScaler", "torch.GradScaler"})
    DEVICE_KEYWORD = "device"
    DEFAULT_DEVICE = "cuda"
    PARAMETERS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled")
    FUNCTION = "grad_scaler"
    CATALOGUE = (("torch.cuda.amp.GradScaler(...)", "porter_device.grad_scaler(...)"),
                 ('torch.amp.GradScaler("cuda", ...), torch.amp.GradScaler()', "porter_device.grad_scaler(...)"))


AUTOCAST = any_code_rule(
    id="torch.device.autocast",
    summary="autocast on the selected device", rewrite=Autocast, requires=("cuda",),
    after=("torch.device.is-available",),  # torch.autocast("cuda", enabled=torch.cuda.is_available())
    docs=docs(why='torch.cuda.amp.autocast() and torch.autocast("cuda") cast only CUDA ops: on an NPU the model runs '
                  "in float32 (or fails where a CUDA-only dtype path is taken), and torch.cuda.amp warns it is "
                  "deprecated.",
              how='porter_device.autocast(enabled, dtype, cache_enabled), a context manager and decorator: '
                  "torch_npu's amp.autocast on an NPU, torch.autocast('cuda') on CUDA; on the CPU torch's CPU "
                  "autocast only for an explicit dtype (code that asks for mixed precision without one meant the "
                  "GPU's float16; the CPU computes float32). A device_type other than the literal 'cuda' is left "
                  "alone."))

GRAD_SCALER = any_code_rule(
    id="torch.device.grad-scaler",
    summary="GradScaler for the selected device", rewrite=GradScaler,
    after=("torch.device.is-available",),  # GradScaler(enabled=torch.cuda.is_available())
    docs=docs(why="torch.cuda.amp.GradScaler() and torch.amp.GradScaler('cuda') (the default device) scale "
                  "gradients for CUDA only: without CUDA they warn and disable themselves, and an NPU's float16 "
                  "gradients go unscaled.",
              how="porter_device.grad_scaler(init_scale, growth_factor, backoff_factor, growth_interval, enabled): "
                  "torch_npu's amp.GradScaler on an NPU, torch.amp.GradScaler('cuda') on CUDA, a disabled scaler on "
                  "the CPU (scale(loss) is loss, step() steps: gradients are float32 there)."))

RULES = [AUTOCAST, GRAD_SCALER]
