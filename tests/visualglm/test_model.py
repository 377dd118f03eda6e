"""The VisualGLM model on the installed (unpatched) SAT: sizes, the image splice, fine-tuning modes."""
import pytest
import torch
from porter_visualglm.config import PRESETS, VisualGLMConfig, preset
from porter_visualglm.data import encode_example
from porter_visualglm.model import build_model, parameter_counts


def test_visualglm_6b_on_the_meta_device_has_7_8_billion_parameters(capsys):
    model = build_model(preset("visualglm-6b"), meta=True)
    counts = parameter_counts(model)
    with capsys.disabled():
        print("\nvisualglm-6b parameters: " + ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in counts.items()))
    assert abs(counts["total"] - 7.8e9) / 7.8e9 < 0.01
    assert counts["vision"] > 0.9e9 and counts["language"] > 6.5e9 and counts["projection"] == 768 * 4096 + 4096
    assert all(p.device.type == "meta" for p in model.parameters())


def test_config_round_trips_through_sat_model_config():
    for config in PRESETS.values():
        assert VisualGLMConfig.from_sat_args(config.sat_args()) == config
    args = PRESETS["visualglm-6b"].sat_args()
    assert args["qformer_args"]["is_decoder"][:4] == [True, False, True, False]
    assert args["image_length"] == 32 and args["eva_args"]["image_size"] == [224, 224]


def batch(tokenizer, config, images):
    ex = encode_example(tokenizer, config.image_length, "What's in the image?", "a red circle")
    ids = torch.tensor([ex.input_ids] * images.shape[0])
    return ids, ex.pre_image


def causal(n):
    return torch.ones(1, 1, n, n).tril()


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    return build_model(tiny_config, seed=7).eval()


def test_forward_shape_and_image_splice(tiny_model, standin_tokenizer, tiny_config):
    size, L = tiny_config.vision.image_size, tiny_config.image_length
    images = torch.randn(2, 3, size, size)
    ids, pre = batch(standin_tokenizer, tiny_config, images)
    with torch.no_grad():
        logits = tiny_model(input_ids=ids, image=images, pre_image=pre)[0]
    assert logits.shape == (2, ids.shape[1], tiny_config.lm.vocab)

    # what the hook hands the transformer: image features exactly over the pad positions
    mixin = tiny_model.get_mixin("eva")
    with torch.no_grad():
        embedded = mixin.word_embedding_forward(ids, None, image=images, pre_image=pre)
        features = mixin.model(images)
        plain = tiny_model.transformer.word_embeddings(ids)
    assert torch.equal(embedded[:, pre:pre + L], features)
    assert torch.equal(embedded[:, :pre], plain[:, :pre]) and torch.equal(embedded[:, pre + L:], plain[:, pre + L:])
    assert not torch.equal(features[0], features[1])  # two different images, two different feature sets


def test_changing_the_image_changes_logits_from_the_image_on(tiny_model, standin_tokenizer, tiny_config):
    """With a causal mask, positions before the image cannot see it. (ChatGLM's own default mask lets every
    prompt position see the whole prompt, so there the image reaches all prompt positions.)"""
    size = tiny_config.vision.image_size
    a, b = torch.randn(1, 3, size, size), torch.randn(1, 3, size, size)
    ids, pre = batch(standin_tokenizer, tiny_config, a)
    mask, positions = causal(ids.shape[1]), torch.arange(ids.shape[1])[None, None].expand(1, 2, -1).clone()
    with torch.no_grad():
        la = tiny_model(input_ids=ids, image=a, pre_image=pre, attention_mask=mask, position_ids=positions)[0]
        lb = tiny_model(input_ids=ids, image=b, pre_image=pre, attention_mask=mask, position_ids=positions)[0]
    assert torch.equal(la[:, :pre], lb[:, :pre])
    assert (la[:, pre:] - lb[:, pre:]).abs().amax(dim=-1).min() > 0  # every position from the image on


def test_lora_ptuning_full_train_only_their_parameters(tiny_config):
    lora = build_model(tiny_config, finetune="lora", lora_rank=10)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("matrix_A" in n or "matrix_B" in n for n in trainable)
    assert {n.split(".")[2] for n in trainable} == {"0", "1"}  # transformer.layers.<i>: every layer by default
    assert parameter_counts(lora)["adapters"] == sum(p.numel() for n, p in lora.named_parameters() if n in trainable)
    one = build_model(tiny_config, finetune="lora", lora_layers=[1])
    assert {n.split(".")[2] for n, p in one.named_parameters() if p.requires_grad} == {"1"}
    pt = build_model(tiny_config, finetune="ptuning", pre_seq_len=4)
    assert {n for n, p in pt.named_parameters() if p.requires_grad} == {"mixins.ptuning.prefix.0", "mixins.ptuning.prefix.1"}
    full = build_model(tiny_config, finetune="full")
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(ValueError, match="finetune must be one of"):
        build_model(tiny_config, finetune="qlora")


def test_logits_only_where_asked_are_the_same_logits(tiny_model, standin_tokenizer, tiny_config):
    size = tiny_config.vision.image_size
    images = torch.randn(2, 3, size, size)
    ids, pre = batch(standin_tokenizer, tiny_config, images)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -5:] = True
    with torch.no_grad():
        full = tiny_model(input_ids=ids, image=images, pre_image=pre)[0]
        some = tiny_model(input_ids=ids, image=images, pre_image=pre, logit_mask=mask)[0]
    assert some.shape == (10, tiny_config.lm.vocab)
    torch.testing.assert_close(some, full[mask])


def test_ln_vision_is_a_default_layernorm_as_upstream_builds_it(tiny_model):
    ln = tiny_model.get_mixin("eva").model.vit.get_mixin("cls").ln_vision
    assert ln.eps == 1e-5
