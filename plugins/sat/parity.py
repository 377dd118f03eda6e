"""Numbers from patched vs original SAT, for `porter verify sat` and the tests.

Two entry points, each run in a fresh interpreter with the SAT under test first on sys.path:

- ``ops --originals DIR``: each rewritten op, patched function vs the same function loaded from the journal's
  saved original file under another module name, on random inputs; prints ``PORTER-PARITY {json}``.
- ``model --out FILE``: a tiny random ChatGLM (seeded) on a fixed batch: logits, gradients and a 20-step
  loss curve, saved with torch.save. Run once against the patched tree and once against the original tree
  rebuilt from the saved originals, then compared by :func:`compare_model_runs`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch
from porter_sat.smoke import model_args, sample

from porter.recipes import single_process_defaults

# dtype -> max abs diff allowed between patched and original. fp32 rewrites reorder nothing.
TOLERANCES = {"fp32": 1e-5, "bf16": 2e-2, "fp16": 2e-3}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_original(originals: Path, rel: str, name: str, *, patched: set[str]) -> ModuleType:
    """The saved original of ``rel`` as module ``name``; its own absolute imports resolve to the patched SAT.

    A file the patch left alone (not in ``patched``: no rule applies to it in this release) is its own original:
    it is loaded from the installed SAT, as the verify context reads it. A patched file whose saved original is
    missing is an error, never the patched file compared with itself."""
    import sat

    path = Path(originals) / rel
    if not path.exists():
        if rel in patched:
            raise FileNotFoundError(f"{path}: the saved original of a patched file is missing")
        path = Path(sat.__file__).resolve().parents[1] / rel
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # only a path that does not name a Python source file
        raise ImportError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


# which rule brings each op into SAT: where that rule did not apply (an older release without that code), the
# op is reported as skipped, not compared
OP_RULES = {"gelu": "sat.fused.gelu", "rotary_mul": "sat.rotary.index", "attention": "sat.fused.attention",
            "scaled_masked_softmax": "sat.fused.glm130b-softmax"}


def op_parity(originals: Path, patched: set[str], dtypes=("fp32", "bf16"), applied: set[str] | None = None
              ) -> list[dict]:
    """Each rewritten op, patched vs original on seeded random inputs, per dtype: one row per comparison (or per
    skipped op), in the order they ran. The inputs are drawn in a fixed order, skipped ops included, so that a
    comparison sees the same numbers whichever ops the release has."""
    import sat.model.official.chatglm_model as chatglm
    import sat.model.official.glm130B_model as glm130b
    import sat.model.position_embedding.rotary_embeddings as rotary
    import sat.transformer_defaults as defaults

    def original(rel: str, name: str) -> ModuleType:
        return load_original(originals, rel, name, patched=patched)

    orig_chatglm = original("sat/model/official/chatglm_model.py", "porter_original_chatglm")
    orig_rotary = original("sat/model/position_embedding/rotary_embeddings.py", "porter_original_rotary")
    orig_defaults = original("sat/transformer_defaults.py", "porter_original_defaults")
    orig_glm = original("sat/model/official/glm130B_model.py", "porter_original_glm130b")
    from porter.runtime import ops

    report = _Report(ops, applied)
    # One thread: with several, torch's tanh on this project's machine was seen, in some processes and not
    # others, to give one input two results 1.7e-4 apart on two calls of the very same function (JIT off too).
    # The check compares the port with the original, not torch with itself.
    torch.set_num_threads(1)
    ops.reset_counts()
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        _gelu_parity(report, g, dtype, orig_chatglm, chatglm)
        _rotary_parity(report, g, dtype, orig_rotary, rotary)
        _attention_parity(report, g, dtype, orig_defaults, defaults)
    _glm130b_softmax_parity(report, g, orig_glm, glm130b)
    return report.rows


class _Report:
    """op_parity's rows: a comparison with its tolerance and the runtime implementation(s) the patched code reached,
    or a skip where the op's rule did not apply (``applied`` None: every rule did)."""

    def __init__(self, ops: ModuleType, applied: set[str] | None):
        self.ops, self.applied = ops, applied
        self.rows: list[dict] = []

    def wanted(self, op: str, dtype: str) -> bool:
        if self.applied is None or OP_RULES[op] in self.applied:
            return True
        self.rows.append({"op": op, "dtype": dtype, "skipped": f"{OP_RULES[op]} does not apply to this release"})
        return False

    def add(self, op: str, dtype: str, diff: float, detail: str = "") -> None:
        ran = ", ".join(sorted(self.ops.counts))  # which implementation(s) the patched code reached
        self.ops.reset_counts()
        self.rows.append({"op": op, "dtype": dtype, "max_abs_diff": diff, "tolerance": TOLERANCES[dtype],
                          "ok": diff <= TOLERANCES[dtype],
                          "detail": "; ".join(x for x in (detail, f"ran {ran}" if ran else "") if x)})


