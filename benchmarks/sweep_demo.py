"""What the demo's tiny VisualGLM learns under other settings: one configuration per run, trained in this process
with plain torch (AdamW, warm-up then cosine, as the demo's schedule) on the shipped shapes set, then asked the
held-out questions greedily and scored as `make demo` scores (colour and shape named right).

Not part of `make bench` (about 3 minutes per configuration on 2 cores). Each run appends to
results/demo_sweep.json.

    .venv/bin/python benchmarks/sweep_demo.py --lr 3e-3                    the demo's settings, one process
    .venv/bin/python benchmarks/sweep_demo.py --lr 3e-3 --vision-layers 4 --vision-hidden 128
    .venv/bin/python benchmarks/sweep_demo.py --image-encoder tiny --freeze-vit     the demo's settings now
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

from _shared import RESULTS


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--batch", type=int, default=32, help="the demo's 2 processes x 16")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vision-lr-scale", type=float, default=1.0, help="the ViT's learning rate over the rest's")
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sat-schedule", action="store_true", help="SAT's cosine curve (to 0.1x, not 0), as the recipe")
    p.add_argument("--freeze-vit", action="store_true", help="the ViT's requires_grad off, as --vision-lr-scale 0")
    p.add_argument("--freeze-qformer", action="store_true", help="the Q-Former's requires_grad off, as "
                   "--qformer-lr-scale 0 (the demo's default)")
    p.add_argument("--sat-groups", action="store_true", help="SAT's parameter groups (no weight decay on biases "
                   "and LayerNorms), as the recipe")
    p.add_argument("--sat-sampling", action="store_true", help="SAT's RandomMappingDataset (each index mapped to a "
                   "random sample, with replacement), as the recipe's training_main reads data")
    p.add_argument("--replacement", action="store_true", help="torch's RandomSampler with replacement instead of "
                   "shuffled epochs")
    p.add_argument("--image-encoder", default=None, help="pretrained ViT and Q-Former: a file, or "
                   "'tiny' for the demo's (image_encoder.tiny_encoder: cached, built on first use)")
    a = p.parse_args()
    os.environ.setdefault("PORTER_DEVICE", "cpu")
    import torch

    with contextlib.redirect_stdout(sys.stderr):
        import sat  # noqa: F401
    from porter_visualglm import evaluate
    from porter_visualglm.assets import STANDIN, tokenizer_for
    from porter_visualglm.config import preset, replace
    from porter_visualglm.data import Lengths, VisualGLMDataset, collate, load_records
    from porter_visualglm.model import answer_loss, build_model, scale_lr
    from porter_visualglm.train import default_data

    tiny = preset("tiny")
    config = replace(tiny, vision=replace(tiny.vision, layers=a.vision_layers, hidden=a.vision_hidden,
                                          mlp=2 * a.vision_hidden),
                     qformer=replace(tiny.qformer, queries=a.queries))
    model = build_model(config, finetune="full", seed=a.seed)
    if a.image_encoder:
        from porter_visualglm.checkpoint import read_image_encoder
        from porter_visualglm.image_encoder import tiny_encoder

        path = tiny_encoder(log=lambda line: print(line, file=sys.stderr)) if a.image_encoder == "tiny" else a.image_encoder
        model.load_state_dict(read_image_encoder(path, config), strict=False)
    tokenizer = tokenizer_for(STANDIN, None)
    records = load_records(default_data()).records
    data = VisualGLMDataset(records, tokenizer, config.vision.image_size, config.image_length, flip=True,
                            lengths=Lengths(64, 256, "longest", True))
    if a.freeze_vit:
        scale_lr(model, "vit", 0)
    if a.freeze_qformer:
        scale_lr(model, "qformer", 0)
    torch.manual_seed(a.seed)
    if a.sat_groups:
        from sat.training.deepspeed_training import get_optimizer_param_groups

        groups = [{**g, "lr": a.lr * g["lr"]} for g in get_optimizer_param_groups(model)]
    else:
        vision = [q for n, q in model.named_parameters() if ".vit." in n and q.requires_grad]
        rest = [q for n, q in model.named_parameters() if ".vit." not in n]
        groups = [{"params": rest, "lr": a.lr}, {"params": vision, "lr": a.lr * a.vision_lr_scale}]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.01)
    base = [g["lr"] for g in opt.param_groups]
    if a.replacement:
        draws = torch.utils.data.RandomSampler(data, replacement=True, num_samples=a.iters * a.batch)
        batches = torch.utils.data.DataLoader(data, batch_size=a.batch, sampler=draws, collate_fn=collate,
                                              drop_last=True)
    elif a.sat_sampling:
        from sat.data_utils.configure_data import RandomMappingDataset

        batches = torch.utils.data.DataLoader(RandomMappingDataset(data, scale=200), batch_size=a.batch,
                                              collate_fn=collate, drop_last=True)
    else:
        batches = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=True, collate_fn=collate,
                                              drop_last=True)
    it, started, losses = iter(batches), time.monotonic(), []
    model.train()
    warm = a.warmup * a.iters
    for step in range(a.iters):
        try:
            b = next(it)
        except StopIteration:
            it = iter(batches)
            b = next(it)
        f = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (a.iters - warm)))
        if a.sat_schedule and step >= warm:  # SAT's AnnealingLR, decay ratio 0.1
            f = 0.1 * ((math.cos(math.pi * min(1.0, (step + 1 - warm) / a.iters)) + 1) * 9 / 2 + 1)
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * f
        loss = answer_loss(model, b)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    trained_s = time.monotonic() - started
    model.eval()
    held_out = evaluate.score(evaluate.answer(model, tokenizer, evaluate.held_out(), config.vision.image_size,
                                              batch_size=18, max_new_tokens=24))["shapes"]
    seen = evaluate.score(evaluate.answer(model, tokenizer, evaluate.questions(records[::6]),
                                          config.vision.image_size, batch_size=18, max_new_tokens=24))["shapes"]
    result = {"settings": vars(a), "train_s": trained_s, "final_loss": sum(losses[-20:]) / 20,
              "held_out": held_out, "training_images": seen}
    print(f"held-out colour {held_out['colour']:.0%}, shape {held_out['shape']:.0%}; training images colour "
          f"{seen['colour']:.0%}, shape {seen['shape']:.0%}; {trained_s:.0f} s")
    path = RESULTS / "demo_sweep.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(runs + [result], indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
