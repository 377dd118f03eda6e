"""A tiny VisualGLM that has learnt a little: the shipped shapes captions, a few dozen AdamW steps in one process.

Tests of generation, serving and evaluation need answers that depend on the image and the question; a model with
random weights says the same few tokens whatever it is shown.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

STEPS, BATCH, LR = 100, 16, 1e-2  # 100 steps: about 30 s on 2 cores; answers differ by image and language


def teach(folder: Path, steps: int = STEPS, seed: int = 1234) -> Path:
    from porter_visualglm.assets import STANDIN, tokenizer_for
    from porter_visualglm.checkpoint import save_model
    from porter_visualglm.config import preset
    from porter_visualglm.data import Lengths, VisualGLMDataset, collate, load_records
    from porter_visualglm.model import answer_loss, build_model
    from porter_visualglm.train import default_data

    config = preset("tiny")
    model = build_model(config, finetune="full", seed=seed)
    tokenizer = tokenizer_for(STANDIN, None)
    records = load_records(default_data()).records
    data = VisualGLMDataset(records, tokenizer, config.vision.image_size, config.image_length,
                            lengths=Lengths(64, 256, "longest", True))
    torch.manual_seed(seed)
    batches = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, collate_fn=collate, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5) * 0.5 *
                                                 (1 + math.cos(math.pi * s / steps)))
    model.train()
    step = 0
    while step < steps:
        for batch in batches:
            loss = answer_loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == steps:
                break
    return save_model(model.eval(), config, folder, iteration=steps, finetune=None, tokenizer_type=STANDIN)
