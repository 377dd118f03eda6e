"""device: CUDA-only calls in SAT become calls to porter.runtime.device, which serves cpu, cuda and npu."""
from __future__ import annotations

from typing import ClassVar

import libcst as cst
import libcst.matchers as m

from porter.rules import Rule, RuleDocs, RuleTransformer, literal, same

from .runtime import DEVICE, call, keyword

REMOVAL_DEVICE = "When SAT routes device calls through DeepSpeed's get_accelerator() (or its own device layer)."


class CudaCallsToDevice(RuleTransformer):
    """Base: a call of ``torch.cuda.<name>(...)`` (reached through any import of torch or torch.cuda) becomes
    ``porter_device.<CALLS[name]>(...)`` with the same arguments. Subclasses set CALLS."""

    CALLS: ClassVar[dict[str, str]] = {}

    @classmethod
    def matched_names(cls):
        return [f"torch.cuda.{name}" for name in cls.CALLS]

    def leave_Call(self, original_node, updated_node):
        name = self.qualified_name(original_node.func)
        if name is None or not name.startswith("torch.cuda.") or name[len("torch.cuda."):] not in self.CALLS:
            return updated_node
        function = self.CALLS[name[len("torch.cuda."):]]
        self.record(original_node, f"{name}() -> porter_device.{function}()")
        return call(self, DEVICE, function, updated_node.args)


class Synchronize(CudaCallsToDevice):
    CALLS = {"synchronize": "synchronize"}


class CurrentDevice(CudaCallsToDevice):
    CALLS = {"current_device": "current_device"}


class SetDevice(CudaCallsToDevice):
    CALLS = {"set_device": "set_device"}


class DeviceCount(CudaCallsToDevice):
    CALLS = {"device_count": "device_count"}


class IsAvailable(CudaCallsToDevice):
    CALLS = {"is_available": "is_available"}


class Seed(CudaCallsToDevice):
    CALLS = {"manual_seed": "manual_seed", "manual_seed_all": "manual_seed_all"}


class RngState(CudaCallsToDevice):
    CALLS = {"get_rng_state": "get_rng_state", "set_rng_state": "set_rng_state"}


class MemoryStats(CudaCallsToDevice):
    CALLS = {name: name for name in ("memory_allocated", "max_memory_allocated", "memory_reserved",
                                     "max_memory_reserved")}


class Profiler(CudaCallsToDevice):
    # torch.cuda.cudart().cudaProfilerStart() resolves to torch.cuda.cudart.cudaProfilerStart
    CALLS = {"nvtx.range_push": "range_push", "nvtx.range_pop": "range_pop",
             "cudart.cudaProfilerStart": "profiler_start", "cudart.cudaProfilerStop": "profiler_stop"}


def device_rule(id, files, summary, rewrite: type[CudaCallsToDevice], why, upstream, **kw) -> Rule:
    return Rule(  # its triggers: the last parts of the names it matches (CudaCallsToDevice.matched_names)
        id=id, target="sat", files=tuple(files), category="device", summary=summary, rewrite=rewrite,
        docs=RuleDocs(why=why, how="Calls " + ", ".join(f"porter_device.{v}()" for v in dict.fromkeys(rewrite.CALLS.values()))
                      + " instead; the runtime forwards to the selected device (npu, cuda or cpu).",
                      upstream=upstream, removal=REMOVAL_DEVICE), **kw)


SYNCHRONIZE = device_rule(
    "sat.device.synchronize", ["sat/training/utils.py"], "Timer synchronisation on any device",
    Synchronize,
    why="Every training timer calls torch.cuda.synchronize(), which raises on a machine without CUDA and does "
        "not wait for an NPU.",
    upstream="sat/training/utils.py Timers._Timer.start/stop")

CURRENT_DEVICE = device_rule(
    "sat.device.current-device",
    ["sat/model/base_model.py", "sat/model/official/glm130B_model.py", "sat/mpu/data.py", "sat/quantization/kernels.py"],
    "Tensors created on the selected device, not on 'the current CUDA device'",
    CurrentDevice,
    why="broadcast_data, get_model and GLM-130B create tensors with device=torch.cuda.current_device(), and "
        "quantize() moves weights there before quantizing them, which fails without CUDA and puts tensors on the "
        "wrong device on an NPU.",
    upstream="sat/mpu/data.py broadcast_data; sat/model/base_model.py get_model; glm130B_model.py; "
             "sat/quantization/kernels.py quantize")

