"""quantization: SAT's weight-only int8/int4 quantization (`--quant`) through porter.runtime.quant instead of
cpm_kernels' embedded CUDA binary, so a quantized model packs, dequantizes and multiplies on any device."""
from __future__ import annotations

from typing import ClassVar

import libcst as cst
import libcst.matchers as m

from porter.rules import Rule, RuleDocs, RuleTransformer

from .runtime import QUANT, call, calls_runtime

KERNELS_FILE = "sat/quantization/kernels.py"
REMOVAL = "When SAT's quantization stops depending on cpm_kernels' CUDA binary (or dispatches per device)."
CATEGORY = "quantization"
STUB_COMMENT = ("# cpm_kernels' CUDA binary is not loaded: porter.runtime.quant packs, dequantizes and multiplies "
                "on any device")


def _upstream(what: str) -> str:
    return f"{KERNELS_FILE} {what} (ChatGLM-6B's quantization.py, on cpm_kernels)"


def _imports_cpm_kernels(statement: cst.CSTNode) -> bool:
    """``from cpm_kernels... import ...`` or ``import cpm_kernels...`` as one simple statement line."""
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    for small in statement.body:
        if isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative:
            if cst.Module([]).code_for_node(small.module).split(".")[0] == "cpm_kernels":
                return True
        if isinstance(small, cst.Import) and any(
                cst.Module([]).code_for_node(alias.name).split(".")[0] == "cpm_kernels" for alias in small.names):
            return True
    return False


def _none_assignments(handler: cst.ExceptHandler) -> list[str]:
    """The names the handler's own statements set to None (``kernels = None``), in order."""
    names = []
    for statement in handler.body.body:
        if m.matches(statement, m.SimpleStatementLine([m.Assign([m.AssignTarget(m.Name())], m.Name("None"))])):
            # the pattern has just checked these types; ensure_type tells the type checker
            line = cst.ensure_type(statement, cst.SimpleStatementLine)
            target = cst.ensure_type(line.body[0], cst.Assign).targets[0].target
            names.append(cst.ensure_type(target, cst.Name).value)
    return names


class CpmKernelsStub(RuleTransformer):
    """``try: from cpm_kernels... import ...; <build the kernels> except ...: kernels = None; <warn>`` -> what the
    except branch leaves defined (``kernels = None``), under a comment that says who computes instead."""

    def visit_FunctionDef(self, node):
        return False  # a try inside a function imports lazily, when it runs: only the module's own loader is ported

    def visit_ClassDef(self, node):
        return False

    def leave_Try(self, original_node, updated_node):
        if not any(_imports_cpm_kernels(s) for s in original_node.body.body) or original_node.orelse is not None \
                or original_node.finalbody is not None:
            return updated_node
        if any(m.findall(h.body, m.Raise()) for h in original_node.handlers):
            return updated_node  # the failure path raises: without cpm_kernels the module was never importable
        names = list(dict.fromkeys(n for h in original_node.handlers for n in _none_assignments(h)))
        if not names:
            return updated_node  # the failure path defines nothing: not SAT's guarded loader, leave it
        self.record(original_node, f"cpm_kernels' CUDA binary no longer loaded: {', '.join(names)} = None "
                                   "(porter.runtime.quant computes)")
        comment = cst.EmptyLine(comment=cst.Comment(STUB_COMMENT))
        lines = [cst.parse_statement(f"{name} = None\n") for name in names]
        first = lines[0].with_changes(leading_lines=[*updated_node.leading_lines, comment])
        return cst.FlattenSentinel([first, *lines[1:]])


CPM_KERNELS = Rule(
    id="sat.quant.cpm-kernels", target="sat", category=CATEGORY, files=(KERNELS_FILE,),
    summary="cpm_kernels' embedded CUDA binary no longer loaded at import", rewrite=CpmKernelsStub,
    triggers=("cpm_kernels",), reads="function",  # the whole try statement is replaced
    docs=RuleDocs(
        why="Importing sat.quantization.kernels (VisualGLM's cli_demo and infer_util import quantize from it, "
            "--quant or not) decodes a bz2 CUDA binary and loads it through cpm_kernels; without CUDA (or "
            "cpm_kernels) that fails and prints 'Failed to load cpm_kernels' on every import.",
        how="The try statement becomes what its except branch leaves defined, kernels = None, with a comment: "
            "nothing calls the kernels once sat.quant.pack-int4 and sat.quant.dequantize have ported their two "
            "callers.",
        upstream=_upstream("the kernels' loader"), removal=REMOVAL))


