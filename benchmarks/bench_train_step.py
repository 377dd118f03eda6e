"""One training step of the tiny VisualGLM on the CPU: full logits vs logits only where labels are
(the train recipe's logit_mask). Same batch, same model, alternating, median of 5 each; results/train_step.json.

    .venv/bin/python benchmarks/bench_train_step.py
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import torch
from _shared import save

os.environ.setdefault("PORTER_DEVICE", "cpu")


def main() -> dict:
    with contextlib.redirect_stdout(sys.stderr):
        import sat  # noqa: F401
    from porter_visualglm.config import preset
    from porter_visualglm.data import Lengths, VisualGLMDataset, collate, load_records
    from porter_visualglm.data_paths import SHAPES_DIR
    from porter_visualglm.model import answer_loss, build_model
    from porter_visualglm.standin_tokenizer import standin_tokenizer_dir
    from porter_visualglm.tokenizer import ChatGLMTokenizer

    config = preset("tiny")
    model = build_model(config, finetune="full")
    tokenizer = ChatGLMTokenizer(standin_tokenizer_dir())
    dataset = VisualGLMDataset(load_records(SHAPES_DIR / "fewshot/train.json").records, tokenizer,
                               config.vision.image_size, config.image_length, lengths=Lengths(pad_to="longest"))
    batch = collate([dataset[i] for i in range(16)])
    labels = batch["labels"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(selective: bool) -> float:
        start = time.perf_counter()
        if selective:
            loss = answer_loss(model, batch)
        else:
            logits = model(input_ids=batch["input_ids"], image=batch["image"], pre_image=batch["pre_image"])[0]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    step(True), step(False)  # warm-up
    full, selective = [], []
    for _ in range(5):
        full.append(step(False))
        selective.append(step(True))
    result = {"batch": 16, "sequence": int(batch["input_ids"].shape[1]),
              "labelled_positions": int((labels[:, 1:] != -100).sum()), "threads": torch.get_num_threads(),
              "full_logits_s": statistics.median(full), "selective_logits_s": statistics.median(selective)}
    result["speedup"] = result["full_logits_s"] / result["selective_logits_s"]
    return result


if __name__ == "__main__":
    result = main()
    save("train_step", result)
    for key, value in result.items():
        print(f"{key:20} {value:.3f}" if isinstance(value, float) else f"{key:20} {value}")