SET_DEVICE = device_rule(
    "sat.device.set-device", ["sat/arguments.py"], "Bind the process to its device on any device",
    SetDevice,
    why="initialize_distributed calls torch.cuda.set_device(args.device) for every non-'cpu' device.",
    upstream="sat/arguments.py initialize_distributed")

COUNT = device_rule(
    "sat.device.count", ["sat/arguments.py"], "Count the selected device's devices",
    DeviceCount,
    why="get_args picks args.device from torch.cuda.device_count(): 0 on an NPU machine, so NPU training would "
        "run on the CPU. The CPU device answers 0, which SAT already reads as 'use the CPU'.",
    upstream="sat/arguments.py get_args")

IS_AVAILABLE = device_rule(
    "sat.device.is-available",
    ["sat/arguments.py", "sat/model/base_model.py", "sat/model/finetune/lora2.py", "sat/mpu/__init__.py"],
    "'Is there an accelerator' asked of the selected device",
    IsAvailable,
    why="SAT uses torch.cuda.is_available() to mean 'an accelerator is there': false on an NPU machine, so "
        "models stay on the CPU and DeepSpeed's RNG tracker is never set up.",
    upstream="sat/arguments.py, sat/model/base_model.py get_model, sat/model/finetune/lora2.py merge, sat/mpu/__init__.py",
    file_versions={"sat/model/finetune/lora2.py": ">=0.3.7"})

SEED = device_rule(
    "sat.device.seed", ["sat/arguments.py", "sat/training/deepspeed_training.py"], "Seed the selected device",
    Seed,
    why="set_random_seed and training_main seed only CUDA generators, so NPU runs are not reproducible.",
    upstream="sat/arguments.py set_random_seed; sat/training/deepspeed_training.py training_main",
    file_versions={"sat/training/deepspeed_training.py": ">=0.4.10"})

RNG_STATE = device_rule(
    "sat.device.rng-state", ["sat/training/model_io.py"], "Checkpoint the selected device's RNG state",
    RngState,
    why="Saving a checkpoint calls torch.cuda.get_rng_state(), which raises without CUDA; on an NPU it saves "
        "the wrong generator. The key stays 'cuda_rng_state' so checkpoints remain loadable by stock SAT.",
    upstream="sat/training/model_io.py save_ds_checkpoint / load_checkpoint")

MEMORY_STATS = device_rule(
    "sat.device.memory-stats", ["sat/training/utils.py"], "Memory report of the selected device",
    MemoryStats,
    why="report_memory (printed at the first log interval) reads CUDA allocator statistics only.",
    upstream="sat/training/utils.py report_memory")

PROFILER = device_rule(
    "sat.device.profiler", ["sat/training/deepspeed_training.py"], "nvtx ranges and the CUDA profiler, per device",
    Profiler,
    why="--profiling calls torch.cuda.nvtx and cudart, which exist only on CUDA.",
    upstream="sat/training/deepspeed_training.py train / train_step",
    file_versions={"sat/training/deepspeed_training.py": ">=0.4.10"})


class DotCudaToDevice(RuleTransformer):
    """``x.cuda()`` (no device index) -> ``x.to(porter_device.current_device())``."""

    def leave_Call(self, original_node, updated_node):
        func = updated_node.func
        if m.matches(updated_node, m.Call(func=m.Attribute(attr=m.Name("cuda")), args=[])) \
                and self.qualified_name(original_node.func.value) != "torch":  # torch.cuda is a module
            self.record(original_node, ".cuda() -> .to(porter_device.current_device())")
            return updated_node.with_changes(func=func.with_changes(attr=cst.Name("to")),
                                             args=[cst.Arg(call(self, DEVICE, "current_device"))])
        return updated_node


