"""device: CUDA-only calls in SAT become calls to porter.runtime.device, which serves cpu, cuda and npu."""
from __future__ import annotations

import libcst as cst

from porter.rules import Rule, RuleDocs, RuleTransformer

from .runtime import DEVICE, call, code

REMOVAL_DEVICE = "When SAT routes device calls through DeepSpeed's get_accelerator() (or its own device layer)."


def cuda_calls(name: str, mapping: dict[str, str]) -> type[RuleTransformer]:
    """A transformer rewriting ``torch.cuda.<key>(args)`` to ``porter_device.<value>(args)``."""

    def leave_Call(self, original_node, updated_node):
        func = code(updated_node.func)
        if func.startswith("torch.cuda.") and func[len("torch.cuda."):] in mapping:
            target = mapping[func[len("torch.cuda."):]]
            self.record(original_node, f"torch.cuda.{func[len('torch.cuda.'):]}() -> porter_device.{target}()")
            return call(self, DEVICE, target, updated_node.args)
        return updated_node

    doc = "Rewrites " + ", ".join(f"torch.cuda.{k}()" for k in mapping) + " to the porter device layer."
    return type(name, (RuleTransformer,), {"leave_Call": leave_Call, "__doc__": doc, "__module__": __name__})


def device_rule(id, files, summary, mapping, why, upstream, **kw) -> Rule:
    return Rule(
        id=id, target="sat", files=tuple(files), category="device", summary=summary,
        rewrite=cuda_calls("".join(p.title() for p in id.split(".")[-1].split("-")), mapping),
        docs=RuleDocs(why=why, how="Calls " + ", ".join(f"porter_device.{v}()" for v in dict.fromkeys(mapping.values()))
                      + " instead; the runtime forwards to the selected device (npu, cuda or cpu).",
                      upstream=upstream, removal=REMOVAL_DEVICE), **kw)


SYNCHRONIZE = device_rule(
    "sat.device.synchronize", ["sat/training/utils.py"], "Timer synchronisation on any device",
    {"synchronize": "synchronize"},
    why="Every training timer calls torch.cuda.synchronize(), which raises on a machine without CUDA and does "
        "not wait for an NPU.",
    upstream="sat/training/utils.py Timers._Timer.start/stop")

CURRENT_DEVICE = device_rule(
    "sat.device.current-device",
    ["sat/model/base_model.py", "sat/model/official/glm130B_model.py", "sat/mpu/data.py"],
    "Tensors created on the selected device, not on 'the current CUDA device'",
    {"current_device": "current_device"},
    why="broadcast_data, get_model and GLM-130B create tensors with device=torch.cuda.current_device(), which "
        "fails without CUDA and puts tensors on the wrong device on an NPU.",
    upstream="sat/mpu/data.py broadcast_data; sat/model/base_model.py get_model; glm130B_model.py")

SET_DEVICE = device_rule(
    "sat.device.set-device", ["sat/arguments.py"], "Bind the process to its device on any device",
    {"set_device": "set_device"},
    why="initialize_distributed calls torch.cuda.set_device(args.device) for every non-'cpu' device.",
    upstream="sat/arguments.py initialize_distributed")

COUNT = device_rule(
    "sat.device.count", ["sat/arguments.py"], "Count the selected device's devices",
    {"device_count": "device_count"},
    why="get_args picks args.device from torch.cuda.device_count(): 0 on an NPU machine, so NPU training would "
        "run on the CPU. The CPU device answers 0, which SAT already reads as 'use the CPU'.",
    upstream="sat/arguments.py get_args")

IS_AVAILABLE = device_rule(
    "sat.device.is-available",
    ["sat/arguments.py", "sat/model/base_model.py", "sat/model/finetune/lora2.py", "sat/mpu/__init__.py"],
    "'Is there an accelerator' asked of the selected device",
    {"is_available": "is_available"},
    why="SAT uses torch.cuda.is_available() to mean 'an accelerator is there': false on an NPU machine, so "
        "models stay on the CPU and DeepSpeed's RNG tracker is never set up.",
    upstream="sat/arguments.py, sat/model/base_model.py get_model, sat/model/finetune/lora2.py merge, sat/mpu/__init__.py")

SEED = device_rule(
    "sat.device.seed", ["sat/arguments.py", "sat/training/deepspeed_training.py"], "Seed the selected device",
    {"manual_seed": "manual_seed", "manual_seed_all": "manual_seed_all"},
    why="set_random_seed and training_main seed only CUDA generators, so NPU runs are not reproducible.",
    upstream="sat/arguments.py set_random_seed; sat/training/deepspeed_training.py training_main")

