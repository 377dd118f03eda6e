"""The tiny preset's pretrained image encoder: the shipped file fits the preset, and its generator writes one
that does (a few steps here; the shipped file is its 1000-step output)."""
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