DOT_CUDA = Rule(
    id="sat.device.dot-cuda", target="sat", category="device",
    files=("sat/model/finetune/lora2.py", "sat/mpu/data.py", "sat/mpu/operation.py"),
    summary=".cuda() moves to the selected device", rewrite=DotCudaToDevice, triggers=("cuda",),
    docs=RuleDocs(why="broadcast_data, model-parallel splitting and LoRA merging call .cuda(), which fails without "
                      "CUDA and is the wrong device on an NPU.",
                  how="x.cuda() becomes x.to(porter_device.current_device()).",
                  upstream="sat/mpu/data.py broadcast_data, sat/mpu/operation.py, sat/model/finetune/lora2.py",
                  removal=REMOVAL_DEVICE),
    file_versions={"sat/model/finetune/lora2.py": ">=0.3.7", "sat/mpu/operation.py": ">=0.4.1"})


class AsDevice(RuleTransformer):
    """``torch.device(<anything>.device)`` -> ``porter_device.as_device(<anything>.device)``."""

    def leave_Call(self, original_node, updated_node):
        if self.refers_to(original_node.func, "torch.device") and m.matches(
                updated_node, m.Call(args=[m.Arg(value=m.Attribute(attr=m.Name("device")), keyword=None)])):
            self.record(original_node, "torch.device(<args>.device) -> porter_device.as_device(<args>.device)")
            return call(self, DEVICE, "as_device", updated_node.args)
        return updated_node


AS_DEVICE = Rule(
    id="sat.device.as-device", target="sat", category="device", files=("sat/training/deepspeed_training.py",),
    summary="args.device (a local rank) read as the selected device type", rewrite=AsDevice, triggers=("device",),
    docs=RuleDocs(why="training_main moves the model to torch.device(args.device); an integer there means a CUDA "
                      "device, so on an NPU the model would be sent to CUDA.",
                  how="porter_device.as_device() turns an index into npu:N / cuda:N and keeps 'cpu'.",
                  upstream="sat/training/deepspeed_training.py training_main", removal=REMOVAL_DEVICE),
    file_versions={"sat/training/deepspeed_training.py": ">=0.4.11"})


TYPED_TENSORS = {"LongTensor": "long", "IntTensor": "int", "FloatTensor": "float", "HalfTensor": "half",
                 "BFloat16Tensor": "bfloat16", "ByteTensor": "uint8", "BoolTensor": "bool"}


