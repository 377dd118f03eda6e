"""An HF-layout checkpoint converted to SAT gives, through porter's model, the logits the same weights give through an
independent HF-layout forward written here from ChatGLM-6B's documented layer math (issue #28).

The forward below reads the HF state dict by its HF names and splits ``query_key_value`` per head, as the HF model
does; it shares no code with porter or SAT. Where each fact comes from (read, not copied):

- HF: THUDM's ``modeling_chatglm.py`` for ChatGLM-6B / VisualGLM-6B, read as vendored in ssbuild/deep_training
  ``src/deep_training/nlp/models/visualglm/modeling_chatglm.py``;
- SAT: SwissArmyTransformer 0.4.x ``sat/model/official/chatglm_model.py``, ``sat/transformer_defaults.py`` and
  ``sat/model/position_embedding/rotary_embeddings.py`` (what porter's model runs).
"""
import math

import torch
from porter_visualglm.checkpoint import load_model
from porter_visualglm.release import tiny_release_config
from porter_visualglm.standin_layouts import hf_config, make_hf_folder, random_hf_weights

from porter.testing import run_porter

GMASK, SOP = 130001, 130004  # HF config.json's gmask_token_id and bos_token_id (<sop>)
# ordinary ids, then [gMASK] <sop> and an answer, so block positions run 1, 2, ... after the context
IDS = [5, 20, 63, 100, 7, 1234, 88, 129999, GMASK, SOP, 30, 44, 9, 71]
TOL = 1e-5  # measured difference on the tiny sizes: under 1e-6 (fp32 rounding: the two sum in different orders)


def chatglm_inputs(ids: list[int]):
    """Position ids, block position ids and the attention mask (1 = may attend) for one prompt.

    HF ``ChatGLMPreTrainedModel.get_position_ids`` (2-D branch): positions count 0, 1, ... up to the context's end
    (the <sop> index) and from there on stay at the [gMASK] index; block positions are 0 in the context and 1, 2, ...
    from <sop> on. HF ``get_masks``: lower-triangular, with every row seeing the whole context (HF then stores
    ``mask < 0.5`` as "masked")."""
    n, context, gmask = len(ids), ids.index(SOP), ids.index(GMASK)
    positions = torch.tensor(list(range(context)) + [gmask] * (n - context))
    blocks = torch.tensor([0] * context + list(range(1, n - context + 1)))
    mask = torch.ones(n, n).tril()
    mask[:, :context] = 1
    return positions, blocks, mask


def gelu(x):
    # HF ``gelu_impl`` and SAT chatglm_model.py ``gelu_impl``: the tanh approximation, 0.7978845608... = sqrt(2/pi)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, w, b):
    # HF ``GLMBlock.__init__``/``ChatGLMModel.__init__``: torch LayerNorm with config.layernorm_epsilon (1e-5)
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)


def rotary(x, ids, inv_freq):
    """Rotary encoding of ``x`` [seq, heads, r] by ``ids`` [seq].

    HF ``RotaryEmbedding.forward``: angle = id * inv_freq, the table repeated twice (``cat(freqs, freqs)``) over the r
    dims; HF ``rotate_half`` / ``apply_rotary_pos_emb_index``: x * cos + (-x_back, x_front) * sin."""
    angle = ids[:, None].float() * inv_freq[None, :]
    angle = torch.cat([angle, angle], dim=-1)[:, None, :]
    front, back = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * angle.cos() + torch.cat([-back, front], dim=-1) * angle.sin()


