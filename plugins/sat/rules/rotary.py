"""rotary: the rotary position embedding through porter.runtime.ops.rotary_mul (npu_rotary_mul on Ascend).

Only the application of cos/sin is rewritten. RotaryEmbedding.forward, where 0.4.x fixed two dtype bugs of
0.3.6 (time steps built in float32, cos/sin cast to the input's dtype), is left exactly as installed: the old
recipe's copied file silently undid those fixes.
"""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.rules import Rule, RuleDocs, RuleTransformer, same

from .runtime import OPS, call

ROTARY_FILE = "sat/model/position_embedding/rotary_embeddings.py"
APPLY_FUNCTIONS = ("apply_rotary_pos_emb", "apply_rotary_pos_emb_torch", "apply_rotary_pos_emb_index",
                   "apply_rotary_pos_emb_index_single", "apply_rotary_pos_emb_index_torch")


class RotaryMul(RuleTransformer):
    """``(x * cos) + (rotate_half(x) * sin)`` -> ``porter_ops.rotary_mul(x, cos, sin)`` in SAT's apply functions."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inside: list[str] = []

    def visit_FunctionDef(self, node):
        self.inside.append(node.name.value)

    def leave_FunctionDef(self, original_node, updated_node):
        self.inside.pop()
        return updated_node

    def leave_BinaryOperation(self, original_node, updated_node):
        if not self.inside or self.inside[-1] not in APPLY_FUNCTIONS:
            return updated_node
        pattern = m.BinaryOperation(
            left=m.BinaryOperation(operator=m.Multiply()),
            operator=m.Add(),
            right=m.BinaryOperation(left=m.Call(func=m.Name("rotate_half"), args=[m.Arg()]), operator=m.Multiply()))
        if not m.matches(updated_node, pattern):
            return updated_node
        x, cos = updated_node.left.left, updated_node.left.right
        rotated, sin = updated_node.right.left.args[0].value, updated_node.right.right
        if not same(x, rotated):
            return updated_node
        name = cst.Module([]).code_for_node(x)
        self.record(original_node, f"({name} * cos) + (rotate_half({name}) * sin) -> porter_ops.rotary_mul")
        bare = x.with_changes(lpar=[], rpar=[]) if hasattr(x, "lpar") else x  # an argument needs no parentheses
        return call(self, OPS, "rotary_mul", [bare, cos, sin]) \
            .with_changes(lpar=updated_node.lpar, rpar=updated_node.rpar)


INDEX = Rule(
    id="sat.rotary.index", target="sat", category="rotary", files=(ROTARY_FILE,),
    summary="apply_rotary_pos_emb(_index, _single, _torch) through porter_ops.rotary_mul", rewrite=RotaryMul,
    triggers=("rotate_half",),
    docs=RuleDocs(
        why="ChatGLM's 2-D rotary embedding applies cos/sin with plain elementwise math four times per layer; on "
            "Ascend npu_rotary_mul fuses it. The old recipe called npu_rotary_mul unconditionally, then rolled it "
            "back without a reason (its shape limits are the likely cause).",
        how="x*cos + rotate_half(x)*sin becomes porter_ops.rotary_mul(x, cos, sin): npu_rotary_mul on an NPU when "
            "the shapes, dtypes and layout are within its documented limits, the same elementwise math otherwise.",
        upstream="sat/model/position_embedding/rotary_embeddings.py; Ascend ModelZoo VisualGLM rotary_embeddings.py",
        removal="When SAT dispatches rotary application per device itself."))


def _halves(x: cst.BaseExpression) -> tuple[cst.BaseExpression, cst.BaseExpression]:
    """``x[..., :x.shape[-1] // 2]`` and ``x[..., x.shape[-1] // 2:]`` for the tensor expression ``x``."""
    text = cst.Module([]).code_for_node(x)
    return (cst.parse_expression(f"({text})[..., :({text}).shape[-1] // 2]"),
            cst.parse_expression(f"({text})[..., ({text}).shape[-1] // 2:]"))


class RotateHalfByChunk(RuleTransformer):
    """``a, b = x[..., :x.shape[-1] // 2], x[..., x.shape[-1] // 2:]`` -> ``a, b = x.chunk(2, dim=x.ndim - 1)``."""

    PAIR = m.Assign(targets=[m.AssignTarget(m.Tuple([m.Element(), m.Element()]))],
                    value=m.Tuple([m.Element(m.Subscript()), m.Element(m.Subscript())]))

    def leave_Assign(self, original_node, updated_node):
        if not m.matches(updated_node, self.PAIR):
            return updated_node
        first, second = (e.value for e in updated_node.value.elements)
        x = first.value
        if not all(same(got, want) for got, want in zip((first, second), _halves(x))):
            return updated_node
        self.record(original_node, "rotate_half halves by torch.chunk")
        text = cst.Module([]).code_for_node(x)
        return updated_node.with_changes(value=cst.parse_expression(f"{text}.chunk(2, dim={text}.ndim - 1)"))


ROTATE_HALF = Rule(
    id="sat.rotary.rotate-half", target="sat", category="rotary", files=(ROTARY_FILE,),
    summary="rotate_half by torch.chunk", rewrite=RotateHalfByChunk, triggers=("shape",),
    docs=RuleDocs(
        why="rotate_half splits the head dimension with two strided slices; the Ascend port split it with one "
            "torch.chunk, which NPU graph compilation handles as a single split. Values are identical for the even "
            "head dimensions rotary embeddings use.",
        how="The two slices become x.chunk(2, dim=x.ndim - 1); the last-dim index stays explicit, as SAT's own "
            "comment asks (dim=-1 trips a bug in old torch versions).",
        upstream="sat/model/position_embedding/rotary_embeddings.py rotate_half",
        removal="When measured NPU performance shows no difference."))

RULES = [INDEX, ROTATE_HALF]