def _gelu_parity(report: _Report, g: torch.Generator, dtype: str, original: ModuleType, patched: ModuleType) -> None:
    x = torch.randn(64, 256, generator=g).to(DTYPES[dtype])
    if not report.wanted("gelu", dtype):
        return
    want, got = original.gelu_impl(x), patched.gelu_impl(x)
    detail = ""
    if _diff(want, got) > TOLERANCES[dtype]:  # say which side moved: TorchScript's original, or ours
        eager = 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))
        detail = (f"original vs the same formula computed here {_diff(want, eager):.2e}, "
                  f"original called again {_diff(want, original.gelu_impl(x)):.2e}, "
                  f"patched vs eager {_diff(got, eager):.2e}")
    report.add("gelu", dtype, _diff(want, got), detail)


def _rotary_parity(report: _Report, g: torch.Generator, dtype: str, original: ModuleType, patched: ModuleType
                   ) -> None:
    dt = DTYPES[dtype]
    q, k = (torch.randn(32, 2, 4, 64, generator=g).to(dt) for _ in range(2))
    if not report.wanted("rotary_mul", dtype):
        return
    emb = patched.RotaryEmbedding(64, precision=dt)
    cos, sin = emb(q, seq_len=40)
    pos = torch.randint(0, 40, (32, 2), generator=g)
    want = original.apply_rotary_pos_emb_index(q, k, cos, sin, pos)
    got = patched.apply_rotary_pos_emb_index(q, k, cos, sin, pos)
    report.add("rotary_mul", dtype, max(_diff(want[0], got[0]), _diff(want[1], got[1])), "apply_rotary_pos_emb_index")


def _attention_parity(report: _Report, g: torch.Generator, dtype: str, original: ModuleType, patched: ModuleType
                      ) -> None:
    q, k, v = (torch.randn(2, 4, 16, 32, generator=g).to(DTYPES[dtype]) for _ in range(3))
    if not report.wanted("attention", dtype):
        return
    for label, mask in (("full", torch.ones(1, 1, 16, 16)), ("causal", torch.ones(1, 1, 16, 16).tril())):
        report.add("attention", dtype, _diff(original.attention_fn_default(q, k, v, mask),
                                             patched.attention_fn_default(q, k, v, mask)), f"{label} mask")


def _glm130b_softmax_parity(report: _Report, g: torch.Generator, original: ModuleType, patched: ModuleType) -> None:
    # GLM-130B attention runs in fp16 only (it casts probabilities to half).
    if not report.wanted("scaled_masked_softmax", "fp16"):
        return
    q, k, v = (torch.randn(16, 2, 4, 32, generator=g).half() for _ in range(3))
    mask = torch.ones(16, 16, dtype=torch.bool).triu(1)[None, None].expand(2, 1, 16, 16)
    want = original.SelfAttentionWithFP32SoftmaxMixin(128, 4, 1)
    got = patched.SelfAttentionWithFP32SoftmaxMixin(128, 4, 1)
    with _cuda_current_device_on_cpu():  # the original allocates its scores on torch.cuda.current_device()
        a = want.attention_fn(q, k, v, mask, output_this_layer={}, layer_id=0)
    b = got.attention_fn(q, k, v, mask, output_this_layer={}, layer_id=0)
    report.add("scaled_masked_softmax", "fp16", _diff(a, b), "GLM-130B attention_fn (bmm + masked softmax)")