def hf_layout_logits(w: dict, config: dict, ids: list[int], positions, blocks, mask):
    """Logits [seq, vocab] of ChatGLM-6B's forward over the HF-named weights ``w`` (fp32), one prompt, no cache."""
    heads, hidden, layers = config["num_attention_heads"], config["hidden_size"], config["num_layers"]
    d = hidden // heads
    r = d // 2  # 2-D rotary: each half of a head's dims has its own ids
    # HF ``SelfAttention.__init__``: RotaryEmbedding(hidden // (heads * 2)), inv_freq = 1 / 10000^(arange(0, r, 2) / r).
    # HF rounds this table to fp16 (``inv_freq.half()`` in ``RotaryEmbedding.__init__``) and ignores the stored copy
    # (its ``_load_from_state_dict`` does nothing); SAT's ``RotaryEmbedding.__init__`` keeps it fp32 (its ``.half()``
    # is commented out) and porter's ``materialise_derived`` computes it in the load dtype. Porter runs SAT's, so this
    # forward uses the fp32 formula (with HF's fp16 table instead the logits here move by about 1e-6: measured).
    inv_freq = 1.0 / (10000 ** (torch.arange(0, r, 2).float() / r))
    alpha = math.sqrt(2 * layers)  # HF ``GLMBlock.forward`` / SAT ``ChatGLMLayerMixin.layer_forward``
    # HF ``ChatGLMModel.forward``: word embeddings only (no position embedding table, no scaling)
    x = w["transformer.word_embeddings.weight"][torch.tensor(ids)]
    seq = x.shape[0]
    for n in range(layers):
        p = f"transformer.layers.{n}."
        # HF ``GLMBlock.forward``: LayerNorm -> attention -> ln_out * alpha + attention_out -> LayerNorm -> MLP ->
        # ln_out2 * alpha + mlp_out (the residual is the LayerNorm's output, not the layer's input)
        attention_input = layer_norm(x, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"])
        # HF ``SelfAttention.forward``: the qkv output viewed as (..., heads, 3 * d), the last dim split in 3 (q, k, v)
        qkv = attention_input @ w[p + "attention.query_key_value.weight"].T + w[p + "attention.query_key_value.bias"]
        q, k, v = qkv.view(seq, heads, 3, d).unbind(dim=2)
        # HF ``SelfAttention.forward`` (position_encoding_2d): head dims chunked in two halves, the first rotated by
        # the position ids, the second by the block position ids, for q and k (v not rotated)
        q = torch.cat([rotary(q[..., :r], positions, inv_freq), rotary(q[..., r:], blocks, inv_freq)], dim=-1)
        k = torch.cat([rotary(k[..., :r], positions, inv_freq), rotary(k[..., r:], blocks, inv_freq)], dim=-1)
        # HF ``attention_fn``: query / (sqrt(d) * (layer_id + 1)), scores * (layer_id + 1) in fp32 before the softmax,
        # masked scores -10000; SAT ``standard_attention``: query / sqrt(d), masked scores -10000. Both are
        # softmax(q.k / sqrt(d)) over the allowed keys: exp(-10000 - max) is 0 in fp32, as is exp(-inf).
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        probs = scores.masked_fill(mask == 0, float("-inf")).softmax(dim=-1)
        context = torch.einsum("hqk,khd->qhd", probs, v).reshape(seq, heads * d)  # heads back side by side
        attention_output = context @ w[p + "attention.dense.weight"].T + w[p + "attention.dense.bias"]
        x = attention_input * alpha + attention_output
        # HF ``GLU.forward``: dense_h_to_4h -> gelu -> dense_4h_to_h
        mlp_input = layer_norm(x, w[p + "post_attention_layernorm.weight"], w[p + "post_attention_layernorm.bias"])
        inner = gelu(mlp_input @ w[p + "mlp.dense_h_to_4h.weight"].T + w[p + "mlp.dense_h_to_4h.bias"])
        x = mlp_input * alpha + (inner @ w[p + "mlp.dense_4h_to_h.weight"].T + w[p + "mlp.dense_4h_to_h.bias"])
    # HF ``ChatGLMModel.forward``: final LayerNorm; ``ChatGLMForConditionalGeneration``: lm_head without bias
    x = layer_norm(x, w["transformer.final_layernorm.weight"], w["transformer.final_layernorm.bias"])
    return x @ w["lm_head.weight"].T


def test_hf_layout_converted_to_sat_gives_the_independent_forwards_logits(tmp_path):
    config = hf_config(tiny_release_config())  # VisualGLM's HF layout, tiny sizes
    hf = random_hf_weights(config, dtype="fp32", seed=3)
    src = make_hf_folder(tmp_path / "hf", config, weights=hf, shards=2, fmt="safetensors")
    dst = tmp_path / "sat"
    r = run_porter("run", "visualglm", "convert", str(src), str(dst), "--to", "sat", "--dtype", "fp32",
                   env={"PORTER_DEVICE": "cpu"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    model, _ = load_model(dst, dtype=torch.float32)
    model.eval()

    positions, blocks, mask = chatglm_inputs(IDS)
    input_ids = torch.tensor([IDS])
    position_ids = torch.stack([positions, blocks])[None]  # [batch, 2, seq], as SAT's ChatGLMModel takes them
    sat_mask, sat_positions = model.get_inputs(input_ids)  # SAT's own rules agree with the documented ones
    assert torch.equal(sat_positions, position_ids) and torch.equal(sat_mask, mask[None, None])
    with torch.no_grad():
        ours = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask[None, None])[0][0]
        theirs = hf_layout_logits(hf, config, IDS, positions, blocks, mask)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape == (len(IDS), config["vocab_size"])
    diff = (ours - theirs).abs().max().item()
    assert torch.allclose(ours, theirs, atol=TOL, rtol=TOL), f"max |porter - HF-layout forward| = {diff:.3g}"

    # The comparison can fail. The converted folder's query_key_value rows read as-is into the HF forward (the
    # mapping without the per-head <-> grouped reordering) give other logits:
    as_is = dict(hf)
    for n, layer in enumerate(model.transformer.layers):
        for part in ("weight", "bias"):
            as_is[f"transformer.layers.{n}.attention.query_key_value.{part}"] = \
                getattr(layer.attention.query_key_value, part).detach()
    with torch.no_grad():
        unpermuted = hf_layout_logits(as_is, config, IDS, positions, blocks, mask)
        flat_blocks = hf_layout_logits(hf, config, IDS, positions, torch.zeros_like(blocks), mask)
    assert (unpermuted - ours).abs().max().item() > 1000 * TOL
    # and the block positions matter: the second rotary half is exercised
    assert (flat_blocks - ours).abs().max().item() > 100 * TOL
