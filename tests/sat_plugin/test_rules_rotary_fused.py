"""sat.rotary.*, sat.fused.*, sat.imports.triton and sat.compat.*: source in, source out."""
import textwrap

from porter_sat.rules import compat, fused, imports, rotary

from porter.rewrite import rewrite_file
from porter.testing import assert_rewrites, assert_untouched, rewrite

OPS = "import porter.runtime.ops as porter_ops\n"


def test_rotary_index_uses_rotary_mul():
    assert_rewrites(rotary.INDEX, """
        def apply_rotary_pos_emb_index(q, k, cos, sin, position_id):
            cos, sin = F.embedding(position_id, cos.squeeze(1)).unsqueeze(2), F.embedding(position_id, sin.squeeze(1)).unsqueeze(2)
            q, k = (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
            return q, k
    """, """
        import porter.runtime.ops as porter_ops

        def apply_rotary_pos_emb_index(q, k, cos, sin, position_id):
            cos, sin = F.embedding(position_id, cos.squeeze(1)).unsqueeze(2), F.embedding(position_id, sin.squeeze(1)).unsqueeze(2)
            q, k = porter_ops.rotary_mul(q, cos, sin), porter_ops.rotary_mul(k, cos, sin)
            return q, k
    """)


def test_rotary_index_leaves_other_functions_and_mismatched_operands():
    assert_untouched(rotary.INDEX, """
        def apply_rotary_pos_emb_index_fused(q, k, cos, sin, position_id):
            return (q * cos) + (rotate_half(q) * sin)
        def apply_rotary_pos_emb_index(q, k, cos, sin, position_id):
            return (q * cos) + (rotate_half(k) * sin)
    """)


def test_rotate_half_by_chunk():
    assert_rewrites(rotary.ROTATE_HALF, """
        def rotate_half(x):
            x1, x2 = x[..., :x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
            return torch.cat((-x2, x1), dim=x1.ndim - 1)
    """, """
        def rotate_half(x):
            x1, x2 = x.chunk(2, dim=x.ndim - 1)
            return torch.cat((-x2, x1), dim=x1.ndim - 1)
    """)


def test_gelu_keeps_docstring_and_unscript_drops_only_runtime_callers():
    before = '''
        @torch.jit.script
        def gelu_impl(x):
            """OpenAI's gelu implementation."""
            return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))

        @torch.jit.script
        def other(x):
            return x * 2
    '''
    import textwrap
    out = rewrite_file("sat/model/official/chatglm_model.py", textwrap.dedent(before).lstrip(),
                       [fused.GELU, fused.UNSCRIPT])
    assert out.after == OPS + "\n" + textwrap.dedent('''
        def gelu_impl(x):
            """OpenAI's gelu implementation."""
            return porter_ops.gelu(x)

        @torch.jit.script
        def other(x):
            return x * 2
    ''').lstrip()
    assert out.rule_ids == ["sat.fused.gelu", "sat.fused.unscript"]
    again = rewrite_file(out.path, out.after, [fused.GELU, fused.UNSCRIPT], enforce_required=False)
    assert not again.changed


def test_glm130b_bmm():
    assert_rewrites(fused.GLM130B_BMM, """
        def f(q, k, output_size):
            matmul_result = torch.empty(
                output_size[0] * output_size[1], output_size[2], output_size[3],
                dtype=q.dtype, device=porter_device.current_device(),
            )

            matmul_result = torch.baddbmm(
                matmul_result,
                q.transpose(0, 1),  # [b * np, sq, hn]
                k.transpose(0, 1).transpose(1, 2),  # [b * np, hn, sk]
                beta=0.0,
                alpha=1.0,
            )
            return matmul_result
    """, """
        def f(q, k, output_size):
            matmul_result = torch.bmm(q.transpose(0, 1), k.transpose(0, 1).transpose(1, 2))
            return matmul_result
    """)
    # beta != 0 reads the input tensor: not equivalent, left alone
    assert_untouched(fused.GLM130B_BMM, """
        def f(r, q, k):
            r = torch.empty(3)
            r = torch.baddbmm(r, q, k, beta=1.0)
    """)


