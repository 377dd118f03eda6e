"""`convert --merge-lora` on a real LoRA fine-tune: `train --finetune lora` (DeepSpeed, SAT's training_main) on the
demo's data from a model taught that data, merged, answering the 36 held-out questions as the unmerged model does."""
import json

import pytest
import torch

from porter.testing import run_porter

ENV = {"PORTER_DEVICE": "cpu", "SAT_LOGLEVEL": "WARNING"}


@pytest.fixture(scope="module")
def lora_run(taught_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    r = run_porter("run", "visualglm", "train", "--npus", "1", "--device", "cpu", "--from_pretrained",
                   str(taught_checkpoint), "--finetune", "lora", "--lora_rank", "4", "--iters", "20", "--lr", "5e-2",
                   "--save", str(root / "run"), "--master_port", "29547", env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    (checkpoint,) = (root / "run" / "checkpoints").iterdir()
    r = run_porter("run", "visualglm", "convert", str(checkpoint), str(root / "merged"), "--merge-lora", env=ENV,
                   timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "LoRA merged into 4 layer(s) (scaling 1/rank)" in r.stderr
    return checkpoint, root / "merged"


def answers_and_logits(folder):
    from porter_visualglm.assets import tokenizer_for, tokenizer_type_of
    from porter_visualglm.checkpoint import load_model
    from porter_visualglm.data import Lengths, VisualGLMDataset, collate, load_records
    from porter_visualglm.evaluate import answer, held_out
    from porter_visualglm.train import default_data

    model, ckpt = load_model(folder)
    model.eval()
    tokenizer = tokenizer_for(tokenizer_type_of(ckpt), None)
    rows = answer(model, tokenizer, held_out(), ckpt.config.vision.image_size)
    records = load_records(default_data()).records[:16]
    data = VisualGLMDataset(records, tokenizer, ckpt.config.vision.image_size, ckpt.config.image_length,
                            lengths=Lengths(64, 256, "longest", True))
    batch = collate([data[i] for i in range(len(data))])
    with torch.no_grad():  # the answers' logits, as the loss takes them
        mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
        mask[:, :-1] = batch["labels"][:, 1:] != -100
        logits = model(input_ids=batch["input_ids"], image=batch["image"], pre_image=batch["pre_image"],
                       logit_mask=mask)[0].float()
    return [r.answer for r in rows], logits, ckpt


def test_a_merged_lora_fine_tune_answers_the_held_out_questions_as_the_unmerged_one(lora_run, taught_checkpoint):
    lora, merged = lora_run
    config = json.loads((merged / "model_config.json").read_text())
    assert config["use_lora"] is False
    unmerged_answers, unmerged, ckpt = answers_and_logits(lora)
    assert ckpt.finetune == "lora"
    merged_answers, merged, merged_ckpt = answers_and_logits(merged)
    assert merged_ckpt.finetune is None  # a plain checkpoint: it loads without LoRA
    _, base, _ = answers_and_logits(taught_checkpoint)
    assert len(unmerged_answers) == 36 and merged_answers == unmerged_answers
    # the same function to fp32 rounding, and not the base's: the fine-tune moved the logits by far more
    moved, error = float((unmerged - base).abs().max()), float((merged - unmerged).abs().max())
    assert error < 1e-4 and moved > 100 * error, (moved, error)


def test_a_lora_rank_that_disagrees_with_the_config_is_refused(lora_run, tmp_path):
    import shutil

    lora, _ = lora_run
    copy = shutil.copytree(lora, tmp_path / "lora")
    config = json.loads((copy / "model_config.json").read_text())
    config["lora_rank"] = 8
    (copy / "model_config.json").write_text(json.dumps(config))
    r = run_porter("run", "visualglm", "convert", str(copy), str(tmp_path / "out"), "--merge-lora", env=ENV,
                   timeout=120)
    assert r.returncode == 7, r.stderr[-2000:]
    assert "lora_rank 8, but transformer.layers.0.attention.query_key_value.matrix_A.0 has rank 4" in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_porter("run", "visualglm", "convert", str(lora), str(tmp_path / "hf"), "--to", "hf", env=ENV, timeout=120)
    assert r.returncode == 2 and "HF's ChatGLM has no SAT LoRA" in r.stderr and "--merge-lora" in r.stderr