class TypedTensorFromList(RuleTransformer):
    """``torch.cuda.LongTensor(<list>)`` -> ``torch.tensor(<list>, dtype=torch.long, device=porter_device.current_device())``.

    Only when the argument is a list: a list display or comprehension, or a local name every assignment of
    which in the function is one. With an int, the legacy constructor means "an uninitialised tensor of that
    size", which torch.tensor does not.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lists: list[dict[str, bool]] = [{}]  # per function: name -> only ever assigned a list

    def visit_FunctionDef(self, node):
        self.lists.append({})

    def leave_FunctionDef(self, original_node, updated_node):
        self.lists.pop()
        return updated_node

    def visit_Assign(self, node):
        is_list = m.matches(node.value, m.List() | m.ListComp())
        for target in node.targets:
            if isinstance(target.target, cst.Name):
                name = target.target.value
                self.lists[-1][name] = self.lists[-1].get(name, True) and is_list

    def _is_list(self, arg: cst.BaseExpression) -> bool:
        if m.matches(arg, m.List() | m.ListComp()):
            return True
        return isinstance(arg, cst.Name) and self.lists[-1].get(arg.value, False)

    def leave_Call(self, original_node, updated_node):
        name = self.qualified_name(original_node.func) or ""
        kind = name[len("torch.cuda."):] if name.startswith("torch.cuda.") else ""
        if kind not in TYPED_TENSORS or len(updated_node.args) != 1 or updated_node.args[0].keyword is not None \
                or updated_node.args[0].star or not self._is_list(updated_node.args[0].value):
            return updated_node
        self.record(original_node, f"{name}(list) -> torch.tensor(list, dtype=torch.{TYPED_TENSORS[kind]}, "
                                   "device=porter_device.current_device())")
        torch = self.require_import("torch")
        dtype = cst.Attribute(torch, cst.Name(TYPED_TENSORS[kind]))
        return cst.Call(cst.Attribute(torch, cst.Name("tensor")), [
            updated_node.args[0].with_changes(comma=cst.MaybeSentinel.DEFAULT), keyword("dtype", dtype),
            keyword("device", call(self, DEVICE, "current_device"))])


TYPED_TENSOR = Rule(
    id="sat.device.typed-tensor", target="sat", category="device", files=("sat/mpu/data.py",),
    summary="torch.cuda.LongTensor(list) built on the selected device", rewrite=TypedTensorFromList,
    triggers=tuple(TYPED_TENSORS), reads="function",  # the list may be assigned statements before the call
    file_versions={"sat/mpu/data.py": "<0.4.11"},
    docs=RuleDocs(why="Before 0.4.11 broadcast_data builds its size table with torch.cuda.LongTensor(sizes), a "
                      "CUDA-only constructor: it raises without CUDA and is the wrong device on an NPU. 0.4.11 "
                      "replaced it with torch.tensor(..., device=torch.cuda.current_device()), which "
                      "sat.device.current-device ports.",
                  how="torch.tensor(sizes, dtype=torch.long, device=porter_device.current_device()), only where "
                      "the argument is a list (an int would mean a size).",
                  upstream="sat/mpu/data.py _build_key_size_numel_dictionaries (changed in 0.4.11)",
                  removal="When porter stops supporting SAT before 0.4.11."))


class CudaStringDefault(RuleTransformer):
    """``'cuda' if <accelerator available> else 'cpu'`` -> ``porter_device.current_device() if ... else 'cpu'``."""

    AVAILABLE = ("torch.cuda.is_available", "porter.runtime.device.is_available")

    def leave_IfExp(self, original_node, updated_node):
        if not (literal(updated_node.body) == "cuda" and literal(updated_node.orelse) == "cpu"
                and m.matches(original_node.test, m.Call(args=[]))
                and self.refers_to(original_node.test.func, *self.AVAILABLE)):
            return updated_node
        self.record(original_node, "'cuda' if available else 'cpu' -> porter_device.current_device() if available else 'cpu'")
        return updated_node.with_changes(body=call(self, DEVICE, "current_device"))


DEFAULT_DEVICE = Rule(
    id="sat.device.default-device", target="sat", category="device", files=("sat/model/base_model.py",),
    summary="get_model's default device is the selected device, not 'cuda'", rewrite=CudaStringDefault,
    triggers=("cuda",),
    after=("sat.device.is-available",), file_versions={"sat/model/base_model.py": "<0.4.11"},
    docs=RuleDocs(why="Before 0.4.11 get_model sets args.device = 'cuda' if torch.cuda.is_available() else 'cpu' "
                      "when the caller gave none: once sat.device.is-available answers for the NPU, the model "
                      "would be sent to 'cuda'. 0.4.11 uses torch.cuda.current_device() there instead.",
                  how="The 'cuda' branch becomes porter_device.current_device(), as the later releases read once "
                      "ported.",
                  upstream="sat/model/base_model.py get_model (changed in 0.4.11)",
                  removal="When porter stops supporting SAT before 0.4.11."))


class BackendFromDevice(RuleTransformer):
    """The 'nccl' default and the nccl-or-gloo choice become the selected device's backend."""

    def leave_IfExp(self, original_node, updated_node):
        if literal(updated_node.body) == "nccl" and literal(updated_node.orelse) == "gloo":
            self.record(original_node, "'nccl' if ... else 'gloo' -> porter_device.communication_backend()")
            return call(self, DEVICE, "communication_backend")
        return updated_node

    def leave_Call(self, original_node, updated_node):
        args = updated_node.args
        if not (m.matches(updated_node.func, m.Attribute(attr=m.Name("add_argument")) | m.Name("add_argument"))
                and args and literal(args[0].value) == "--distributed-backend"):
            return updated_node
        new_args = []
        for arg in args:
            if m.matches(arg, m.Arg(keyword=m.Name("default"))) and literal(arg.value) == "nccl":
                self.record(original_node, "--distributed-backend default 'nccl' -> the device's backend")
                arg = arg.with_changes(value=call(self, DEVICE, "communication_backend"))
            new_args.append(arg)
        return updated_node.with_changes(args=new_args)