def test_glm130b_softmax():
    assert_rewrites(fused.GLM130B_SOFTMAX, """
        import torch.nn.functional as F
        def f():
            if True:
                pass
            else:
                if not (attention_mask.shape[-2] == 1 and (attention_mask > 0).all()):
                    # if auto-regressive, skip
                    attention_scores.masked_fill_(attention_mask, -10000.0)

                attention_scores = attention_scores.float()
                attention_scores = attention_scores * query_key_layer_scaling_coeff

                attention_probs = F.softmax(attention_scores, dim=-1)

                attention_probs = attention_probs.half()
    """, """
        import torch.nn.functional as F
        import porter.runtime.ops as porter_ops

        def f():
            if True:
                pass
            else:
                attention_probs = porter_ops.scaled_masked_softmax(
                    attention_scores,
                    None if (attention_mask.shape[-2] == 1 and (attention_mask > 0).all()) else attention_mask,
                    query_key_layer_scaling_coeff,
                )

                attention_probs = attention_probs.half()
    """)


def test_attention_only_without_a_mask():
    assert_rewrites(fused.ATTENTION, """
        import torch
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None,
            dropout_p=dropout_p,
            is_causal=not is_full
        )
    """, """
        import torch
        import porter.runtime.ops as porter_ops

        out = porter_ops.attention(q, k, v, is_causal=not is_full, dropout_p=dropout_p)
    """)
    assert_untouched(fused.ATTENTION, "import torch.nn.functional as F\n"
                                      "out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n")


def test_triton_import_is_guarded():
    assert_rewrites(imports.TRITON, """
        import torch
        from .triton_rotary import apply_rotary
    """, """
        import torch
        import porter.runtime.optional as porter_optional

        try:
            from .triton_rotary import apply_rotary
        except ImportError as porter_import_error:  # triton is optional: only FastRotaryEmbedding needs it
            apply_rotary = porter_optional.missing('triton', 'apply_rotary', porter_import_error)
    """)


def test_missing_stand_in_names_the_package():
    import pytest

    from porter.runtime.optional import missing

    stand_in = missing("triton", "apply_rotary", ModuleNotFoundError("No module named 'triton'"))
    with pytest.raises(ImportError, match="apply_rotary needs triton"):
        stand_in(1, 2)


def test_min_loss_scale_json():
    before = '{\n  "fp16": {\n    "loss_scale": 0,\n    "min_loss_scale": 0.01\n  }\n}\n'
    assert_rewrites(compat.MIN_LOSS_SCALE, before, before.replace("0.01", "1"))
    assert_untouched(compat.MIN_LOSS_SCALE, '{"min_loss_scale": 0.015}\n')


def test_unwrapped_optimizer():
    assert_rewrites(compat.UNWRAPPED_OPTIMIZER, """
        if optimizer is not None and optimizer.optimizer.__class__.__name__ == "FusedEmaAdam":
            pass
    """, """
        if optimizer is not None and getattr(optimizer, 'optimizer', optimizer).__class__.__name__ == "FusedEmaAdam":
            pass
    """)


def test_torch_load_goes_through_porters_loader_which_runs_no_code():
    assert_rewrites(compat.LOAD_CHECKPOINT, """
        import torch
        sd = torch.load(checkpoint_name, map_location='cpu')
    """, """
        import torch
        import porter.runtime.checkpoints as porter_checkpoints

        sd = porter_checkpoints.load(checkpoint_name, map_location='cpu')
    """)
    # weights_only is the runtime's to decide: an explicit one (either way) is dropped, with its separator
    assert_rewrites(compat.LOAD_CHECKPOINT, """
        import torch
        a = torch.load(path, weights_only=False)
        b = torch.load(path, weights_only=True, map_location='cpu')
        c = torch.load(
            path,
            weights_only=False,
        )
    """, """
        import torch
        import porter.runtime.checkpoints as porter_checkpoints

        a = porter_checkpoints.load(path)
        b = porter_checkpoints.load(path, map_location='cpu')
        c = porter_checkpoints.load(
            path,
        )
    """)


# Aliases and other layouts: the rules read what the code means, not how it is spelt.

def test_rotary_rules_ignore_layout_and_names():
    out, matches = rewrite(rotary.INDEX, """
        def apply_rotary_pos_emb(query, cos, sin):
            return ((query*cos) +
                    (rotate_half( query )*sin))
    """)
    assert len(matches) == 1 and "porter_ops.rotary_mul(query, cos, sin)" in out, out
    assert_rewrites(rotary.ROTATE_HALF, """
        def rotate_half(t):
            a, b = t[..., : t.shape[-1]//2], t[..., t.shape[-1]//2 :]  # halves
            return torch.cat((-b, a), dim=a.ndim - 1)
    """, """
        def rotate_half(t):
            a, b = t.chunk(2, dim=t.ndim - 1)  # halves
            return torch.cat((-b, a), dim=a.ndim - 1)
    """)
    assert_untouched(rotary.ROTATE_HALF, "a, b = t[..., :t.shape[-1] // 3], t[..., t.shape[-1] // 3:]\n")


