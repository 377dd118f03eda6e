"""device: torch.distributed on the selected device's backend (hccl, nccl or gloo), and the DDP / FSDP device
arguments."""
from __future__ import annotations

import libcst as cst

from porter.rules import ProjectRule, literal

from .common import DDP, FSDP, References, any_code_rule, docs, is_runtime_call, runtime_call, target_name


def _is_backend_name(name: str) -> bool:
    return "backend" in name.lower()


class Backend(References):
    """``"nccl"`` where a process-group backend goes -> ``porter_device.communication_backend()``;
    ``dist.is_nccl_available()`` -> ``porter_device.is_backend_available()``; ``dist.Backend.NCCL`` ->
    ``porter_device.communication_backend()``."""

    NAMES = {"torch.distributed.is_nccl_available": "is_backend_available",
             "torch.distributed.Backend.NCCL": "communication_backend"}
    CATALOGUE = (('init_process_group("nccl"), backend="nccl", "nccl" if ... else "gloo", backend == "nccl"',
                  "porter_device.communication_backend()"),
                 ("torch.distributed.is_nccl_available()", "porter_device.is_backend_available()"),
                 ("torch.distributed.Backend.NCCL", "porter_device.communication_backend()"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._strings: set[cst.CSTNode] = set()

    def replace(self, node, name):
        if name.endswith(".NCCL"):
            return runtime_call(self, "communication_backend"), f"{name} -> porter_device.communication_backend()"
        return super().replace(node, name)

    def _mark(self, node) -> None:
        if node is not None and literal(node) == "nccl":
            self._strings.add(node)

    def visit_Call(self, node):
        super().visit_Call(node)
        name = self.qualified_name(node.func) or ""
        positional = [arg for arg in node.args if arg.keyword is None and not arg.star]
        if name == "torch.distributed.init_process_group" and positional:
            self._mark(positional[0].value)
        for arg in node.args:
            if arg.keyword is not None and arg.keyword.value in ("backend", "dist_backend"):
                self._mark(arg.value)
        func = node.func
        last = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        if last == "add_argument" and any(isinstance(flag := literal(arg.value), str) and "backend" in flag
                                          for arg in positional):
            for arg in node.args:
                if arg.keyword is not None and arg.keyword.value == "default":
                    self._mark(arg.value)

    def visit_Param(self, node):
        if _is_backend_name(node.name.value):
            self._mark(node.default)

    def visit_Assign(self, node):
        if any(_is_backend_name(target_name(t.target) or "") for t in node.targets):
            self._mark(node.value)

    def visit_AnnAssign(self, node):
        if _is_backend_name(target_name(node.target) or ""):
            self._mark(node.value)

    def visit_DictElement(self, node):
        if isinstance(node.key, cst.SimpleString) and _is_backend_name(target_name(node.key) or ""):
            self._mark(node.value)

    def visit_Comparison(self, node):
        if len(node.comparisons) == 1 and isinstance(node.comparisons[0].operator, (cst.Equal, cst.NotEqual)):
            self._mark(node.left)
            self._mark(node.comparisons[0].comparator)

    def leave_SimpleString(self, original_node, updated_node):
        if original_node not in self._strings:
            return updated_node
        self.record(original_node, "'nccl' -> porter_device.communication_backend()")
        return runtime_call(self, "communication_backend")

    def leave_IfExp(self, original_node, updated_node):
        values = [literal(original_node.body), literal(original_node.orelse)]
        if all(isinstance(v, str) for v in values) and set(values) == {"nccl", "gloo"}:  # a dict is no backend
            del self.matches[len(self.matches) - sum(1 for b in (original_node.body, original_node.orelse)
                                                     if b in self._strings):]
            self.record(original_node, "'nccl' if ... else 'gloo' -> porter_device.communication_backend()")
            return runtime_call(self, "communication_backend").with_changes(lpar=updated_node.lpar,
                                                                           rpar=updated_node.rpar)
        return updated_node


class ParallelDevices(ProjectRule):
    """DistributedDataParallel's ``device_ids`` / ``output_device`` and FSDP's ``device_id`` -> the runtime's
    ``device_ids(...)`` / ``parallel_device(...)``."""

    CATALOGUE = (("DistributedDataParallel(m, device_ids=[i], output_device=i)",
                  "device_ids=porter_device.device_ids([i]), output_device=porter_device.parallel_device(i)"),
                 ("FullyShardedDataParallel(m, device_id=i)", "device_id=porter_device.parallel_device(i)"))

    def leave_Call(self, original_node, updated_node):
        name = self.qualified_name(original_node.func)
        if name not in DDP and name not in FSDP:
            return updated_node
        wanted = {"device_ids": "device_ids", "output_device": "parallel_device"} if name in DDP \
            else {"device_id": "parallel_device"}
        args, changed = [], False
        position = 0
        for original, arg in zip(original_node.args, updated_node.args):
            word = arg.keyword.value if arg.keyword is not None else None
            if word is None and not arg.star:
                word = {1: "device_ids", 2: "output_device"}.get(position) if name in DDP else None
                position += 1
            function = wanted.get(word or "")
            if function is not None and literal(arg.value) is not None and not self._wrapped(original.value):
                self.record(original.value, f"{word}=... -> porter_device.{function}(...)")
                arg = arg.with_changes(value=runtime_call(self, function, [arg.value]))
                changed = True
            args.append(arg)
        return updated_node.with_changes(args=args) if changed else updated_node

    def _wrapped(self, node) -> bool:
        """Whether ``node`` already calls device_ids() / parallel_device() (what this rule wrote)."""
        # is_runtime_call first: only a call has .func (and then a runtime name, so name is None only for a non-call)
        name = self.qualified_name(node.func) if is_runtime_call(self, node) else None
        return name is not None and name.rsplit(".", 1)[1] in ("device_ids", "parallel_device")


BACKEND = any_code_rule(
    id="torch.device.backend",
    summary="Process-group backend: hccl on an NPU, nccl on CUDA, gloo on the CPU", rewrite=Backend,
    triggers=("nccl", "NCCL", "is_nccl_available"),
    after=("torch.device.is-available",),  # "nccl" if torch.cuda.is_available() else "gloo"
    docs=docs(why="init_process_group('nccl') fails on a CPU machine and on an NPU (which needs hccl); code also "
                  "picks the backend from is_nccl_available() or compares it with 'nccl'.",
              how="Where 'nccl' is a backend (init_process_group's first argument, backend= / dist_backend= of any "
                  "call, a parameter's default, a value assigned to a *backend* name or dict key, an argparse "
                  "--*backend* default, either side of == / !=) it becomes porter_device.communication_backend(): "
                  "hccl, nccl or gloo for the selected device (PORTER_BACKEND overrides). 'nccl' if ... else 'gloo' "
                  "becomes the call as a whole; is_nccl_available() becomes porter_device.is_backend_available() "
                  "and Backend.NCCL the call. A comparison with 'nccl' then asks 'is this the device's backend', "
                  "which is what code that moves tensors to the GPU before a collective meant."))

PARALLEL = any_code_rule(
    id="torch.device.parallel-devices",
    summary="DDP device_ids / output_device and FSDP device_id name the selected device, none on the CPU",
    rewrite=ParallelDevices, triggers=("device_ids", "output_device", "device_id", "DistributedDataParallel"),
    after=("torch.device.current-device", "torch.device.strings"),  # device_ids=[torch.cuda.current_device()]
    docs=docs(why="DistributedDataParallel(m, device_ids=[rank]) means CUDA device `rank`: DDP refuses CPU modules "
                  "with device_ids, and on an NPU the int names a CUDA device. FSDP's device_id is the same.",
              how="device_ids=X becomes porter_device.device_ids(X) (each entry as the selected device; None on the "
                  "CPU), output_device=X and FSDP's device_id=X porter_device.parallel_device(X) (None on the CPU). "
                  "DDP's second and third positional arguments count as those. None is left alone."))

RULES = [BACKEND, PARALLEL]