BACKEND = Rule(
    id="sat.device.backend", target="sat", category="device", files=("sat/arguments.py",),
    summary="Process-group backend: hccl on NPU, nccl on CUDA, gloo on CPU", rewrite=BackendFromDevice,
    triggers=("nccl",),
    after=("sat.device.is-available",),
    docs=RuleDocs(why="--distributed-backend defaults to 'nccl' and model-only mode picks nccl-or-gloo from CUDA "
                      "availability: CPU training fails, NPU training picks the wrong backend.",
                  how="Both become porter_device.communication_backend(). An explicit --distributed-backend still wins.",
                  upstream="sat/arguments.py add_training_args and _simple_init", removal=REMOVAL_DEVICE))


def _not_equal(test: cst.BaseExpression) -> tuple[cst.BaseExpression, cst.BaseExpression] | None:
    """The two sides of ``a != b`` (one comparison, not a chain); else None."""
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1 \
            and isinstance(test.comparisons[0].operator, cst.NotEqual):
        return test.left, test.comparisons[0].comparator
    return None


def _rank_versus_device(test: cst.BaseExpression) -> cst.BaseExpression | None:
    """In ``<a>.local_rank != <a>.device`` (either order), the object holding the device; else None."""
    sides = _not_equal(test)
    if sides is None:
        return None
    left, right = sides
    if not (isinstance(left, cst.Attribute) and isinstance(right, cst.Attribute)) \
            or sorted([left.attr.value, right.attr.value]) != ["device", "local_rank"] \
            or not same(left.value, right.value):
        return None
    return left if left.attr.value == "device" else right


