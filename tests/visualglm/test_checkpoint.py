"""SAT-layout checkpoints: save -> load gives the same logits; each broken folder gets its own clear error."""
import json
import shutil

import pytest
import torch
from porter_visualglm.checkpoint import CheckpointError, inspect_checkpoint, load_model, save_model
from porter_visualglm.config import replace
from porter_visualglm.data import encode_example
from porter_visualglm.model import build_model


def logits_of(model, tokenizer, config):
    ex = encode_example(tokenizer, config.image_length, "What's in the image?", "a blue square")
    image = torch.linspace(-1, 1, 3 * 56 * 56).view(1, 3, 56, 56)
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([ex.input_ids]), image=image, pre_image=ex.pre_image)[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_config):
    model = build_model(tiny_config, finetune="lora", seed=3)
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters weight so merging has work to do
        for name, p in model.named_parameters():
            if "matrix_B" in name:
                p.normal_(0, 0.05)
    folder = save_model(model, tiny_config, tmp_path_factory.mktemp("ckpt") / "visualglm", iteration=1,
                        finetune="lora", lora_rank=10, tokenizer_type="porter-standin")
    return model, folder


def test_layout_is_sats(saved):
    _, folder = saved
    assert (folder / "latest").read_text() == "1"
    assert (folder / "1" / "mp_rank_00_model_states.pt").is_file()
    config = json.loads((folder / "model_config.json").read_text())
    assert config["model_class"] == "VisualGLMModel" and config["use_lora"] is True
    assert set(torch.load(folder / "1" / "mp_rank_00_model_states.pt")) == {"module", "iteration"}


def test_save_load_gives_identical_logits_and_merging_lora_keeps_them(saved, standin_tokenizer, tiny_config):
    model, folder = saved
    before = logits_of(model, standin_tokenizer, tiny_config)
    loaded, ckpt = load_model(folder)
    assert ckpt.finetune == "lora" and ckpt.iteration == "1"
    assert torch.equal(logits_of(loaded, standin_tokenizer, tiny_config), before)
    merged, _ = load_model(folder, merge_lora=True)
    assert not any("matrix_A" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(merged, standin_tokenizer, tiny_config), before, atol=1e-5, rtol=1e-5)


def test_strided_and_overlapping_tensors_in_a_file_load_as_parameters_of_their_own(saved, tmp_path):
    """torch.save keeps a view's storage and strides: a file can hand over a transposed tensor, or an as_strided view
    whose rows overlap. The model gets dense copies with the same values, not views into the file's storage."""
    _, folder = saved
    dest = broken_copy(saved, tmp_path)
    states = dest / "1" / "mp_rank_00_model_states.pt"
    ckpt = torch.load(states)
    head = "mixins.chatglm-final.lm_head.weight"
    rows, cols = ckpt["module"][head].shape
    ckpt["module"][head] = torch.randn(rows + cols).as_strided((rows, cols), (1, 1))  # row i starts at element i
    dense = "transformer.word_embeddings.weight"
    ckpt["module"][dense] = ckpt["module"][dense].t().contiguous().t()
    torch.save(ckpt, states)
    model, _ = load_model(dest)
    for name in (head, dense):
        p = model.get_parameter(name)
        assert p.is_contiguous() and torch.equal(p, ckpt["module"][name]), name
    assert model.get_parameter(head).untyped_storage().nbytes() == rows * cols * 4


def broken_copy(saved, tmp_path):
    _, folder = saved
    dest = tmp_path / "ckpt"
    shutil.copytree(folder, dest)
    return dest


def test_missing_latest(saved, tmp_path):
    dest = broken_copy(saved, tmp_path)
    (dest / "latest").unlink()
    with pytest.raises(CheckpointError, match=r"latest: missing; a SAT checkpoint folder names its iteration"):
        load_model(dest)


def test_missing_iteration_folder(saved, tmp_path):
    dest = broken_copy(saved, tmp_path)
    (dest / "latest").write_text("7")
    with pytest.raises(CheckpointError, match=r"ckpt/7: iteration folder missing \(`latest` says '7'\)"):
        load_model(dest)


def test_missing_config_and_weights(saved, tmp_path):
    dest = broken_copy(saved, tmp_path)
    (dest / "1" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointError, match="weights file missing"):
        inspect_checkpoint(dest)
    dest = broken_copy(saved, tmp_path / "b")
    (dest / "model_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"model_config\.json: missing"):
        inspect_checkpoint(dest)


def test_shapes_that_do_not_match_the_config_are_all_named(saved, tmp_path, tiny_config):
    dest = broken_copy(saved, tmp_path)
    config = json.loads((dest / "model_config.json").read_text())
    config["inner_hidden_size"] = 96  # the weights were trained with 128
    (dest / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as caught:
        load_model(dest)
    message = caught.value.message
    assert "(6 problem(s))" in message
    for layer in (0, 1):
        assert (f"shape of transformer.layers.{layer}.mlp.dense_h_to_4h.weight: file (128, 64), model_config.json "
                f"(96, 64)") in message
        assert f"shape of transformer.layers.{layer}.mlp.dense_4h_to_h.weight: file (64, 128)" in message


def test_a_config_missing_a_field_is_named(saved, tmp_path):
    dest = broken_copy(saved, tmp_path)
    config = json.loads((dest / "model_config.json").read_text())
    del config["eva_args"]
    (dest / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match=r"model_config\.json: missing or malformed field 'eva_args'"):
        inspect_checkpoint(dest)


def test_full_model_checkpoint_round_trip(tmp_path, standin_tokenizer, tiny_config):
    model = build_model(replace(tiny_config), seed=5)
    folder = save_model(model, tiny_config, tmp_path / "full", iteration=30)
    loaded, ckpt = load_model(folder)
    assert ckpt.finetune is None and ckpt.iteration == "30"
    assert torch.equal(logits_of(loaded, standin_tokenizer, tiny_config), logits_of(model, standin_tokenizer, tiny_config))