def test_fused_rules_through_aliases():
    out = rewrite_file("sat/model/official/chatglm_model.py", textwrap.dedent('''
        import torch as th
        @th.jit.script
        def gelu_impl(v):
            return 0.5 * v * (1.0 + th.tanh(0.79788456 * v * (1.0 + 0.044715 * v * v)))
    ''').lstrip(), [fused.GELU, fused.UNSCRIPT])
    assert "@th.jit.script" not in out.after and "return porter_ops.gelu(v)" in out.after, out.after
    assert_rewrites(fused.GLM130B_BMM, """
        import torch as th
        def f(a, b):
            r = th.empty(4, 3, 3)
            r = th.baddbmm(r, a, b, beta=0, alpha=1)
            return r
    """, """
        import torch as th
        def f(a, b):
            r = th.bmm(a, b)
            return r
    """)
    out, matches = rewrite(fused.ATTENTION, """
        from torch.nn.functional import scaled_dot_product_attention as sdpa
        o = sdpa(q, k, v, attn_mask=None, is_causal=True)
    """)
    assert len(matches) == 1 and "porter_ops.attention(q, k, v, is_causal=True)" in out, out


def test_glm130b_softmax_through_another_import_and_names():
    out, matches = rewrite(fused.GLM130B_SOFTMAX, """
        from torch.nn import functional as nnf
        def f(s, m, c):
            if not (m.shape[-2] == 1 and (m > 0).all()):
                s.masked_fill_(m, -10000.0)
            s = s.float()
            s = s * c
            p = nnf.softmax(s, dim=-1)
            return p
    """)
    assert len(matches) == 1, out
    assert "p = porter_ops.scaled_masked_softmax(\n        s,\n        None if (m.shape[-2] == 1 and (m > 0).all()) else m,\n" \
           "        c,\n    )" in out, out
    # another softmax (not torch's) or another fill value is not this block
    assert_untouched(fused.GLM130B_SOFTMAX, """
        def f(s, m, c):
            if not (m.shape[-2] == 1 and (m > 0).all()):
                s.masked_fill_(m, -10000.0)
            s = s.float()
            s = s * c
            p = mylib.softmax(s, dim=-1)
    """)


def test_compat_and_import_rules_through_aliases():
    assert_rewrites(compat.LOAD_CHECKPOINT, "from torch import load\nsd = load(path)\n",
                    "from torch import load\nimport porter.runtime.checkpoints as porter_checkpoints\n\n"
                    "sd = porter_checkpoints.load(path)\n")
    assert_untouched(compat.LOAD_CHECKPOINT, "import pickle as torch\nsd = torch.load(f)\n")
    assert_rewrites(compat.UNWRAPPED_OPTIMIZER, "name = opt.optimizer.__class__.__name__\n",
                    "name = getattr(opt, 'optimizer', opt).__class__.__name__\n")
    out, matches = rewrite(imports.TRITON, """
        from sat.model.position_embedding.triton_rotary import apply_rotary as rotary_kernel
    """)
    assert len(matches) == 1 and "rotary_kernel = porter_optional.missing('triton', 'rotary_kernel'" in out, out


def test_prefetch_factor_only_with_workers():
    assert_rewrites(compat.PREFETCH_FACTOR, """
        loader = torch.utils.data.DataLoader(ds, num_workers=args.num_workers,
                                             prefetch_factor=args.prefetch_factor,
                                             )
    """, """
        loader = torch.utils.data.DataLoader(ds, num_workers=args.num_workers,
                                             prefetch_factor=args.prefetch_factor if args.num_workers > 0 else None,
                                             )
    """)
    assert_untouched(compat.PREFETCH_FACTOR, "DataLoader(ds, prefetch_factor=2)\n")  # no num_workers: default 0 raises anyway


def test_generated_code_keeps_precedence_and_names():
    out, _ = rewrite(compat.PREFETCH_FACTOR, "DataLoader(ds, num_workers=not a, prefetch_factor=2)\n"
                                             "DataLoader(ds, num_workers=4 if fast else 0, prefetch_factor=f)\n")
    assert "prefetch_factor=2 if (not a) > 0 else None" in out
    assert "prefetch_factor=f if (4 if fast else 0) > 0 else None" in out
    out, _ = rewrite(fused.GLM130B_BMM, "from torch import empty, baddbmm\ndef f(a, b):\n    r = empty(3)\n"
                                        "    r = baddbmm(r, a, b, beta=0.0)\n    return r\n")
    assert "import torch\n" in out and "r = torch.bmm(a, b)" in out, out