RNG_STATE = device_rule(
    "sat.device.rng-state", ["sat/training/model_io.py"], "Checkpoint the selected device's RNG state",
    {"get_rng_state": "get_rng_state", "set_rng_state": "set_rng_state"},
    why="Saving a checkpoint calls torch.cuda.get_rng_state(), which raises without CUDA; on an NPU it saves "
        "the wrong generator. The key stays 'cuda_rng_state' so checkpoints remain loadable by stock SAT.",
    upstream="sat/training/model_io.py save_ds_checkpoint / load_checkpoint")

MEMORY_STATS = device_rule(
    "sat.device.memory-stats", ["sat/training/utils.py"], "Memory report of the selected device",
    {"memory_allocated": "memory_allocated", "max_memory_allocated": "max_memory_allocated",
     "memory_reserved": "memory_reserved", "max_memory_reserved": "max_memory_reserved"},
    why="report_memory (printed at the first log interval) reads CUDA allocator statistics only.",
    upstream="sat/training/utils.py report_memory")

PROFILER = device_rule(
    "sat.device.profiler", ["sat/training/deepspeed_training.py"], "nvtx ranges and the CUDA profiler, per device",
    {"nvtx.range_push": "range_push", "nvtx.range_pop": "range_pop",
     "cudart().cudaProfilerStart": "profiler_start", "cudart().cudaProfilerStop": "profiler_stop"},
    why="--profiling calls torch.cuda.nvtx and cudart, which exist only on CUDA.",
    upstream="sat/training/deepspeed_training.py train / train_step")


class DotCudaToDevice(RuleTransformer):
    """``x.cuda()`` -> ``x.to(porter_device.current_device())``."""

    def leave_Call(self, original_node, updated_node):
        func = updated_node.func
        if isinstance(func, cst.Attribute) and func.attr.value == "cuda" and not updated_node.args:
            self.record(original_node, ".cuda() -> .to(porter_device.current_device())")
            return updated_node.with_changes(func=func.with_changes(attr=cst.Name("to")),
                                             args=[cst.Arg(call(self, DEVICE, "current_device"))])
        return updated_node


DOT_CUDA = Rule(
    id="sat.device.dot-cuda", target="sat", category="device",
    files=("sat/model/finetune/lora2.py", "sat/mpu/data.py", "sat/mpu/operation.py"),
    summary=".cuda() moves to the selected device", rewrite=DotCudaToDevice,
    docs=RuleDocs(why="broadcast_data, model-parallel splitting and LoRA merging call .cuda(), which fails without "
                      "CUDA and is the wrong device on an NPU.",
                  how="x.cuda() becomes x.to(porter_device.current_device()).",
                  upstream="sat/mpu/data.py broadcast_data, sat/mpu/operation.py, sat/model/finetune/lora2.py",
                  removal=REMOVAL_DEVICE))


class AsDevice(RuleTransformer):
    """``torch.device(args.device)`` -> ``porter_device.as_device(args.device)``."""

    def leave_Call(self, original_node, updated_node):
        if code(updated_node.func) == "torch.device" and len(updated_node.args) == 1 \
                and code(updated_node.args[0].value) == "args.device":
            self.record(original_node, "torch.device(args.device) -> porter_device.as_device(args.device)")
            return call(self, DEVICE, "as_device", updated_node.args)
        return updated_node


AS_DEVICE = Rule(
    id="sat.device.as-device", target="sat", category="device", files=("sat/training/deepspeed_training.py",),
    summary="args.device (a local rank) read as the selected device type", rewrite=AsDevice,
    docs=RuleDocs(why="training_main moves the model to torch.device(args.device); an integer there means a CUDA "
                      "device, so on an NPU the model would be sent to CUDA.",
                  how="porter_device.as_device() turns an index into npu:N / cuda:N and keeps 'cpu'.",
                  upstream="sat/training/deepspeed_training.py training_main", removal=REMOVAL_DEVICE))


class BackendFromDevice(RuleTransformer):
    """The 'nccl' default and the nccl-or-gloo choice become the selected device's backend."""

    def leave_IfExp(self, original_node, updated_node):
        if code(updated_node.body) in ("'nccl'", '"nccl"') and code(updated_node.orelse) in ("'gloo'", '"gloo"'):
            self.record(original_node, "'nccl' if ... else 'gloo' -> porter_device.communication_backend()")
            return call(self, DEVICE, "communication_backend")
        return updated_node

    def leave_Call(self, original_node, updated_node):
        args = updated_node.args
        if code(updated_node.func).endswith("add_argument") and args \
                and code(args[0].value) in ("'--distributed-backend'", '"--distributed-backend"'):
            new_args = []
            for arg in args:
                if arg.keyword is not None and arg.keyword.value == "default" and code(arg.value) in ("'nccl'", '"nccl"'):
                    self.record(original_node, "--distributed-backend default 'nccl' -> the device's backend")
                    arg = arg.with_changes(value=call(self, DEVICE, "communication_backend"))
                new_args.append(arg)
            return updated_node.with_changes(args=new_args)
        return updated_node


