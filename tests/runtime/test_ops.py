"""porter.runtime.ops: reference math everywhere, NPU kernels (through the FAKE torch_npu) within their limits."""
import pytest
import torch
import torch.nn.functional as F

from porter.runtime import ops


def tanh_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def kernels(fake):
    return [c["kernel"] for c in fake.calls]


# --- CPU: the reference, and the same numbers as the code it replaces ---------------------------------------

def test_cpu_runs_references(cpu_device):
    x = torch.randn(2, 3, 4, 64)
    cos, sin = torch.randn(2, 3, 1, 64), torch.randn(2, 3, 1, 64)
    x1, x2 = x[..., :32], x[..., 32:]
    assert torch.equal(ops.rotary_mul(x, cos, sin), x * cos + torch.cat((-x2, x1), -1) * sin)
    assert torch.equal(ops.gelu(x), tanh_gelu(x))
    assert ops.counts == {"rotary_mul/reference": 1, "gelu/reference": 1}


def test_reference_softmax_is_glm130b_math(cpu_device):
    x, mask = torch.randn(2, 2, 8, 8).half(), torch.rand(2, 1, 8, 8) > 0.7
    expected = F.softmax(x.masked_fill(mask, -10000.0).float() * 3.0, dim=-1)
    assert torch.equal(ops.scaled_masked_softmax(x, mask, 3.0), expected)
    assert torch.equal(ops.scaled_masked_softmax(x, None, 3.0), F.softmax(x.float() * 3.0, dim=-1))


def test_gelu_mode_is_validated(cpu_device, monkeypatch):
    monkeypatch.setenv("PORTER_GELU", "quick")
    with pytest.raises(ValueError, match="PORTER_GELU='quick'"):
        ops.gelu_mode()


# --- FAKE NPU: which kernel, with which arguments, and when the guard says no ------------------------------

def test_rotary_reaches_npu_rotary_mul_in_sbnd(fake_npu):
    from fakes import torch_npu as fake

    q = torch.randn(16, 2, 4, 64)  # [sq, b, np, hn/2] as ChatGLM's 2-D rotary passes it
    cos, sin = torch.randn(16, 2, 1, 64), torch.randn(16, 2, 1, 64)
    out = ops.rotary_mul(q, cos, sin)
    assert kernels(fake) == ["npu_rotary_mul"] and "SBND" in fake.calls[0]["layouts"]
    torch.testing.assert_close(out, ops._rotary_reference(q, cos, sin))


@pytest.mark.parametrize("shape, r_shape, reason", [
    ((16, 2, 4, 32), (16, 2, 1, 32), "not a multiple of 64"),
    ((16, 1001, 4, 64), (16, 1001, 1, 64), "up to 1000"),
    ((16, 8, 64), (16, 1, 64), "4-D"),
    ((16, 2, 4, 64), (1, 2, 4, 64), "no layout fits"),  # broadcastable, but not a layout the kernel reads
])
def test_rotary_outside_limits_takes_the_reference(fake_npu, shape, r_shape, reason):
    from fakes import torch_npu as fake

    x, cos, sin = torch.randn(shape), torch.randn(r_shape), torch.randn(r_shape)
    out = ops.rotary_mul(x, cos, sin)
    assert ops.counts["rotary_mul/reference"] == 1 and kernels(fake) == []
    assert torch.equal(out, ops._rotary_reference(x, cos, sin))
    assert any(reason in why for why in ops.fallbacks)


def test_gelu_fast_mode_on_npu(fake_npu, monkeypatch):
    from fakes import torch_npu as fake

    x = torch.randn(4, 8)
    torch.testing.assert_close(ops.gelu(x), tanh_gelu(x))  # exact mode (default): reference, no kernel
    assert kernels(fake) == []
    monkeypatch.setenv("PORTER_GELU", "fast")
    fast = ops.gelu(x)
    ops.gelu(x.bfloat16())
    assert kernels(fake) == ["fast_gelu", "npu_fast_gelu"]
    assert (fast - tanh_gelu(x)).abs().max() < 0.03  # an approximation of GELU, as documented


def test_softmax_kernel_and_the_decoding_fallback(fake_npu):
    from fakes import torch_npu as fake

    x = torch.randn(1, 2, 64, 96, dtype=torch.float16)
    mask = torch.ones(64, 96, dtype=torch.bool).triu(1)[None, None]
    out = ops.scaled_masked_softmax(x, mask, 2.0)
    assert kernels(fake) == ["npu_scaled_masked_softmax"] and out.dtype == torch.float32
    torch.testing.assert_close(out, ops._softmax_reference(x, mask, 2.0), atol=2e-3, rtol=0)
    ops.scaled_masked_softmax(x[:, :, :1], mask[:, :, :1], 2.0)  # one query token: what broke the old recipe
    assert kernels(fake) == ["npu_scaled_masked_softmax"]
    assert ops.counts["scaled_masked_softmax/reference"] == 1


def test_attention_fusion_kernel_takes_half_precision_only(fake_npu):
    from fakes import torch_npu as fake

    q, k, v = (torch.randn(2, 4, 16, 32, dtype=torch.bfloat16) for _ in range(3))
    out = ops.attention(q, k, v, is_causal=True)
    call = fake.calls[0]
    assert call["kernel"] == "npu_fusion_attention" and call["layout"] == "BNSD" and call["head_num"] == 4
    assert call["mask"] == (16, 16) and call["scale"] == pytest.approx(32 ** -0.5)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)
    ops.attention(q.float(), k.float(), v.float(), is_causal=False)
    assert ops.counts["attention/reference"] == 1 and len(fake.calls) == 1
