"""compat: SAT 0.4.12 against today's DeepSpeed (0.19)."""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.rules import JsonValue, Rule, RuleDocs, RuleTransformer

MIN_LOSS_SCALE = Rule(
    id="sat.compat.zero0-min-loss-scale", target="sat", category="compat",
    files=("sat/training/deepspeed_zero0.json",),
    summary='deepspeed_zero0.json "min_loss_scale": 0.01 -> 1', rewrite=JsonValue("min_loss_scale", "0.01", "1"),
    docs=RuleDocs(
        why="SAT's default ZeRO-0 config sets fp16.min_loss_scale to 0.01; DeepSpeed's config validation now "
            "requires a positive integer and rejects the file, so every default ZeRO-0 run fails at start.",
        how="The value becomes 1, DeepSpeed's own default and what SAT's ZeRO-1 and ZeRO-2 configs already use.",
        upstream="sat/training/deepspeed_zero0.json; deepspeed/runtime/precision_config.py (min_loss_scale: int)",
        removal="When SAT ships an integer min_loss_scale."))


class UnwrappedOptimizer(RuleTransformer):
    """``<opt>.optimizer.__class__`` -> ``getattr(<opt>, 'optimizer', <opt>).__class__``."""

    WRAPPED_CLASS = m.Attribute(value=m.Attribute(value=m.Name(), attr=m.Name("optimizer")), attr=m.Name("__class__"))

    def leave_Attribute(self, original_node, updated_node):
        if not m.matches(updated_node, self.WRAPPED_CLASS):
            return updated_node
        name = updated_node.value.value.value
        self.record(original_node, f"{name}.optimizer -> getattr({name}, 'optimizer', {name})")
        return updated_node.with_changes(value=cst.parse_expression(f"getattr({name}, 'optimizer', {name})"))


UNWRAPPED_OPTIMIZER = Rule(
    versions=">=0.4.0",
    id="sat.compat.unwrapped-optimizer", target="sat", category="compat", files=("sat/training/model_io.py",),
    summary="save_checkpoint accepts an optimizer DeepSpeed did not wrap", rewrite=UnwrappedOptimizer,
    triggers=("__class__",),
    docs=RuleDocs(
        why="save_checkpoint reads optimizer.optimizer to look for FusedEmaAdam; at ZeRO 0 in fp32 DeepSpeed "
            "returns the plain torch optimizer, which has no .optimizer, so every checkpoint save raises.",
        how="The lookup falls back to the optimizer itself when it is not wrapped.",
        upstream="sat/training/model_io.py save_checkpoint",
        removal="When SAT checks for the wrapper."))

# porter's loader of checkpoint files, as rewritten code imports it (beside porter_device and porter_ops)
CHECKPOINTS = ("porter.runtime.checkpoints", "porter_checkpoints")


class LoadWithoutRunningCode(RuleTransformer):
    """``torch.load(f, ...)`` -> ``porter_checkpoints.load(f, ...)``; a ``weights_only`` keyword is dropped, since
    the runtime decides it (always True, with SAT's RNG state allowed)."""

    def leave_Call(self, original_node, updated_node):
        if not self.refers_to(original_node.func, "torch.load"):
            return updated_node
        self.record(original_node, "torch.load(...) -> porter_checkpoints.load(...)")
        args = [a for a in updated_node.args if not (a.keyword and a.keyword.value == "weights_only")]
        if args and args[-1] is not updated_node.args[-1]:
            # the dropped keyword was the last argument: its separator (none, or a trailing comma) moves forward
            args[-1] = args[-1].with_changes(comma=updated_node.args[-1].comma)
        return updated_node.with_changes(func=cst.Attribute(self.require_import(*CHECKPOINTS), cst.Name("load")),
                                         args=args)


