"""fused-op: ChatGLM's GELU, GLM-130B's attention scores and softmax, and SAT's attention core through
porter.runtime.ops, where each op picks a device kernel within its documented limits or the reference math."""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.rules import Rule, RuleDocs, RuleTransformer, literal, same

from .runtime import DEVICE, OPS, call, calls_runtime

GLM130B_FILE = "sat/model/official/glm130B_model.py"


class GeluImpl(RuleTransformer):
    """The body of ChatGLM's ``gelu_impl(x)`` -> ``return porter_ops.gelu(x)``."""

    def leave_FunctionDef(self, original_node, updated_node):
        if updated_node.name.value != "gelu_impl" or calls_runtime(self, original_node, OPS[0]):
            return updated_node
        params = updated_node.params.params
        if len(params) != 1:
            return updated_node
        body = updated_node.body.body
        docstring = [s for s in body[:1] if m.matches(s, m.SimpleStatementLine(body=[m.Expr(m.SimpleString())]))]
        self.record(original_node, "gelu_impl -> porter_ops.gelu (exact tanh formula, or the device's fast GELU)")
        ret = cst.SimpleStatementLine([cst.Return(call(self, OPS, "gelu", [params[0].name]))])
        return updated_node.with_changes(body=updated_node.body.with_changes(body=[*docstring, ret]))


GELU = Rule(
    id="sat.fused.gelu", target="sat", category="fused-op", files=("sat/model/official/chatglm_model.py",),
    summary="ChatGLM gelu_impl through porter_ops.gelu", rewrite=GeluImpl, triggers=("gelu_impl",), reads="function",
    docs=RuleDocs(
        why="ChatGLM's MLP computes the tanh GELU as six elementwise ops under torch.jit.script. The old recipe "
            "replaced it with torch.fast_gelu, which torch_npu 2.1 and later turned into an error.",
        how="gelu_impl returns porter_ops.gelu(x). PORTER_GELU=exact (default) keeps the tanh formula on every "
            "device; PORTER_GELU=fast uses torch_npu.fast_gelu (npu_fast_gelu for bf16) on an NPU.",
        upstream="sat/model/official/chatglm_model.py gelu_impl; Ascend ModelZoo VisualGLM chatglm_model.py",
        removal="When SAT's ChatGLM calls a device-dispatched GELU."))


class Unscript(RuleTransformer):
    """Drop ``@torch.jit.script`` from functions whose body now calls porter's runtime (TorchScript cannot)."""

    def leave_FunctionDef(self, original_node, updated_node):
        kept = [d for d, o in zip(updated_node.decorators, original_node.decorators)
                if not self.refers_to(o.decorator, "torch.jit.script")]
        if len(kept) == len(updated_node.decorators):
            return updated_node  # not scripted (asked first: the search of the body below is the costly part)
        if not calls_runtime(self, original_node.body, OPS[0], DEVICE[0]):
            return updated_node
        self.record(original_node, f"@torch.jit.script dropped from {updated_node.name.value} (it calls the runtime)")
        return updated_node.with_changes(decorators=kept)


UNSCRIPT = Rule(
    id="sat.fused.unscript", target="sat", category="fused-op",
    files=("sat/model/official/chatglm_model.py", "sat/model/position_embedding/rotary_embeddings.py"),
    summary="@torch.jit.script dropped where the body now calls the runtime", rewrite=Unscript,
    triggers=("script",), reads="function",
    after=("sat.fused.gelu", "sat.rotary.index"),
    docs=RuleDocs(
        why="TorchScript cannot compile calls into porter's Python runtime, and scripting at import time is what "
            "breaks these functions on bf16 and on NPU builds of torch.",
        how="The decorator is removed only from functions whose body calls porter_ops or porter_device; every other "
            "@torch.jit.script in SAT stays.",
        upstream="sat/model/official/chatglm_model.py gelu_impl; rotary_embeddings.py apply_rotary_pos_emb*",
        removal="With the rules that introduce the runtime calls."))


ASSIGN_CALL = m.SimpleStatementLine([m.Assign([m.AssignTarget(m.Name())], m.Call())])