def _conjuncts(test: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(test, cst.BooleanOperation) and isinstance(test.operator, cst.And) and not test.lpar:
        return _conjuncts(test.left) + _conjuncts(test.right)
    return [test]


def _is_cpu_guard(test: cst.BaseExpression, device: cst.BaseExpression) -> bool:
    sides = _not_equal(test)
    return sides is not None and same(sides[0], device) and literal(sides[1]) == "cpu"


class LocalRankCheck(RuleTransformer):
    """``if <a>.local_rank != <a>.device and ...:`` also requires ``<a>.device != 'cpu'``."""

    def leave_If(self, original_node, updated_node):
        test = updated_node.test
        if m.matches(test, m.BooleanOperation(operator=m.Or())):
            return updated_node  # `guard and (x or y)` would need parentheses; SAT's check is a conjunction
        parts = _conjuncts(test)
        devices = [d for d in map(_rank_versus_device, parts) if d is not None]
        if not devices or any(_is_cpu_guard(p, devices[0]) for p in parts):
            return updated_node
        self.record(original_node, "the LOCAL_RANK consistency check no longer applies to a 'cpu' device")
        guard = cst.Comparison(devices[0], [cst.ComparisonTarget(cst.NotEqual(), cst.SimpleString("'cpu'"))])
        return updated_node.with_changes(test=cst.BooleanOperation(guard, cst.And(), test))


LOCAL_RANK = Rule(
    id="sat.device.local-rank-check", target="sat", category="device", files=("sat/arguments.py",),
    summary="CPU training passes get_args' LOCAL_RANK check", rewrite=LocalRankCheck, triggers=("local_rank",),
    docs=RuleDocs(why="On a machine with no accelerator get_args sets args.device = 'cpu' and then refuses every "
                      "training mode because 'cpu' != LOCAL_RANK ('LOCAL_RANK and args.device inconsistent').",
                  how="The check is skipped when args.device is 'cpu'; on devices it is unchanged.",
                  upstream="sat/arguments.py get_args", removal="When SAT supports CPU training."))


DETERMINISM_TARGETS = {
    "torch.backends.cudnn.benchmark": "benchmark",
    "torch.backends.cudnn.deterministic": "deterministic",
    "torch.backends.cuda.matmul.allow_tf32": "allow_tf32",
    "torch.backends.cudnn.enabled": None,  # always left on: the device layer sets it with the others
}


class CudnnFlags(RuleTransformer):
    """A run of cudnn / tf32 flag assignments becomes one porter_device.set_determinism(...) call.

    The block is read as installed (visit), then only the flag statements are rewritten (leave): the first
    becomes the call, the others are removed; the rest of the block is never touched.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plans: dict[cst.SimpleStatementLine, cst.BaseSmallStatement | None] = {}  # flag statement -> its replacement

    def visit_IndentedBlock(self, node):
        candidates = [(i, stmt, self._flag(stmt)) for i, stmt in enumerate(node.body)]
        numbered = [(i, stmt, target) for i, stmt, target in candidates if target is not None]
        if not numbered or numbered[-1][0] - numbered[0][0] != len(numbered) - 1:
            return  # not one run of consecutive lines: the call could move a value before its definition
        flags = [(stmt, target) for _, stmt, target in numbered]
        found = {DETERMINISM_TARGETS[t]: stmt.body[0].value for stmt, t in flags if DETERMINISM_TARGETS[t]}
        if set(found) != {"benchmark", "deterministic", "allow_tf32"}:
            return
        keywords = {k: found[k] for k in ("benchmark", "deterministic", "allow_tf32")}
        first = flags[0][0]
        for stmt, _ in flags:
            self.plans[stmt] = None
        self.plans[first] = cst.Expr(call(self, DEVICE, "set_determinism", keywords=keywords))

    def leave_SimpleStatementLine(self, original_node, updated_node):
        if original_node not in self.plans:
            return updated_node
        self.record(original_node, "cudnn / tf32 flag -> porter_device.set_determinism()")
        replacement = self.plans[original_node]
        if replacement is None:
            return cst.RemoveFromParent()
        return updated_node.with_changes(body=[replacement], trailing_whitespace=cst.TrailingWhitespace())

    def _flag(self, stmt):
        if m.matches(stmt, m.SimpleStatementLine(body=[m.Assign(targets=[m.AssignTarget()])])):
            target = self.qualified_name(stmt.body[0].targets[0].target)
            if target in DETERMINISM_TARGETS:
                return target
        return None


CUDNN_FLAGS = Rule(
    id="sat.device.cudnn-flags", target="sat", category="device", files=("sat/arguments.py",),
    summary="cudnn / tf32 switches only on CUDA", rewrite=CudnnFlags,
    # the three flags must all be set; an assigned attribute is always spelled out, never an import alias
    triggers=("deterministic",), reads="function",  # a run of consecutive statements
    docs=RuleDocs(why="set_random_seed sets cudnn.benchmark/deterministic/enabled and cuda.matmul.allow_tf32 "
                      "whatever the device: meaningless on NPU and CPU, and they mislead a reader about determinism.",
                  how="One porter_device.set_determinism(benchmark=..., deterministic=..., allow_tf32=...) call with "
                      "SAT's values; the CUDA device applies them, the others ignore them.",
                  upstream="sat/arguments.py set_random_seed", removal=REMOVAL_DEVICE))


class PinMemory(RuleTransformer):
    """``pin_memory=True`` -> ``pin_memory=porter_device.pin_memory()``."""

    def leave_Arg(self, original_node, updated_node):
        if m.matches(updated_node, m.Arg(keyword=m.Name("pin_memory"), value=m.Name("True"))):
            self.record(original_node, "pin_memory=True -> pin_memory=porter_device.pin_memory()")
            return updated_node.with_changes(value=call(self, DEVICE, "pin_memory"))
        return updated_node


PIN_MEMORY = Rule(
    id="sat.device.pin-memory", target="sat", category="device", files=("sat/data_utils/configure_data.py",),
    summary="Pin host memory only where the device benefits", rewrite=PinMemory, triggers=("pin_memory",),
    docs=RuleDocs(why="make_loaders always pins memory; on a CPU-only machine torch warns on every loader and the "
                      "pinning is wasted work.",
                  how="pin_memory follows the device: on for cuda and npu, off for cpu.",
                  upstream="sat/data_utils/configure_data.py make_data_loader", removal=REMOVAL_DEVICE))


RULES = [SYNCHRONIZE, CURRENT_DEVICE, SET_DEVICE, COUNT, IS_AVAILABLE, SEED, RNG_STATE, MEMORY_STATS, PROFILER,
         DOT_CUDA, AS_DEVICE, BACKEND, LOCAL_RANK, CUDNN_FLAGS, PIN_MEMORY, TYPED_TENSOR, DEFAULT_DEVICE]