BACKEND = Rule(
    id="sat.device.backend", target="sat", category="device", files=("sat/arguments.py",),
    summary="Process-group backend: hccl on NPU, nccl on CUDA, gloo on CPU", rewrite=BackendFromDevice,
    after=("sat.device.is-available",),
    docs=RuleDocs(why="--distributed-backend defaults to 'nccl' and model-only mode picks nccl-or-gloo from CUDA "
                      "availability: CPU training fails, NPU training picks the wrong backend.",
                  how="Both become porter_device.communication_backend(). An explicit --distributed-backend still wins.",
                  upstream="sat/arguments.py add_training_args and _simple_init", removal=REMOVAL_DEVICE))


class LocalRankCheck(RuleTransformer):
    """Skip the 'LOCAL_RANK and args.device inconsistent' check when the device is the CPU."""

    CHECK = "args.local_rank!=args.deviceandargs.mode!='inference'"

    def leave_If(self, original_node, updated_node):
        if code(updated_node.test) == self.CHECK:
            self.record(original_node, "the LOCAL_RANK consistency check no longer applies to args.device == 'cpu'")
            test = cst.parse_expression("args.device != 'cpu' and " + cst.Module([]).code_for_node(updated_node.test))
            return updated_node.with_changes(test=test)
        return updated_node


LOCAL_RANK = Rule(
    id="sat.device.local-rank-check", target="sat", category="device", files=("sat/arguments.py",),
    summary="CPU training passes get_args' LOCAL_RANK check", rewrite=LocalRankCheck,
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
    """A run of cudnn / tf32 flag assignments becomes one porter_device.set_determinism(...) call."""

    def leave_IndentedBlock(self, original_node, updated_node):
        body, found, first, originals = [], {}, None, []
        for orig, stmt in zip(original_node.body, updated_node.body):
            target = self._flag(stmt)
            if target is None:
                body.append(stmt)
                continue
            originals.append(orig)
            if DETERMINISM_TARGETS[target]:
                found[DETERMINISM_TARGETS[target]] = stmt.body[0].value
            if first is None:
                first = len(body)
                body.append(stmt)  # placeholder, replaced below
        if first is None:
            return updated_node
        if set(found) != {"benchmark", "deterministic", "allow_tf32"}:
            return updated_node
        for orig in originals:
            self.record(orig, "cudnn / tf32 flag -> porter_device.set_determinism()")
        body[first] = cst.SimpleStatementLine([cst.Expr(call(self, DEVICE, "set_determinism", keywords=found))])
        return updated_node.with_changes(body=body)

    @staticmethod
    def _flag(stmt):
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Assign) \
                and len(stmt.body[0].targets) == 1:
            target = code(stmt.body[0].targets[0].target)
            if target in DETERMINISM_TARGETS:
                return target
        return None


CUDNN_FLAGS = Rule(
    id="sat.device.cudnn-flags", target="sat", category="device", files=("sat/arguments.py",),
    summary="cudnn / tf32 switches only on CUDA", rewrite=CudnnFlags,
    docs=RuleDocs(why="set_random_seed sets cudnn.benchmark/deterministic/enabled and cuda.matmul.allow_tf32 "
                      "whatever the device: meaningless on NPU and CPU, and they mislead a reader about determinism.",
                  how="One porter_device.set_determinism(benchmark=..., deterministic=..., allow_tf32=...) call with "
                      "SAT's values; the CUDA device applies them, the others ignore them.",
                  upstream="sat/arguments.py set_random_seed", removal=REMOVAL_DEVICE))


class PinMemory(RuleTransformer):
    """``pin_memory=True`` -> ``pin_memory=porter_device.pin_memory()``."""

    def leave_Arg(self, original_node, updated_node):
        if updated_node.keyword is not None and updated_node.keyword.value == "pin_memory" \
                and code(updated_node.value) == "True":
            self.record(original_node, "pin_memory=True -> pin_memory=porter_device.pin_memory()")
            return updated_node.with_changes(value=call(self, DEVICE, "pin_memory"))
        return updated_node


PIN_MEMORY = Rule(
    id="sat.device.pin-memory", target="sat", category="device", files=("sat/data_utils/configure_data.py",),
    summary="Pin host memory only where the device benefits", rewrite=PinMemory,
    docs=RuleDocs(why="make_loaders always pins memory; on a CPU-only machine torch warns on every loader and the "
                      "pinning is wasted work.",
                  how="pin_memory follows the device: on for cuda and npu, off for cpu.",
                  upstream="sat/data_utils/configure_data.py make_data_loader", removal=REMOVAL_DEVICE))


RULES = [SYNCHRONIZE, CURRENT_DEVICE, SET_DEVICE, COUNT, IS_AVAILABLE, SEED, RNG_STATE, MEMORY_STATS, PROFILER,
         DOT_CUDA, AS_DEVICE, BACKEND, LOCAL_RANK, CUDNN_FLAGS, PIN_MEMORY]