class BodyToRuntime(RuleTransformer):
    """Base: the body of ``def FUNCTION(<ARITY plain parameters>)`` -> ``return porter_quant.RUNTIME(<parameters>)``,
    its docstring kept. Subclasses set FUNCTION, RUNTIME and ARITY."""

    FUNCTION: ClassVar[str] = ""
    RUNTIME: ClassVar[str] = ""
    ARITY: ClassVar[int] = 0

    def leave_FunctionDef(self, original_node, updated_node):
        params = updated_node.params
        if updated_node.name.value != self.FUNCTION or len(params.params) != self.ARITY or params.posonly_params \
                or params.kwonly_params or not isinstance(params.star_arg, cst.MaybeSentinel) \
                or params.star_kwarg is not None or calls_runtime(self, original_node.body, QUANT[0]):
            return updated_node
        body = updated_node.body.body
        docstring = [s for s in body[:1] if m.matches(s, m.SimpleStatementLine(body=[m.Expr(m.SimpleString())]))]
        self.record(original_node, f"{self.FUNCTION} -> porter_quant.{self.RUNTIME} (no cpm_kernels CUDA kernel)")
        ret = cst.SimpleStatementLine([cst.Return(call(self, QUANT, self.RUNTIME, [p.name for p in params.params]))])
        return updated_node.with_changes(body=updated_node.body.with_changes(body=[*docstring, ret]))



class PackInt4(BodyToRuntime):
    FUNCTION, RUNTIME, ARITY = "compress_int4_weight", "pack_int4", 1


class Dequantize(BodyToRuntime):
    FUNCTION, RUNTIME, ARITY = "extract_weight_to_half", "dequantize", 3


PACK_INT4 = Rule(
    id="sat.quant.pack-int4", target="sat", category=CATEGORY, files=(KERNELS_FILE,),
    summary="int4 weights packed by porter_quant.pack_int4", rewrite=PackInt4,
    triggers=(PackInt4.FUNCTION,), reads="function",
    docs=RuleDocs(
        why="compress_int4_weight packs two int4 values per byte with cpm_kernels' int4WeightCompression CUDA "
            "kernel, on torch.cuda.current_stream(): quantize(model, 4) fails on any other device.",
        how="Its body becomes return porter_quant.pack_int4(weight): the same [n, m // 2] int8 tensor in SAT's "
            "(ChatGLM's) nibble order, even column in the high nibble, on the weight's own device.",
        upstream=_upstream("compress_int4_weight"), removal=REMOVAL))

DEQUANTIZE = Rule(
    id="sat.quant.dequantize", target="sat", category=CATEGORY, files=(KERNELS_FILE,),
    summary="Quantized weights expanded by porter_quant.dequantize", rewrite=Dequantize,
    triggers=(Dequantize.FUNCTION,), reads="function",
    docs=RuleDocs(
        why="extract_weight_to_half expands int8/int4 weights times their per-row scale with cpm_kernels' CUDA "
            "kernels into a tensor allocated on device='cuda': every quantized forward and backward needs it.",
        how="Its body becomes return porter_quant.dequantize(weight, scale_list, source_bit_width): the weight "
            "(int4 unpacked first) times its scale, in the scale's dtype, on the weight's device.",
        upstream=_upstream("extract_weight_to_half"), removal=REMOVAL))


class QuantizedMatmul(RuleTransformer):
    """``W8A16Linear.apply(x, weight, scale, bits)`` -> ``porter_quant.weight_quant_linear(x, weight, scale, bits)``."""

    APPLY: ClassVar[str] = "sat.quantization.kernels.W8A16Linear.apply"  # the class imported from SAT elsewhere

    def leave_Call(self, original_node, updated_node):
        func = original_node.func
        name = self.qualified_name(func)  # None: the class this file defines
        local = m.matches(func, m.Attribute(m.Name("W8A16Linear"), m.Name("apply"))) and name in (None, "W8A16Linear.apply")
        if not (local or name == self.APPLY) or len(updated_node.args) != 4 \
                or any(a.keyword is not None or a.star for a in updated_node.args):
            return updated_node
        self.record(original_node, "W8A16Linear.apply -> porter_quant.weight_quant_linear")
        alias = self.require_import(*QUANT)  # only the callee changes: the arguments keep their layout
        return updated_node.with_changes(func=cst.Attribute(alias, cst.Name("weight_quant_linear")))


LINEAR = Rule(
    id="sat.quant.linear", target="sat", category=CATEGORY, files=(KERNELS_FILE,),
    summary="Quantized layers multiply through porter_quant.weight_quant_linear", rewrite=QuantizedMatmul,
    triggers=("W8A16Linear",),
    docs=RuleDocs(
        why="QuantizedLinear and the quantized column- and row-parallel layers call W8A16Linear.apply, an autograd "
            "Function whose forward and backward dequantize through cpm_kernels on CUDA.",
        how="The three calls become porter_quant.weight_quant_linear(x, weight, scale, bits): x @ dequantized.T, "
            "differentiable with respect to x, on any device. W8A16Linear stays defined, unused.",
        upstream=_upstream("QuantizedLinear, QuantizedColumnParallelLinear, QuantizedRowParallelLinear .forward"),
        removal=REMOVAL))


RULES = [CPM_KERNELS, PACK_INT4, DEQUANTIZE, LINEAR]
