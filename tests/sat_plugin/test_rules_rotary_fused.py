"""sat.rotary.*, sat.fused.*, sat.imports.triton and sat.compat.*: source in, source out."""
from porter.rewrite import rewrite_file
from porter.testing import assert_rewrites, assert_untouched
from porter_sat.rules import compat, fused, imports, rotary

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
    assert out.after == OPS + textwrap.dedent('''
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
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None,
            dropout_p=dropout_p,
            is_causal=not is_full
        )
    """, """
        import porter.runtime.ops as porter_ops
        out = porter_ops.attention(q, k, v, is_causal=not is_full, dropout_p=dropout_p)
    """)
    assert_untouched(fused.ATTENTION, "out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n")


def test_triton_import_is_guarded():
    assert_rewrites(imports.TRITON, """
        import torch
        from .triton_rotary import apply_rotary
    """, """
        import porter.runtime.optional as porter_optional
        import torch
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


def test_torch_load_reads_full_checkpoints():
    assert_rewrites(compat.LOAD_CHECKPOINT, """
        sd = torch.load(checkpoint_name, map_location='cpu')
    """, """
        sd = torch.load(checkpoint_name, map_location='cpu', weights_only=False)
    """)
    assert_untouched(compat.LOAD_CHECKPOINT, "sd = torch.load(path, weights_only=True)\n")
