"""device: ``torch.cuda.X`` -> ``porter_device.X``: the torch.cuda API the runtime serves on npu, cuda and cpu."""
from __future__ import annotations

from typing import ClassVar

import libcst as cst

from porter.rules import Rule

from .common import References, any_code_rule, conjuncts, cuda_names, device_arguments, docs, runtime_attr


def _table(cls_names: dict[str, str], modules=("torch.cuda",)) -> dict[str, str]:
    return cuda_names(cls_names, modules=modules)


def _catalogue(primary: dict[str, str], module: str = "torch.cuda", called: bool = True) -> tuple[tuple[str, str], ...]:
    suffix = "(...)" if called else ""
    return tuple((f"{module}.{name}{suffix}", f"porter_device.{function}{suffix}") for name, function in primary.items())


class CudaReferences(References):
    """Base for the torch.cuda rules: ``PRIMARY`` maps names under torch.cuda to runtime functions;
    ``MODULES`` are the modules they are also reached through (``torch.cuda.random.manual_seed``)."""

    PRIMARY: ClassVar[dict[str, str]] = {}
    MODULES: ClassVar[tuple[str, ...]] = ("torch.cuda",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.NAMES = _table(cls.PRIMARY, cls.MODULES)
        if not cls.__dict__.get("CATALOGUE"):
            cls.CATALOGUE = _catalogue(cls.PRIMARY)


class Synchronize(CudaReferences):
    PRIMARY = {"synchronize": "synchronize"}


class DeviceCount(CudaReferences):
    PRIMARY = {"device_count": "device_count"}


class SetDevice(CudaReferences):
    PRIMARY = {"set_device": "set_device", "device": "device_context"}
    CALLS_ONLY = frozenset({"torch.cuda.device"})  # a class: `isinstance(d, torch.cuda.device)` keeps it


class Seed(CudaReferences):
    PRIMARY = {"manual_seed": "manual_seed", "manual_seed_all": "manual_seed_all", "seed": "seed",
               "seed_all": "seed_all", "initial_seed": "initial_seed"}
    MODULES = ("torch.cuda", "torch.cuda.random")


class RngState(CudaReferences):
    PRIMARY = {"get_rng_state": "get_rng_state", "set_rng_state": "set_rng_state",
               "get_rng_state_all": "get_rng_state_all", "set_rng_state_all": "set_rng_state_all"}
    MODULES = ("torch.cuda", "torch.cuda.random")


class Memory(CudaReferences):
    PRIMARY = {"memory_allocated": "memory_allocated", "max_memory_allocated": "max_memory_allocated",
               "memory_reserved": "memory_reserved", "max_memory_reserved": "max_memory_reserved",
               "memory_cached": "memory_reserved", "max_memory_cached": "max_memory_reserved",
               "memory_stats": "memory_stats", "reset_peak_memory_stats": "reset_peak_memory_stats",
               "reset_max_memory_allocated": "reset_peak_memory_stats",
               "reset_max_memory_cached": "reset_peak_memory_stats", "empty_cache": "empty_cache",
               "mem_get_info": "mem_get_info"}
    MODULES = ("torch.cuda", "torch.cuda.memory")


class Properties(CudaReferences):
    PRIMARY = {"get_device_name": "get_device_name", "get_device_properties": "get_device_properties",
               "is_bf16_supported": "is_bf16_supported"}


class Profiler(CudaReferences):
    PRIMARY = {"nvtx.range_push": "range_push", "nvtx.range_pop": "range_pop", "nvtx.range": "profile_range",
               "profiler.start": "profiler_start", "profiler.stop": "profiler_stop",
               "cudart.cudaProfilerStart": "profiler_start", "cudart.cudaProfilerStop": "profiler_stop"}
    CATALOGUE = (*_catalogue({k: v for k, v in PRIMARY.items() if not k.startswith("cudart")}),
                 ("torch.cuda.cudart().cudaProfilerStart()", "porter_device.profiler_start()"),
                 ("torch.cuda.cudart().cudaProfilerStop()", "porter_device.profiler_stop()"))


class Streams(CudaReferences):
    PRIMARY = {"Event": "Event", "Stream": "Stream", "current_stream": "current_stream",
               "default_stream": "default_stream", "stream": "stream"}
    CALLS_ONLY = frozenset({"torch.cuda.Event", "torch.cuda.Stream"})  # classes: isinstance keeps them


class CurrentDevice(CudaReferences):
    """``torch.cuda.current_device()`` answers an int, which torch reads as a CUDA device wherever a device goes.
    Where the call *is* a device argument (``device=``, ``.to(...)``, ``.cuda(...)``, ``map_location=``,
    ``device_ids=[...]``...) it becomes ``porter_device.current_device()`` (a torch.device of the selected
    device); anywhere else (printed, formatted into a string, compared, passed to code that wants a number) it
    becomes ``porter_device.current_index()``, an int, as before."""

    PRIMARY = {"current_device": "current_index"}
    CATALOGUE = (("torch.cuda.current_device() as a device argument", "porter_device.current_device()"),
                 ("torch.cuda.current_device() elsewhere (a number)", "porter_device.current_index()"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._device_calls: set[cst.CSTNode] = set()  # calls whose value is a device argument

    def visit_Call(self, node):
        super().visit_Call(node)
        for value in device_arguments(self, node, runtime=True):
            if isinstance(value, cst.Call):
                self._device_calls.add(value.func)

    def replace(self, node, name):
        if node in self._device_calls:
            return runtime_attr(self, "current_device"), f"{name}() as a device -> porter_device.current_device()"
        return runtime_attr(self, "current_index"), f"{name}() -> porter_device.current_index()"


# -- is_available, and the guards it must leave alone ------------------------------------------------------

# what only CUDA offers: a guarded branch that uses one of these cannot run elsewhere, whatever the port does
CUDA_ONLY_MODULES = ("apex", "pynvml", "nvidia_smi", "nvidia", "triton", "xformers", "flash_attn", "bitsandbytes",
                     "cupy", "pycuda", "numba.cuda", "cpm_kernels", "transformer_engine", "tensorrt",
                     "torch.utils.cpp_extension.CUDAExtension", "torch.version.cuda", "torch.cuda")


def ported_cuda_names() -> frozenset[str]:
    """Every ``torch.cuda.*`` name some rule of this pack rewrites (the rest of torch.cuda has no runtime
    equivalent: CUDA graphs, device capability, ipc, jiterator...)."""
    from . import ALL_RULES

    names: set[str] = set()
    for rule in ALL_RULES:
        names.update(getattr(rule.rewrite, "NAMES", {}))
        names.update(getattr(rule.rewrite, "PORTS", ()))
    return frozenset(names)


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class IsAvailable(CudaReferences):
    """``torch.cuda.is_available()`` -> ``porter_device.is_available()`` (an accelerator is selected), except in
    the test of a guard whose guarded code is CUDA-only (see the rule's docs)."""

    PRIMARY = {"is_available": "is_available"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kept: set[cst.CSTNode] = set()  # references in a guard that must still ask CUDA itself
        self._ported: frozenset[str] | None = None

    def visit_If(self, node):
        self._guard(node.test, node.body, node.orelse)

    def visit_IfExp(self, node):
        self._guard(node.test, node.body, node.orelse)

    def visit_BooleanOperation(self, node):
        if isinstance(node.operator, cst.And):  # `is_available() and <only CUDA>`: the rest is guarded by it
            parts = conjuncts(node)
            for i, part in enumerate(parts):
                for reference in self._availability(part, False):
                    if self._cuda_only(parts[i + 1:]):
                        self._kept.add(reference)

    def _guard(self, test, body, orelse) -> None:
        parts = conjuncts(test)
        for i, part in enumerate(parts):
            for negated in (False, True):
                for reference in self._availability(part, negated):
                    taken = orelse if negated else body  # what runs when CUDA is there
                    if self._cuda_only([*parts[:i], *parts[i + 1:], *([taken] if taken is not None else [])]):
                        self._kept.add(reference)

    def _availability(self, node, negated: bool) -> list[cst.CSTNode]:
        """The torch.cuda.is_available reference ``node`` calls (under one ``not`` when ``negated``)."""
        if negated:
            if not (isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Not)):
                return []
            node = node.expression
        if isinstance(node, cst.Call) and not node.args and self.qualified_name(node.func) in self.NAMES:
            return [node.func]
        return []

    def _cuda_only(self, nodes) -> bool:
        return any(self._uses_cuda_only(node) for node in nodes)

    def _uses_cuda_only(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.Import):
            return any(_under(cst.Module([]).code_for_node(alias.name), CUDA_ONLY_MODULES) for alias in node.names)
        if isinstance(node, cst.ImportFrom):
            module = cst.Module([]).code_for_node(node.module) if node.module is not None else ""
            names = [] if isinstance(node.names, cst.ImportStar) else [a.name.value for a in node.names
                                                                       if isinstance(a.name, cst.Name)]
            return not node.relative and (_under(module, CUDA_ONLY_MODULES) or any(
                _under(f"{module}.{n}", CUDA_ONLY_MODULES) and not self._is_ported(f"{module}.{n}") for n in names))
        if isinstance(node, (cst.Name, cst.Attribute)):
            name = self.qualified_name(node)
            if name is not None and _under(name, CUDA_ONLY_MODULES) and not self._is_ported(name):
                return True
            # the chain's own parts are that name; look inside calls and subscripts on the way
            inner: cst.BaseExpression = node
            while isinstance(inner, (cst.Attribute, cst.Call)):
                if isinstance(inner, cst.Call):
                    if any(self._uses_cuda_only(arg.value) for arg in inner.args):
                        return True
                    inner = inner.func
                else:
                    inner = inner.value
            return not isinstance(inner, cst.Name) and self._uses_cuda_only(inner)
        if isinstance(node, cst.Arg):
            return self._uses_cuda_only(node.value)
        return any(self._uses_cuda_only(child) for child in node.children)

    def _is_ported(self, name: str) -> bool:
        if self._ported is None:
            self._ported = ported_cuda_names()
        return name in ("torch.cuda", "torch.cuda.amp") or _under(name, self._ported)

    def replace(self, node, name):
        if node in self._kept:
            return None, ""
        return super().replace(node, name)


def _rule(id, summary, rewrite, why, how, reads="statement", after=(), triggers=None) -> Rule:
    return any_code_rule(id=id, summary=summary,
                rewrite=rewrite, triggers=triggers or (), reads=reads, after=tuple(after),
                requires=("cuda",), docs=docs(why, how))  # every one matches a torch.cuda name


SYNCHRONIZE = _rule(
    "torch.device.synchronize", "torch.cuda.synchronize() waits for the selected device", Synchronize,
    why="torch.cuda.synchronize() raises on a machine without CUDA and does not wait for an NPU's queue, so timers "
        "and benchmarks measure nothing there.",
    how="porter_device.synchronize(device): the NPU's or CUDA's synchronize; nothing to wait for on the CPU.")

CURRENT_DEVICE = _rule(
    "torch.device.current-device", "torch.cuda.current_device(): a device where a device goes, an int elsewhere",
    CurrentDevice,
    why="torch.cuda.current_device() raises without CUDA, and its int is read by torch as a CUDA device: "
        "torch.zeros(3, device=torch.cuda.current_device()) is a CUDA tensor even on an NPU machine.",
    how="As a device argument (device=, map_location=, .to(), .cuda(), device_ids=[...], torch.device(), "
        "torch.load's second argument) porter_device.current_device(), a torch.device of the selected device; "
        "anywhere else porter_device.current_index(), the index as an int (0 on the CPU). An int kept in a variable "
        "and later used as a device is not followed: give it to porter_device.as_device() by hand.")

SET_DEVICE = _rule(
    "torch.device.set-device", "torch.cuda.set_device() and `with torch.cuda.device(i)` on the selected device",
    SetDevice,
    why="Binding a process to its local GPU raises without CUDA (set_device) and binds nothing on an NPU.",
    how="porter_device.set_device(i) (nothing on the CPU) and porter_device.device_context(i), a context manager "
        "that makes device i current (a block that changes nothing on the CPU). 'cuda:1' and torch.device('cuda', "
        "1) name device 1 of the selected kind.")

COUNT = _rule(
    "torch.device.count", "torch.cuda.device_count() counts the selected device's devices", DeviceCount,
    why="torch.cuda.device_count() is 0 on an NPU machine, so launchers spawn no workers there and code that sizes "
        "its world from it runs on one process.",
    how="porter_device.device_count(): the NPU's or CUDA's count; 0 on the CPU, as torch.cuda answered there.")

IS_AVAILABLE = _rule(
    "torch.device.is-available", "torch.cuda.is_available() asks for any accelerator, except guards of CUDA-only code",
    IsAvailable, reads="function",  # the guarded branch is read to decide
    why="Code asks torch.cuda.is_available() to mean 'may I use the accelerator': False on an NPU machine, so the "
        "ported code would stay on the CPU there.",
    how="porter_device.is_available(): True where an NPU or a CUDA device is selected. Left alone where it guards "
        "code that only CUDA can run: the test of an if / conditional expression (or the left of an `and`) whose "
        "guarded side (the body, or the else-branch under `not`, and the rest of the test) imports a CUDA-only "
        "module (apex, pynvml, triton, flash_attn, bitsandbytes, cupy, ...) or uses a torch.cuda API no rule ports "
        "(get_device_capability, CUDA graphs, ...). Rewriting those would send an NPU or the CPU into a branch that "
        "cannot run there, where the else-branch (already device-neutral) ran before: the accelerate#3020 failure "
        "that transfer_to_npu's global is_available() patch causes. Only what the guard holds itself is read: a "
        "flag assigned from is_available() and tested elsewhere is rewritten.")

SEED = _rule(
    "torch.device.seed", "torch.cuda seeding seeds the selected device", Seed,
    why="torch.cuda.manual_seed(_all) seeds only CUDA generators: an NPU run is not reproducible, and code that "
        "seeds only through them is not either.",
    how="porter_device.manual_seed / manual_seed_all / seed / seed_all / initial_seed, forwarded to the selected "
        "device's generators; on the CPU seeding is torch.manual_seed's job and these do nothing.")

RNG_STATE = _rule(
    "torch.device.rng-state", "Checkpoints save and restore the selected device's RNG state", RngState,
    why="torch.cuda.get_rng_state() raises without CUDA and saves the wrong generator on an NPU, so checkpoint code "
        "breaks on save or resume.",
    how="porter_device.get_rng_state / set_rng_state (on the CPU torch's default generator) and get_rng_state_all / "
        "set_rng_state_all (one state per device: [] on the CPU, where restoring a GPU checkpoint's list is skipped).")

MEMORY = _rule(
    "torch.device.memory", "Memory statistics and the cache of the selected device", Memory,
    why="torch.cuda.memory_allocated/max_memory_*/memory_stats/empty_cache/mem_get_info raise without CUDA or "
        "report CUDA on an NPU machine; logging code calls them every few steps.",
    how="porter_device.memory_allocated / max_memory_allocated / memory_reserved / max_memory_reserved (the "
        "deprecated memory_cached names map to *_reserved) / memory_stats / reset_peak_memory_stats (also "
        "reset_max_memory_*) / empty_cache / mem_get_info: the device's numbers; 0, {} and no-ops on the CPU, whose "
        "mem_get_info is the host's free and total RAM.")

PROPERTIES = _rule(
    "torch.device.properties", "Device name, properties and bf16 support of the selected device", Properties,
    why="torch.cuda.get_device_name/get_device_properties/is_bf16_supported raise without CUDA; code reads them to "
        "log the hardware or to pick bf16.",
    how="porter_device.get_device_name / get_device_properties / is_bf16_supported: the NPU's or CUDA's answers; on "
        "the CPU the processor's name, the host's RAM and cores, and True for bf16.")

PROFILER = _rule(
    "torch.device.profiler", "nvtx ranges and the CUDA profiler, per device", Profiler,
    triggers=("nvtx", "profiler", "cudart"),
    why="torch.cuda.nvtx and cudart exist only on CUDA: a profiling flag turns them on and the run dies elsewhere.",
    how="porter_device.range_push / range_pop / profile_range (a context manager) / profiler_start / profiler_stop: "
        "nvtx and cudaProfiler on CUDA, nothing where the device has no such profiler.")

STREAMS = _rule(
    "torch.device.streams", "Events and streams of the selected device", Streams,
    why="torch.cuda.Event(enable_timing=True) timers, side streams and `with torch.cuda.stream(s)` blocks raise "
        "without CUDA and do not reach an NPU's streams.",
    how="porter_device.Event / Stream (factories; isinstance checks keep the classes) / current_stream / "
        "default_stream / stream: torch.npu's or torch.cuda's; on the CPU a CPUEvent that times with the clock and a "
        "CPUStream on which work is done when the call returns.")

RULES = [SYNCHRONIZE, CURRENT_DEVICE, SET_DEVICE, COUNT, IS_AVAILABLE, SEED, RNG_STATE, MEMORY, PROPERTIES, PROFILER,
         STREAMS]