LOAD_CHECKPOINT = Rule(
    id="sat.compat.torch-load", target="sat", category="compat", files=("sat/training/model_io.py",),
    summary="load_checkpoint reads SAT's own checkpoints on torch >= 2.6 without running code from them",
    rewrite=LoadWithoutRunningCode, triggers=("load",),
    docs=RuleDocs(
        why="torch 2.6 made torch.load(weights_only=True) the default; SAT's checkpoints carry numpy's RNG state "
            "(a uint32 array) beside the weights, so load_checkpoint (--load, resuming) fails on every checkpoint "
            "SAT itself wrote. Turning weights_only off instead would let a crafted checkpoint run any code on "
            "the machine that resumes from it.",
        how="The call becomes porter_checkpoints.load (porter.runtime.checkpoints) with the same arguments: "
            "torch.load with weights_only=True and, for that call only (torch.serialization.safe_globals), the numpy "
            "ndarray, dtype, uint32 dtype class and reconstructor that np.random.get_state() pickles. Python's and "
            "torch's RNG states, the scheduler state and DeepSpeed's fields need nothing more. A file whose pickle "
            "names any other global is refused with one line naming it and the globals, and nothing in it runs.",
        upstream="sat/training/model_io.py load_checkpoint and save_ds_checkpoint (np_rng_state); torch 2.6 release "
                 "notes (weights_only default)",
        removal="When SAT loads its checkpoints weights-only itself (allow-listing its RNG state)."))

class PrefetchOnlyWithWorkers(RuleTransformer):
    """In a call that passes both, ``prefetch_factor=X`` -> ``prefetch_factor=X if <num_workers> > 0 else None``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.workers: list[cst.BaseExpression | None] = []  # per open call: its num_workers value

    def visit_Call(self, node):
        self.workers.append(next((a.value for a in node.args if a.keyword is not None
                                  and a.keyword.value == "num_workers"), None))

    def leave_Call(self, original_node, updated_node):
        self.workers.pop()
        return updated_node

    def leave_Arg(self, original_node, updated_node):
        workers = self.workers[-1] if self.workers else None
        if workers is None or not m.matches(updated_node, m.Arg(keyword=m.Name("prefetch_factor"))) \
                or m.matches(updated_node.value, m.IfExp()):
            return updated_node
        src = cst.Module([]).code_for_node
        self.record(original_node, "prefetch_factor passed only when there are worker processes")
        return updated_node.with_changes(
            value=cst.parse_expression(f"{_grouped(src(updated_node.value))} if {_grouped(src(workers))} > 0 else None"))


def _grouped(expression: str) -> str:
    """``expression`` as an operand: parenthesised unless it is a name, attribute, call, subscript or number."""
    node = cst.parse_expression(expression)
    if isinstance(node, (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float)):
        return expression
    return f"({expression})"


PREFETCH_FACTOR = Rule(
    id="sat.compat.prefetch-factor", target="sat", category="compat", files=("sat/data_utils/configure_data.py",),
    versions="<0.4.1", file_versions={"sat/data_utils/configure_data.py": ">=0.4.0"},
    summary="DataLoader gets prefetch_factor only with worker processes", rewrite=PrefetchOnlyWithWorkers,
    triggers=("prefetch_factor",),
    docs=RuleDocs(
        why="SAT 0.4.0 passes prefetch_factor=args.prefetch_factor to every DataLoader; torch (since 2.0) raises "
            "ValueError when prefetch_factor is given with num_workers=0, so single-process loading (porter's "
            "CPU runs, debugging) fails at the first batch.",
        how="The keyword becomes `args.prefetch_factor if args.num_workers > 0 else None`, which is the fix "
            "SAT itself shipped in 0.4.1.",
        upstream="sat/data_utils/configure_data.py make_data_loader / make_loaders (fixed in 0.4.1)",
        removal="When porter stops supporting SAT 0.4.0."))


RULES = [LOAD_CHECKPOINT, MIN_LOSS_SCALE, PREFETCH_FACTOR, UNWRAPPED_OPTIMIZER]