def _cuda_current_device_on_cpu() -> contextlib.AbstractContextManager[object]:
    """On a machine without CUDA, let the *original* code's torch.cuda.current_device() mean the CPU: it only passes
    the answer on as a device, where torch.device("cpu") serves as well as torch's int index would on CUDA."""
    if torch.cuda.is_available():
        return contextlib.nullcontext()
    return mock.patch.object(torch.cuda, "current_device", lambda: torch.device("cpu"))


def build_tiny_chatglm(seed: int = 1234, hidden: int = 64, heads: int = 4):
    import argparse as ap

    from sat import get_args
    from sat.model.official.chatglm_model import ChatGLMModel

    single_process_defaults()
    parser = ap.ArgumentParser()
    ChatGLMModel.add_model_specific_args(parser)
    sizes = ["--hidden-size", str(hidden), "--num-attention-heads", str(heads), "--inner-hidden-size", str(2 * hidden)]
    args = get_args(["--mode", "inference", "--distributed-backend", "gloo", *model_args(seed), *sizes], parser)
    torch.manual_seed(seed)
    return ChatGLMModel(args).float()


def model_run(steps: int = 20, seed: int = 1234) -> dict:
    from porter_sat.smoke import lm_loss

    model = build_tiny_chatglm(seed)
    batch = torch.stack([sample(i) for i in range(4)])
    model.train()
    logits = model(input_ids=batch)[0]
    loss = lm_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        batch = torch.stack([sample(100 + step * 4 + i) for i in range(4)])
        loss = lm_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"logits": logits.detach(), "grads": grads, "losses": losses}


def compare_model_runs(original: dict, patched: dict) -> list[dict]:
    """logits <= 1e-5 max abs diff, gradients likewise, and each loss within 1e-5 relative."""
    assert set(original["grads"]) == set(patched["grads"]), "the two runs have different parameters"
    rows = [_model_row("logits", "max_abs_diff", _diff(original["logits"], patched["logits"]))]
    grad_diff = max(_diff(original["grads"][n], patched["grads"][n]) for n in original["grads"])
    rows.append(_model_row(f"gradients ({len(original['grads'])} tensors)", "max_abs_diff", grad_diff))
    rel = max(abs(a - b) / abs(a) for a, b in zip(original["losses"], patched["losses"]))
    rows.append(_model_row(f"loss curve ({len(original['losses'])} steps)", "max_rel_diff", rel))
    return rows


def _model_row(what: str, measure: str, diff: float, tolerance: float = 1e-5) -> dict:
    """One row of compare_model_runs: ``diff`` (a ``measure``: max_abs_diff or max_rel_diff) within ``tolerance``."""
    return {"what": what, measure: diff, "tolerance": tolerance, "ok": diff <= tolerance}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="patched vs original SAT numbers")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("ops")
    p.add_argument("--originals", type=Path, required=True)
    p.add_argument("--patched", default="", help="comma-separated paths of the files the patch changed")
    p.add_argument("--rules", default=None, help="comma-separated ids of the rules the patch applied")
    p = sub.add_parser("model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.mode == "ops":
        applied = None if args.rules is None else set(filter(None, args.rules.split(",")))
        patched = set(filter(None, args.patched.split(",")))
        print("PORTER-PARITY " + json.dumps(op_parity(args.originals, patched, applied=applied)), flush=True)
    else:
        torch.save(model_run(args.steps), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