class BaddbmmToBmm(RuleTransformer):
    """``r = torch.empty(...)`` then ``r = torch.baddbmm(r, a, b, beta=0.0, alpha=1.0)`` -> ``r = torch.bmm(a, b)``."""

    def leave_IndentedBlock(self, original_node, updated_node):
        body = list(updated_node.body)
        for i in range(len(body) - 1):
            empty, bmm = original_node.body[i], original_node.body[i + 1]
            if not (m.matches(empty, ASSIGN_CALL) and m.matches(bmm, ASSIGN_CALL)):
                continue
            name = empty.body[0].targets[0].target.value
            e_call, b_call = empty.body[0].value, bmm.body[0].value
            if not (self.refers_to(e_call.func, "torch.empty") and self.refers_to(b_call.func, "torch.baddbmm")
                    and bmm.body[0].targets[0].target.value == name):
                continue
            keywords = {a.keyword.value: literal(a.value) for a in b_call.args if a.keyword}
            positional = [a for a in b_call.args if a.keyword is None]
            if len(positional) != 3 or not m.matches(positional[0].value, m.Name(name)) \
                    or keywords.get("beta") != 0 or keywords.get("alpha", 1) != 1 or set(keywords) - {"beta", "alpha"}:
                continue
            self.record(original_node.body[i], "torch.empty + torch.baddbmm(beta=0) -> torch.bmm")
            updated_call = body[i + 1].body[0].value
            new_call = updated_call.with_changes(
                func=updated_call.func.with_changes(attr=cst.Name("bmm")) if isinstance(updated_call.func, cst.Attribute)
                else cst.Attribute(self.require_import("torch"), cst.Name("bmm")),
                args=[a.with_changes(comma=cst.MaybeSentinel.DEFAULT, whitespace_after_arg=cst.SimpleWhitespace(""))
                      for a in updated_call.args[1:3]],
                whitespace_before_args=cst.SimpleWhitespace(""))
            new_stmt = body[i + 1].with_changes(body=[body[i + 1].body[0].with_changes(value=new_call)],
                                                leading_lines=body[i].leading_lines)
            return updated_node.with_changes(body=body[:i] + [new_stmt] + body[i + 2:])
        return updated_node


GLM130B_BMM = Rule(
    id="sat.fused.glm130b-bmm", target="sat", category="fused-op", files=(GLM130B_FILE,),
    summary="GLM-130B attention scores by bmm, not baddbmm on an empty tensor", rewrite=BaddbmmToBmm,
    triggers=("baddbmm",), reads="function",
    after=("sat.device.current-device",),
    docs=RuleDocs(
        why="GLM-130B allocates an uninitialised tensor on torch.cuda.current_device() only to pass it to baddbmm "
            "with beta=0: a CUDA-only allocation for a result bmm computes directly.",
        how="The torch.empty + torch.baddbmm(..., beta=0.0, alpha=1.0) pair becomes torch.bmm(a, b) (same values: "
            "beta=0 ignores the input).",
        upstream="sat/model/official/glm130B_model.py attention_fn; Ascend ModelZoo VisualGLM glm130B_model.py",
        removal="When SAT drops the baddbmm idiom."))


def _assigns(stmt: cst.CSTNode) -> tuple[str, cst.BaseExpression] | None:
    """``name = value`` as (name, value), for a one-target simple assignment."""
    if not m.matches(stmt, m.SimpleStatementLine([m.Assign([m.AssignTarget(m.Name())])])):
        return None
    # the pattern has just checked these types; ensure_type tells the type checker
    assign = cst.ensure_type(cst.ensure_type(stmt, cst.SimpleStatementLine).body[0], cst.Assign)
    return cst.ensure_type(assign.targets[0].target, cst.Name).value, assign.value


class Glm130bSoftmax(RuleTransformer):
    """GLM-130B's attention tail, four statements::

        if not (<mask>.shape[-2] == 1 and (<mask> > 0).all()):
            <scores>.masked_fill_(<mask>, -10000.0)
        <scores> = <scores>.float()
        <scores> = <scores> * <coeff>
        <probs> = softmax(<scores>, dim=-1)        # torch.nn.functional.softmax, however imported

    -> ``<probs> = porter_ops.scaled_masked_softmax(<scores>, None if <all visible> else <mask>, <coeff>)``.
    """

    def leave_IndentedBlock(self, original_node, updated_node):
        body = list(updated_node.body)
        for i in range(len(body) - 3):
            found = self._match(original_node.body[i:i + 4])
            if found is None:
                continue
            scores, mask, coeff, probs, visible = found
            self.record(original_node.body[i], "mask fill + fp32 + scale + softmax -> porter_ops.scaled_masked_softmax")
            alias = self.require_import(*OPS).value
            src = cst.Module([]).code_for_node
            stmt = cst.parse_statement(
                f"{probs} = {alias}.scaled_masked_softmax(\n"
                f"    {scores},\n"
                f"    None if ({src(visible.with_changes(lpar=[], rpar=[]))}) else {src(mask)},\n"
                f"    {src(coeff)},\n"
                ")\n").with_changes(leading_lines=body[i].leading_lines)
            return updated_node.with_changes(body=body[:i] + [stmt] + body[i + 4:])
        return updated_node

    def _match(self, stmts):
        guard, to_float, scale, softmax = stmts
        if not m.matches(guard, m.If(test=m.UnaryOperation(operator=m.Not()), orelse=None)):
            return None
        fills = [cst.ensure_type(f, cst.Call)
                 for f in m.findall(guard.body, m.Call(func=m.Attribute(attr=m.Name("masked_fill_"))))]
        if len(guard.body.body) != 1 or len(fills) != 1 or len(fills[0].args) != 2 \
                or literal(fills[0].args[1].value) != -10000.0:
            return None
        scores, mask = cst.ensure_type(fills[0].func, cst.Attribute).value, fills[0].args[0].value
        if not isinstance(scores, cst.Name):
            return None
        name = scores.value
        visible = guard.test.expression
        want = cst.parse_expression("__mask__.shape[-2] == 1 and (__mask__ > 0).all()")
        if not same(visible, _substitute(want, "__mask__", mask)):
            return None
        floated, scaled, softmaxed = (_assigns(s) for s in (to_float, scale, softmax))
        if floated is None or scaled is None or softmaxed is None or floated[0] != name or scaled[0] != name:
            return None
        if not same(floated[1], cst.parse_expression(f"{name}.float()")):
            return None
        product = scaled[1]
        if not isinstance(product, cst.BinaryOperation) \
                or not m.matches(product, m.BinaryOperation(left=m.Name(name), operator=m.Multiply())):
            return None
        probs, call_ = softmaxed
        if not (isinstance(call_, cst.Call)
                and m.matches(call_, m.Call(args=[m.Arg(m.Name(name), keyword=None), m.Arg(keyword=m.Name("dim"))]))
                and self.refers_to(call_.func, "torch.nn.functional.softmax") and literal(call_.args[1].value) == -1):
            return None
        return name, mask, product.right, probs, visible


