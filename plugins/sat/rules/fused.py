"""fused-op: ChatGLM's GELU, GLM-130B's attention scores and softmax, and SAT's attention core through
porter.runtime.ops, where each op picks a device kernel within its documented limits or the reference math."""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.rules import Rule, RuleDocs, RuleTransformer

from .runtime import OPS, call, code

GLM130B_FILE = "sat/model/official/glm130B_model.py"


class GeluImpl(RuleTransformer):
    """The body of ChatGLM's ``gelu_impl(x)`` -> ``return porter_ops.gelu(x)``."""

    def leave_FunctionDef(self, original_node, updated_node):
        if updated_node.name.value != "gelu_impl" or "porter_ops.gelu(" in code(updated_node.body):
            return updated_node
        body = updated_node.body.body
        docstring = [s for s in body[:1] if m.matches(s, m.SimpleStatementLine(body=[m.Expr(m.SimpleString())]))]
        self.record(original_node, "gelu_impl -> porter_ops.gelu (exact tanh formula, or the device's fast GELU)")
        ret = cst.SimpleStatementLine([cst.Return(call(self, OPS, "gelu", [cst.Name("x")]))])
        return updated_node.with_changes(body=updated_node.body.with_changes(body=[*docstring, ret]))


GELU = Rule(
    id="sat.fused.gelu", target="sat", category="fused-op", files=("sat/model/official/chatglm_model.py",),
    summary="ChatGLM gelu_impl through porter_ops.gelu", rewrite=GeluImpl,
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
        body = code(updated_node.body)
        if "porter_ops." not in body and "porter_device." not in body:
            return updated_node
        kept = [d for d in updated_node.decorators if code(d.decorator) != "torch.jit.script"]
        if len(kept) == len(updated_node.decorators):
            return updated_node
        self.record(original_node, f"@torch.jit.script dropped from {updated_node.name.value} (it calls the runtime)")
        return updated_node.with_changes(decorators=kept)


UNSCRIPT = Rule(
    id="sat.fused.unscript", target="sat", category="fused-op",
    files=("sat/model/official/chatglm_model.py", "sat/model/position_embedding/rotary_embeddings.py"),
    summary="@torch.jit.script dropped where the body now calls the runtime", rewrite=Unscript,
    after=("sat.fused.gelu", "sat.rotary.index"),
    docs=RuleDocs(
        why="TorchScript cannot compile calls into porter's Python runtime, and scripting at import time is what "
            "breaks these functions on bf16 and on NPU builds of torch.",
        how="The decorator is removed only from functions whose body calls porter_ops or porter_device; every other "
            "@torch.jit.script in SAT stays.",
        upstream="sat/model/official/chatglm_model.py gelu_impl; rotary_embeddings.py apply_rotary_pos_emb*",
        removal="With the rules that introduce the runtime calls."))


class BaddbmmToBmm(RuleTransformer):
    """``r = torch.empty(...)`` then ``r = torch.baddbmm(r, a, b, beta=0.0, alpha=1.0)`` -> ``r = torch.bmm(a, b)``."""

    def leave_IndentedBlock(self, original_node, updated_node):
        body = list(updated_node.body)
        for i in range(len(body) - 1):
            empty, bmm = body[i], body[i + 1]
            if not (m.matches(empty, m.SimpleStatementLine([m.Assign([m.AssignTarget(m.Name())], m.Call())]))
                    and m.matches(bmm, m.SimpleStatementLine([m.Assign([m.AssignTarget(m.Name())], m.Call())]))):
                continue
            name = empty.body[0].targets[0].target.value
            e_call, b_call = empty.body[0].value, bmm.body[0].value
            if code(e_call.func) != "torch.empty" or code(b_call.func) != "torch.baddbmm" \
                    or bmm.body[0].targets[0].target.value != name:
                continue
            args = b_call.args
            kw = {a.keyword.value: code(a.value) for a in args if a.keyword}
            positional = [a for a in args if a.keyword is None]
            if len(positional) != 3 or code(positional[0].value) != name or kw.get("beta") not in ("0.0", "0"):
                continue
            self.record(original_node.body[i], "torch.empty + torch.baddbmm(beta=0) -> torch.bmm")
            source = cst.Module([]).code_for_node
            new_call = cst.parse_expression(
                f"torch.bmm({source(positional[1].value)}, {source(positional[2].value)})")
            new_stmt = bmm.with_changes(body=[bmm.body[0].with_changes(value=new_call)],
                                        leading_lines=empty.leading_lines)
            return updated_node.with_changes(body=body[:i] + [new_stmt] + body[i + 2:])
        return updated_node


GLM130B_BMM = Rule(
    id="sat.fused.glm130b-bmm", target="sat", category="fused-op", files=(GLM130B_FILE,),
    summary="GLM-130B attention scores by bmm, not baddbmm on an empty tensor", rewrite=BaddbmmToBmm,
    after=("sat.device.current-device",),
    docs=RuleDocs(
        why="GLM-130B allocates an uninitialised tensor on torch.cuda.current_device() only to pass it to baddbmm "
            "with beta=0: a CUDA-only allocation for a result bmm computes directly.",
        how="The torch.empty + torch.baddbmm(..., beta=0.0, alpha=1.0) pair becomes torch.bmm(a, b) (same values: "
            "beta=0 ignores the input).",
        upstream="sat/model/official/glm130B_model.py attention_fn; Ascend ModelZoo VisualGLM glm130B_model.py",
        removal="When SAT drops the baddbmm idiom."))


SOFTMAX_BLOCK = [
    "ifnot(attention_mask.shape[-2]==1and(attention_mask>0).all()):",  # prefix of the if statement
    "attention_scores=attention_scores.float()",
    "attention_scores=attention_scores*query_key_layer_scaling_coeff",
    "attention_probs=F.softmax(attention_scores,dim=-1)",
]


class Glm130bSoftmax(RuleTransformer):
    """GLM-130B's mask-fill / fp32 / scale / softmax sequence -> one porter_ops.scaled_masked_softmax call."""

    def leave_IndentedBlock(self, original_node, updated_node):
        body = list(updated_node.body)
        for i in range(len(body) - 3):
            codes = [code(s) for s in body[i:i + 4]]
            if not (codes[0].startswith(SOFTMAX_BLOCK[0]) and "masked_fill_(attention_mask,-10000.0)" in codes[0]
                    and codes[1:] == SOFTMAX_BLOCK[1:]):
                continue
            self.record(original_node.body[i], "mask fill + fp32 + scale + softmax -> porter_ops.scaled_masked_softmax")
            alias = self.require_import(*OPS).value
            stmt = cst.parse_statement(
                f"attention_probs = {alias}.scaled_masked_softmax(\n"
                "    attention_scores,\n"
                "    None if (attention_mask.shape[-2] == 1 and (attention_mask > 0).all()) else attention_mask,\n"
                "    query_key_layer_scaling_coeff,\n"
                ")\n").with_changes(leading_lines=body[i].leading_lines)
            return updated_node.with_changes(body=body[:i] + [stmt] + body[i + 4:])
        return updated_node


GLM130B_SOFTMAX = Rule(
    id="sat.fused.glm130b-softmax", target="sat", category="fused-op", files=(GLM130B_FILE,),
    summary="GLM-130B masked softmax through porter_ops.scaled_masked_softmax", rewrite=Glm130bSoftmax,
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
        if code(updated_node.func) not in ("torch.nn.functional.scaled_dot_product_attention",
                                           "F.scaled_dot_product_attention"):
            return updated_node
        positional = [a for a in updated_node.args if a.keyword is None]
        kw = {a.keyword.value: a for a in updated_node.args if a.keyword is not None}
        if len(positional) != 3 or "attn_mask" not in kw or code(kw["attn_mask"].value) != "None" \
                or set(kw) - {"attn_mask", "dropout_p", "is_causal"}:
            return updated_node  # a real mask: the semantics differ, leave it
        self.record(original_node, "scaled_dot_product_attention (no mask) -> porter_ops.attention")
        keywords = {k: kw[k].value for k in ("is_causal", "dropout_p") if k in kw}
        return call(self, OPS, "attention", [a.value for a in positional], keywords)


ATTENTION = Rule(
    id="sat.fused.attention", target="sat", category="fused-op", files=("sat/transformer_defaults.py",),
    summary="SAT's mask-free attention core through porter_ops.attention", rewrite=SdpaToAttention,
    docs=RuleDocs(
        why="attention_fn_default takes torch's scaled_dot_product_attention for full and causal masks (EVA ViT, "
            "Q-Former, cached decoding); on Ascend the fused kernel is npu_fusion_attention.",
        how="Only the call with attn_mask=None is rewritten, to porter_ops.attention(q, k, v, is_causal=..., "
            "dropout_p=...): npu_fusion_attention (BNSD, fp16/bf16) on an NPU, SDPA on CUDA and CPU. Calls with a "
            "real mask keep SAT's own path.",
        upstream="sat/transformer_defaults.py attention_fn_default",
        removal="When torch_npu's scaled_dot_product_attention reaches the fused kernel by itself."))

RULES = [GELU, UNSCRIPT, GLM130B_BMM, GLM130B_SOFTMAX, ATTENTION]
