"""A few steps of SAT's own training loop on a tiny random ChatGLM: get_args + training_main, unchanged.

Run as ``python -m porter_sat.smoke --iters 5 --save DIR [--zero-stage 0|1]``, alone or under
``torch.distributed.run`` for several processes. The SAT it imports is whatever is first on sys.path, so the
same script proves a patched copy works and shows an unpatched one fails. It prints one
``PORTER-SMOKE {json}`` line per rank at the end: the losses seen and the checkpoint written.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import torch

from porter.recipes import single_process_defaults

VOCAB, PAD, GMASK, BOS, EOS = 160, 0, 150, 151, 152
SEQ = 24


def model_args(seed: int = 1234) -> list[str]:
    """A 2-layer ChatGLM small enough to train on a CPU in seconds.

    The token-id options are passed only where the installed release's ChatGLMModel declares them: SAT before
    0.4.x fixes the ids in the model (pad 3) and would refuse an option it does not know."""
    common = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--vocab-size", str(VOCAB),
              "--max-sequence-length", "64", "--inner-hidden-size", "128", "--hidden-dropout", "0.0",
              "--attention-dropout", "0.0", "--layernorm-order", "post", "--seed", str(seed)]
    ids = {"--bos-token-id": BOS, "--mask-token-id": 149, "--gmask-token-id": GMASK, "--pad-token-id": PAD}
    known = _chatglm_options()
    return common + [str(x) for flag, value in ids.items() if flag in known for x in (flag, value)]


def _chatglm_options() -> set[str]:
    from sat.model.official.chatglm_model import ChatGLMModel

    parser = argparse.ArgumentParser(add_help=False)
    ChatGLMModel.add_model_specific_args(parser)
    return set(parser._option_string_actions)


def sample(index: int) -> torch.Tensor:
    """A deterministic 'prompt gMASK BOS answer EOS' sequence whose answer repeats its prompt."""
    g = torch.Generator().manual_seed(index)
    prompt = torch.randint(1, 100, (8,), generator=g)
    answer = prompt[:SEQ - 8 - 3]
    ids = torch.cat([prompt, torch.tensor([GMASK, BOS]), answer, torch.tensor([EOS])])
    return torch.cat([ids, torch.full((SEQ - ids.numel(),), PAD)])


class SyntheticDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 256

    def __getitem__(self, index):
        return {"input_ids": sample(index)}


def create_dataset(path, args, **kwargs):
    return SyntheticDataset()


def lm_loss(model, input_ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=input_ids)[0]
    # next-token loss on the answer: everything after BOS
    labels = input_ids[:, 1:].clone()
    bos_at = (input_ids == BOS).int().argmax(dim=1)
    positions = torch.arange(labels.shape[1], device=labels.device).unsqueeze(0)
    labels[positions < bos_at.unsqueeze(1)] = -100
    labels[labels == PAD] = -100
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1), ignore_index=-100)


def forward_step(data_iterator, model, args, timers):
    from sat import mpu

    timers("batch generator").start()
    batch = next(data_iterator) if data_iterator is not None else None
    data = mpu.broadcast_data(["input_ids"], batch, torch.int64)
    timers("batch generator").stop()
    loss = lm_loss(model, data["input_ids"].long())
    return loss, {}


def deepspeed_config(zero_stage: int, batch_size: int) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.0, "torch_adam": True}},
    }
    if zero_stage:
        config["zero_optimization"] = {"stage": zero_stage, "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7}
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--save", required=True)
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    ours = parser.parse_args(argv)
    single_process_defaults()

    from sat import get_args
    from sat.model.official.chatglm_model import ChatGLMModel
    from sat.training.deepspeed_training import training_main

    scratch = tempfile.mkdtemp(prefix="porter-smoke-")  # DeepSpeed config and TensorBoard events
    config_path = os.path.join(scratch, "ds_config.json")
    with open(config_path, "w") as fh:
        json.dump(deepspeed_config(ours.zero_stage, ours.batch_size), fh)
    sat_argv = ["--mode", "finetune", "--train-iters", str(ours.iters), "--train-data", "synthetic",
                "--split", "1", "--save", ours.save, "--save-interval", str(ours.iters), "--log-interval", "1",
                "--eval-interval", str(10 ** 6), "--zero-stage", str(ours.zero_stage), "--num-workers", "0",
                "--lr", "1e-3", "--warmup", "0.1", "--experiment-name", "smoke", "--deepspeed_config", config_path,
                "--summary-dir", scratch,
                *model_args(ours.seed)]
    parser = argparse.ArgumentParser()
    ChatGLMModel.add_model_specific_args(parser)
    args = get_args(sat_argv, parser)

    losses: list[float] = []
    engine: dict[str, object] = {}  # what DeepSpeed's engine reports, once

    def record(data_iterator, model, args, timers):
        loss, metrics = forward_step(data_iterator, model, args, timers)
        losses.append(float(loss.detach()))
        if not engine and hasattr(model, "zero_optimization_stage"):
            engine.update(zero_stage=model.zero_optimization_stage(), optimizer=type(model.optimizer).__name__)
        return loss, metrics

    training_main(args, model_cls=ChatGLMModel, forward_step_function=record, create_dataset_function=create_dataset)
    result = {"rank": int(os.environ.get("RANK", "0")), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
              "losses": losses, "save": args.save, **engine, "finite": all(math.isfinite(x) for x in losses)}
    print("PORTER-SMOKE " + json.dumps(result), flush=True)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if losses and result["finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