def _substitute(tree: cst.BaseExpression, placeholder: str, value: cst.BaseExpression) -> cst.BaseExpression:
    """``tree`` with every Name ``placeholder`` replaced by ``value`` (parenthesised: precedence stays)."""
    class Put(cst.CSTTransformer):
        def leave_Name(self, original_node, updated_node):
            if updated_node.value != placeholder:
                return updated_node
            if isinstance(value, (cst.Name, cst.Attribute, cst.Subscript, cst.Call)):
                return value
            return value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])

    result = tree.visit(Put())
    assert isinstance(result, cst.BaseExpression)  # Put replaces a Name by an expression, never removes or flattens
    return result


GLM130B_SOFTMAX = Rule(
    id="sat.fused.glm130b-softmax", target="sat", category="fused-op", files=(GLM130B_FILE,),
    summary="GLM-130B masked softmax through porter_ops.scaled_masked_softmax", rewrite=Glm130bSoftmax,
    triggers=("masked_fill_",), reads="function",
    docs=RuleDocs(
        why="The old recipe called npu_scaled_masked_softmax unconditionally, although the kernel needs the last "
            "two dims in [32, 4096] and divisible by 32: decoding with one query token broke it.",
        how="The sequence becomes porter_ops.scaled_masked_softmax(scores, mask or None, scale): the NPU kernel "
            "when its limits hold, GLM-130B's own math (fill -10000, fp32, scale, softmax) otherwise. The "
            "following .half() stays.",
        upstream="sat/model/official/glm130B_model.py attention_fn; Ascend ModelZoo VisualGLM glm130B_model.py",
        removal="When SAT dispatches masked softmax per device."))


class SdpaToAttention(RuleTransformer):
    """SAT's mask-free ``F.scaled_dot_product_attention(q, k, v, attn_mask=None, ...)`` -> ``porter_ops.attention``."""

    def leave_Call(self, original_node, updated_node):
        if not self.refers_to(original_node.func, "torch.nn.functional.scaled_dot_product_attention"):
            return updated_node
        positional = [a for a in updated_node.args if a.keyword is None]
        kw = {a.keyword.value: a for a in updated_node.args if a.keyword is not None}
        if len(positional) != 3 or "attn_mask" not in kw or literal(kw["attn_mask"].value) is not None \
                or set(kw) - {"attn_mask", "dropout_p", "is_causal"}:
            return updated_node  # a real mask: the semantics differ, leave it
        self.record(original_node, "scaled_dot_product_attention (no mask) -> porter_ops.attention")
        keywords = {k: kw[k].value for k in ("is_causal", "dropout_p") if k in kw}
        return call(self, OPS, "attention", [a.value for a in positional], keywords)


ATTENTION = Rule(
    versions=">=0.4.1",
    id="sat.fused.attention", target="sat", category="fused-op", files=("sat/transformer_defaults.py",),
    summary="SAT's mask-free attention core through porter_ops.attention", rewrite=SdpaToAttention,
    triggers=("scaled_dot_product_attention",),
    docs=RuleDocs(
        why="attention_fn_default takes torch's scaled_dot_product_attention for full and causal masks (EVA ViT, "
            "Q-Former, cached decoding); on Ascend the fused kernel is npu_fusion_attention.",
        how="Only the call with attn_mask=None is rewritten, to porter_ops.attention(q, k, v, is_causal=..., "
            "dropout_p=...): npu_fusion_attention (BNSD, fp16/bf16) on an NPU, SDPA on CUDA and CPU. Calls with a "
            "real mask keep SAT's own path.",
        upstream="sat/transformer_defaults.py attention_fn_default",
        removal="When torch_npu's scaled_dot_product_attention reaches the fused kernel by itself."))

RULES = [GELU, UNSCRIPT, GLM130B_BMM, GLM130B_SOFTMAX, ATTENTION]
