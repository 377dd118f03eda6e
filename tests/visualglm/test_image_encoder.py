"""The tiny preset's pretrained image encoder: the shipped file fits the preset, and its generator writes one
that does (a few steps here; the shipped file is its full-length output); --vision-lr-scale where SAT cannot."""
import subprocess
import sys

import pytest
import torch
from porter_visualglm.checkpoint import CheckpointError, read_image_encoder
from porter_visualglm.config import preset, replace
from porter_visualglm.data_paths import PACKAGE_DIR, TINY_IMAGE_ENCODER


def test_the_shipped_encoder_fits_the_tiny_preset_and_nothing_wider():
    weights = read_image_encoder(TINY_IMAGE_ENCODER, preset("tiny"))
    assert any(k.startswith("mixins.eva.model.vit.") for k in weights)
    assert any(k.startswith("mixins.eva.model.qformer.") for k in weights)
    tiny = preset("tiny")
    wider = replace(tiny, vision=replace(tiny.vision, hidden=128, mlp=256))
    with pytest.raises(CheckpointError, match=r"not an image encoder for this model .*shape of mixins\.eva\.model\.vit"):
        read_image_encoder(TINY_IMAGE_ENCODER, wider)


def test_the_generator_writes_an_encoder_the_trainer_reads(tmp_path):
    out = tmp_path / "encoder.pt"
    r = subprocess.run([sys.executable, str(PACKAGE_DIR / "data" / "make_image_encoder.py"), str(out), "--steps", "3"],
                       capture_output=True, text=True, timeout=300, env={"PORTER_DEVICE": "cpu", "PATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 3/3" in r.stdout and "held-out images: colour" in r.stdout
    written = read_image_encoder(out, preset("tiny"))
    shipped = torch.load(TINY_IMAGE_ENCODER, weights_only=True)
    assert written.keys() == shipped.keys()
    assert not all(torch.equal(written[k], shipped[k]) for k in shipped)  # 3 steps are not the shipped 1000


@pytest.mark.parametrize("version,refused", [("0.4.5", True), ("0.3.6", True), ("0.4.6", False), ("0.4.12", False)])
def test_vision_lr_scale_is_refused_where_sat_ignores_per_parameter_rates(monkeypatch, version, refused):
    from importlib import metadata

    from porter_visualglm.train import check_lr_scale_support

    from porter.errors import InputError

    monkeypatch.setattr(metadata, "version", lambda name: version if name == "SwissArmyTransformer" else "0")
    if refused:
        with pytest.raises(InputError, match=rf"SwissArmyTransformer {version} ignores per-parameter") as err:
            check_lr_scale_support()
        assert err.value.exit_code == 2
    else:
        check_lr_scale_support()


def test_a_vision_lr_scale_becomes_a_sat_parameter_group_of_that_rate_and_zero_freezes(tiny_config):
    from porter_visualglm.model import build_model, scale_vision_lr
    from sat.training.deepspeed_training import get_optimizer_param_groups

    model = build_model(tiny_config, finetune="full")
    vit = {id(p) for n, p in model.named_parameters() if ".vit." in n}
    assert len(scale_vision_lr(model, 0.1)) == len(vit)
    groups = get_optimizer_param_groups(model)  # SAT's own grouping, as its training_main builds the optimizer
    scaled = [g for g in groups if g["lr"] == 0.1]
    assert {id(p) for g in scaled for p in g["params"]} == vit
    assert all(g["lr"] == 1.0 for g in groups if g not in scaled)

    frozen = build_model(tiny_config, finetune="full")
    scale_vision_lr(frozen, 0)
    groups = get_optimizer_param_groups(frozen)
    assert not {id(p) for g in groups for p in g["params"]} & {id(p) for n, p in frozen.named_parameters() if ".vit." in n}
    assert all(p.requires_grad == (".vit." not in n) for n, p in frozen.named_parameters())
