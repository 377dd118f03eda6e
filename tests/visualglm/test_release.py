"""Conformance with the released VisualGLM-6B checkpoint: its keys and shapes, its config, a tiny folder in its
exact layout (the stale SAT 0.3.6 key included) through the API and the CLI, and every way such a folder breaks."""
import json
import shutil

import pytest
import torch
from porter_visualglm import release
from porter_visualglm.checkpoint import CheckpointError, load_model
from porter_visualglm.config import VisualGLMConfig, preset
from porter_visualglm.model import build_model
from porter_visualglm.standin_tokenizer import standin_tokenizer_dir

from porter.testing import run_porter

ENV = {"PORTER_DEVICE": "cpu"}


def test_committed_key_list_is_what_the_generator_writes(tmp_path):
    release.write_keys(tmp_path / "keys.json")
    assert (tmp_path / "keys.json").read_text() == release.RELEASE_KEYS.read_text()


def test_the_6b_preset_has_exactly_the_releases_keys_and_shapes():
    listed = {name: tuple(shape) for name, shape in json.loads(release.RELEASE_KEYS.read_text()).items()}
    assert listed.pop(release.STALE_KEY) == (2048, 4096)  # in the file, not in today's SAT ChatGLM
    built = {name: tuple(t.shape) for name, t in build_model(preset("visualglm-6b"), meta=True).state_dict().items()}
    assert len(built) == 1012 and built == listed


def test_the_releases_model_config_is_the_6b_preset():
    assert VisualGLMConfig.from_sat_args(release.release_config()) == preset("visualglm-6b")


