"""The patched rotary embedding keeps SAT 0.4.x's dtype fixes, which the old recipe's 0.3.6 file undid.

Upstream fixed two things after 0.3.6 (commits "test and pass bf16" and "fix rotary", 2023): cos/sin are cast
to the input's dtype instead of the module's ``precision``, and the time steps are built in float32 instead of
``inv_freq``'s dtype (which is fp16 after ``model.half()``, where integers above 2048 are not exact).
"""
import torch
from porter_sat.parity import load_original


def modules(sat_patched):
    rel = "sat/model/position_embedding/rotary_embeddings.py"
    patched = load_original(sat_patched, rel, "porter_test_patched_rotary", patched={rel})
    original = load_original(sat_patched / ".porter-state/sat/originals", rel, "porter_test_original_rotary",
                             patched={rel})
    return patched, original


def cos_sin_like_0_3_6(emb: torch.nn.Module, x: torch.Tensor, seq_len: int):
    """What the 0.3.6 file computed: time steps in inv_freq's dtype, cos/sin in the module's precision."""
    t = torch.arange(seq_len, dtype=emb.inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, emb.inv_freq)
    full = torch.cat((freqs, freqs), dim=-1)
    return full.cos()[:, None, :].to(emb.precision), full.sin()[:, None, :].to(emb.precision)


def test_patched_rotary_matches_0_4_12_and_not_0_3_6(sat_patched):
    patched, original = modules(sat_patched)
    # ChatGLM's configuration: precision=torch.half, the model converted to fp16 (inv_freq buffer too)
    new, old = (m.RotaryEmbedding(64, precision=torch.half).half() for m in (patched, original))
    x = torch.randn(4096, 1, 64).half()
    cos_new, sin_new = new(x, seq_len=4096)
    cos_old, sin_old = old(x, seq_len=4096)
    assert torch.equal(cos_new, cos_old) and torch.equal(sin_new, sin_old)
    cos_036, _ = cos_sin_like_0_3_6(new, x, 4096)
    assert (cos_036[2048:].float() - cos_new[2048:].float()).abs().max() > 0.1  # fp16 time steps past 2048

    # bf16 activations: 0.4.12 hands back bf16 cos/sin, 0.3.6 handed back fp16
    new, old = (m.RotaryEmbedding(64, precision=torch.half) for m in (patched, original))
    xb = torch.randn(128, 1, 64).bfloat16()
    assert new(xb, seq_len=128)[0].dtype == old(xb, seq_len=128)[0].dtype == torch.bfloat16
    assert cos_sin_like_0_3_6(new, xb, 128)[0].dtype == torch.float16


def test_patched_apply_and_rotate_half_match_the_original(sat_patched):
    patched, original = modules(sat_patched)
    q, k = torch.randn(16, 2, 4, 64), torch.randn(16, 2, 4, 64)
    cos, sin = original.RotaryEmbedding(64, precision=torch.float)(q, seq_len=20)
    pos = torch.randint(0, 20, (16, 2))
    for a, b in zip(patched.apply_rotary_pos_emb_index(q, k, cos, sin, pos),
                    original.apply_rotary_pos_emb_index(q, k, cos, sin, pos)):
        assert torch.equal(a, b)
    assert torch.equal(patched.rotate_half(q), original.rotate_half(q))
    assert not hasattr(patched.apply_rotary_pos_emb_index, "graph")  # no longer TorchScript
    assert hasattr(original.apply_rotary_pos_emb_index, "graph")
