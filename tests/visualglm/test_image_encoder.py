"""The tiny preset's pretrained image encoder: its generator writes a file the trainer reads, the cache builds it
once, and --vision-lr-scale / --qformer-lr-scale where SAT cannot take them."""
import pytest
import torch
from porter_visualglm.checkpoint import CheckpointError, read_image_encoder
from porter_visualglm.config import preset, replace


def test_the_generator_writes_an_encoder_for_the_tiny_preset_and_nothing_wider(tiny_encoder_run):
    out, r = tiny_encoder_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 3/3" in r.stdout and "held-out images: colour" in r.stdout and f"wrote {out}" in r.stdout
    weights = read_image_encoder(out, preset("tiny"))
    assert any(k.startswith("mixins.eva.model.vit.") for k in weights)
    assert any(k.startswith("mixins.eva.model.qformer.") for k in weights)
    tiny = preset("tiny")
    wider = replace(tiny, vision=replace(tiny.vision, hidden=128, mlp=256))
    with pytest.raises(CheckpointError, match=r"not an image encoder for this model .*shape of mixins\.eva\.model\.vit"):
        read_image_encoder(out, wider)


def test_the_cached_encoder_is_built_once_per_generator_and_step_count(tmp_path, monkeypatch):
    from porter_visualglm import image_encoder

    monkeypatch.setenv("PORTER_CACHE", str(tmp_path))
    said = []
    first = image_encoder.tiny_encoder(steps=2, log=said.append)
    assert first.is_file() and first.parent == tmp_path / "image-encoders"
    assert any("pretraining the tiny image encoder (2 steps" in line for line in said)
    stamp = first.stat().st_mtime_ns
    said.clear()
    assert image_encoder.tiny_encoder(steps=2, log=said.append) == first and said == []  # from the cache
    assert first.stat().st_mtime_ns == stamp
    assert image_encoder.cached_path(3) != first  # another step count, another file
    assert not list(tmp_path.rglob("*tmp"))
    assert read_image_encoder(first, preset("tiny")).keys() == torch.load(first, weights_only=True).keys()


@pytest.mark.parametrize("flag", ["--vision-lr-scale", "--qformer-lr-scale"])
@pytest.mark.parametrize("version,refused", [("0.4.5", True), ("0.3.6", True), ("0.4.6", False), ("0.4.12", False)])
def test_a_part_lr_scale_is_refused_where_sat_ignores_per_parameter_rates(monkeypatch, version, refused, flag):
    from importlib import metadata

    from porter_visualglm.train import check_lr_scale_support

    from porter.errors import InputError

    monkeypatch.setattr(metadata, "version", lambda name: version if name == "SwissArmyTransformer" else "0")
    if refused:
        with pytest.raises(InputError, match=rf"^{flag}: SwissArmyTransformer {version} ignores per-parameter") as err:
            check_lr_scale_support(flag)
        assert err.value.exit_code == 2 and f"set {flag} to 0 or 1" in err.value.hint
    else:
        check_lr_scale_support(flag)


@pytest.mark.parametrize("part,marker", [("vit", ".vit."), ("qformer", ".qformer.")])
def test_a_part_lr_scale_becomes_a_sat_parameter_group_of_that_rate_and_zero_freezes(tiny_config, part, marker):
    from porter_visualglm.model import build_model, scale_lr
    from sat.training.deepspeed_training import get_optimizer_param_groups

    model = build_model(tiny_config, finetune="full")
    scaled_ids = {id(p) for n, p in model.named_parameters() if marker in n}
    assert scaled_ids and len(scale_lr(model, part, 0.1)) == len(scaled_ids)
    groups = get_optimizer_param_groups(model)  # SAT's own grouping, as its training_main builds the optimizer
    scaled = [g for g in groups if g["lr"] == 0.1]
    assert {id(p) for g in scaled for p in g["params"]} == scaled_ids
    assert all(g["lr"] == 1.0 for g in groups if g not in scaled)

    frozen = build_model(tiny_config, finetune="full")
    scale_lr(frozen, part, 0)
    groups = get_optimizer_param_groups(frozen)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert not in_groups & {id(p) for n, p in frozen.named_parameters() if marker in n}
    assert all(p.requires_grad == (marker not in n) for n, p in frozen.named_parameters())
    # the projection into the language model is in neither part: it learns whatever is frozen
    assert any("glm_proj" in n and id(p) in in_groups for n, p in frozen.named_parameters())


def test_an_encoder_cut_from_a_release_layout_checkpoint_is_read_as_sat_saves_it(tmp_path):
    """The file format is the released checkpoint's own: its ViT and Q-Former tensors under their release names
    (porter_visualglm.release, from the published key list), inside SAT's {"module": ...}, fp16 as released."""
    from porter_visualglm import release
    from porter_visualglm.checkpoint import IMAGE_ENCODER_PARTS
    from porter_visualglm.config import VisualGLMConfig

    folder = release.make_release_folder(tmp_path / "release", seed=3)
    whole = torch.load(folder / "1" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    cut = {k: v for k, v in whole.items() if k.startswith(IMAGE_ENCODER_PARTS)}
    names = {k for k in release.release_keys(release.tiny_release_config()) if k.startswith(IMAGE_ENCODER_PARTS)}
    assert set(cut) == names and len(names) > 20
    torch.save({"module": cut}, tmp_path / "encoder.pt")
    config = VisualGLMConfig.from_sat_args(release.tiny_release_config())
    read = read_image_encoder(tmp_path / "encoder.pt", config)
    assert read.keys() == cut.keys() and all(torch.equal(read[k], cut[k]) for k in cut)
    with pytest.raises(CheckpointError, match=r"not an image encoder for this model .*missing"):
        read_image_encoder(tmp_path / "encoder.pt", preset("tiny"))  # the tiny preset's ViT is another size


def test_the_part_markers_split_the_released_checkpoints_keys_as_its_modules_are():
    """--vision-lr-scale and --qformer-lr-scale find their parameters by name: on the released checkpoint's key
    list (derived from SAT's naming, not from porter's model code) each marker takes exactly its module's keys, and
    the projection and the language model fall in neither."""
    import json

    from porter_visualglm import release
    from porter_visualglm.config import ENCODER_PARTS

    keys = json.loads(release.RELEASE_KEYS.read_text())
    for part, marker in ENCODER_PARTS.items():
        module = f"mixins.eva.model.{part}."
        assert any(k.startswith(module) for k in keys)
        assert {k for k in keys if marker in k} == {k for k in keys if k.startswith(module)}
    assert not [k for k in keys if "glm_proj" in k and any(m in k for m in ENCODER_PARTS.values())]