def test_is_decoder_as_one_bool_means_every_layer_as_in_sat():
    config = release.release_config()
    config["qformer_args"]["is_decoder"] = True
    assert VisualGLMConfig.from_sat_args(config).qformer.cross_every == 1
    config["qformer_args"]["is_decoder"] = False
    with pytest.raises(Exception, match="the Q-Former must cross-attend to the image in some layer"):
        VisualGLMConfig.from_sat_args(config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same weights twice: as the release saved them (stale key, inv_freq, fp16), and without those keys."""
    root = tmp_path_factory.mktemp("release")
    full = release.make_release_folder(root / "glm" / "visualglm", seed=11)
    plain = release.make_release_folder(root / "plain", seed=11, stale=False, inv_freq=False)
    return full, plain


def tiny_inputs(config):
    ids = torch.tensor([[5, 100, 200, 300] + [3] * config.image_length + [400, 500, 130001, 130004]])
    image = torch.linspace(-1, 1, 3 * 224 * 224).view(1, 3, 224, 224)
    return ids, image


def logits(model, config):
    ids, image = tiny_inputs(config)
    with torch.no_grad():
        return model.eval()(input_ids=ids, image=image, pre_image=4)[0]


def test_a_release_layout_folder_loads_and_the_stale_key_changes_nothing(folders):
    full, plain = folders
    notes = []
    with_stale, ckpt = load_model(full, say=notes.append)
    without, _ = load_model(plain, say=notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: dropped transformer.position_embeddings.weight from "
                                                   "mp_rank_00_model_states.pt: a learned position table SAT 0.3.6")
    assert torch.equal(logits(with_stale, ckpt.config), logits(without, ckpt.config))
    # the weights are the file's, not a random init: every loaded tensor equals the saved one
    saved = torch.load(full / "1" / "mp_rank_00_model_states.pt")["module"]
    state = with_stale.state_dict()
    assert all(torch.equal(state[n], t.float()) for n, t in saved.items() if n in state and "inv_freq" not in n)


def test_dtype_is_what_is_asked_and_inv_freq_is_computed_as_sat_does(folders):
    full, _ = folders
    model, _ = load_model(full, dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    inv_freq = dict(model.named_buffers())[release.INV_FREQ]
    head = 64 // 4 // 2
    assert inv_freq.dtype == torch.float16
    torch.testing.assert_close(inv_freq.float(), 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head)),
                               atol=1e-3, rtol=1e-3)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_unexpected_and_missing_keys_are_all_listed_with_shapes(folders, tmp_path):
    full, _ = folders
    weights = torch.load(full / "1" / "mp_rank_00_model_states.pt")["module"]
    weights["mixins.extra.weight"] = torch.zeros(2, 3)
    weights["transformer.layers.9.mlp.bias"] = torch.zeros(5)
    del weights["mixins.eva.model.glm_proj.bias"]
    del weights["transformer.final_layernorm.weight"]
    broken = release.make_release_folder(tmp_path / "broken", weights=weights)
    with pytest.raises(CheckpointError) as caught:
        load_model(broken)
    message = caught.value.message
    assert "(4 problem(s))" in message
    for part in ("unexpected mixins.extra.weight (2, 3)", "unexpected transformer.layers.9.mlp.bias (5,)",
                 "missing mixins.eva.model.glm_proj.bias (64,)", "missing transformer.final_layernorm.weight (64,)"):
        assert part in message


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_a_corrupt_weights_file_is_one_clear_error(folders, tmp_path, damage):
    full, _ = folders
    dest = shutil.copytree(full, tmp_path / "ckpt")
    states = dest / "1" / "mp_rank_00_model_states.pt"
    data = states.read_bytes()
    states.write_bytes({"random": bytes(range(256)) * 64, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=rf"checkpoint file corrupt: {states}"):
        load_model(dest)


def test_a_model_parallel_checkpoint_is_refused(folders, tmp_path):
    full, _ = folders
    dest = shutil.copytree(full, tmp_path / "mp")
    shutil.copy(dest / "1" / "mp_rank_00_model_states.pt", dest / "1" / "mp_rank_01_model_states.pt")
    with pytest.raises(CheckpointError, match=r"a model-parallel checkpoint in 2 parts \(mp_rank_00_model_states\.pt, "
                                              r"mp_rank_01_model_states\.pt\); porter loads model_parallel_size 1"):
        load_model(dest)


def test_check_passes_a_good_folder_and_lists_every_problem_of_a_bad_one(folders, tmp_path):
    full, _ = folders
    r = run_porter("run", "visualglm", "check", "--from_pretrained", str(full), "--chatglm_path",
                   str(standin_tokenizer_dir()), env=ENV, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert "all 96 keys and shapes as model_config.json describes" in r.stdout
    assert "transformer.position_embeddings.weight: left by an older SAT, will be dropped" in r.stdout
    assert "tokenizer: " in r.stdout and "130,344 pieces" in r.stdout and "will load." in r.stdout

    dest = shutil.copytree(full, tmp_path / "bad")
    config = json.loads((dest / "model_config.json").read_text())
    config["inner_hidden_size"] = 96
    (dest / "model_config.json").write_text(json.dumps(config))
    r = run_porter("run", "visualglm", "check", "--from_pretrained", str(dest), env=ENV, timeout=60)
    assert r.returncode == 7, r.stdout + r.stderr[-2000:]
    assert r.stdout.count("problem  mp_rank_00_model_states.pt: shape of ") == 6
    assert "problem  tokenizer: this checkpoint uses ChatGLM-6B's tokenizer: pass --chatglm_path DIR" in r.stdout
    assert "error: 7 problem(s) with" in r.stderr


def test_infer_runs_the_release_layout_folder(folders):
    full, _ = folders
    r = run_porter("run", "visualglm", "infer", "--from_pretrained", str(full), "--chatglm_path",
                   str(standin_tokenizer_dir()), "--english", "--max_length", "90", "--seed", "1", env=ENV, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note: dropped transformer.position_embeddings.weight" in r.stderr
    assert "(iteration 1, float32)" in r.stderr


@pytest.mark.slow
def test_train_starts_from_the_release_layout_folder(folders, tmp_path):
    full, _ = folders
    r = run_porter("run", "visualglm", "train", "--npus", "1", "--device", "cpu", "--from_pretrained", str(full),
                   "--chatglm_path", str(standin_tokenizer_dir()), "--iters", "2", "--batch-size", "2",
                   "--max_source_length", "48", "--max_target_length", "16", "--save", str(tmp_path / "run"),
                   "--layer_range", "0", env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "weights: " in r.stderr and "finetune: lora" in r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = json.loads((tmp_path / "run" / "checkpoints" / summary["checkpoint"].split("/")[-1] /
                         "model_config.json").read_text())
    assert config["use_lora"] is True and config["layer_range"] == [0]
