"""What --quant 8 and --quant 4 cost in accuracy, on two models. Results in results/quant_accuracy.json.

    .venv/bin/python benchmarks/bench_quant_accuracy.py [--demo runs/demo/checkpoints/visualglm-MM-DD-HH-MM]

1. The model `make demo` trains (default: the newest folder under runs/demo/checkpoints; run `make demo` first):
   its 36 held-out questions answered greedily, unquantized (fp32, the CPU's default) and with --quant 8 / 4
   (bf16, the CPU's default with --quant; and fp32, to tell quantization from bf16), answers compared one by one;
   the last position's logits of every question compared by cosine.
2. A real-shaped smaller model with heavy-tailed weights (make_6b_standin's generator at the release's structure,
   1024 wide, 8 language layers; not trained, so only its logits mean anything): the logits' cosine.

Each model is loaded the way `porter run` loads it: SAT ported in memory, quantized while the file is read.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from _shared import save

MID = {"num_layers": 8, "hidden_size": 1024, "num_attention_heads": 16, "inner_hidden_size": 4096,
       "eva_args": {"num_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "inner_hidden_size": 2048},
       "qformer_args": {"num_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "is_decoder": [True, False],
                        "cross_attn_hidden_size": 512}}
WAYS = (("fp32", None), ("bf16", 8), ("fp32", 8), ("bf16", 4), ("fp32", 4))


def port_sat() -> None:
    from porter import memory, plugins

    memory.install(memory.prepare_for(plugins.load(lazy=True), "sat"))
    with contextlib.redirect_stdout(sys.stderr):
        import sat  # noqa: F401


def last_logits(model, tokenizer, items, image_size):
    """Each question's next-token logits after its prompt (float32)."""
    import torch
    from porter_visualglm.chat import build_prompt
    from porter_visualglm.images import load_image

    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    out = []
    with torch.no_grad():
        for item in items:
            prompt = build_prompt(tokenizer, item.prompt, image_length=model.image_length)
            image = load_image(item.image, image_size).unsqueeze(0).to(dtype)
            logits = model(input_ids=torch.tensor([prompt.ids]), image=image, pre_image=prompt.pre_image)[0]
            out.append(logits[0, -1].float())
    return out


def cosines(a, b) -> list[float]:
    import torch

    return [float(torch.nn.functional.cosine_similarity(x, y, dim=0)) for x, y in zip(a, b)]


def load(folder: Path, dtype_name: str, bits):
    import torch
    from porter_visualglm.checkpoint import load_model

    model, ckpt = load_model(folder, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name], quant=bits)
    return model.eval(), ckpt


def demo_model(folder: Path) -> dict:
    import copy

    from porter_visualglm.assets import tokenizer_for, tokenizer_type_of
    from porter_visualglm.evaluate import answer, held_out

    items = held_out()
    results: dict = {"checkpoint": str(folder), "questions": len(items), "ways": {}}
    answers, logits = {}, {}
    for dtype_name, bits in WAYS:
        model, ckpt = load(folder, dtype_name, bits)
        tokenizer = tokenizer_for(tokenizer_type_of(ckpt), None)
        name = f"{dtype_name}" + (f" int{bits}" if bits else "")
        done = answer(model, tokenizer, copy.deepcopy(items), ckpt.config.vision.image_size)
        answers[name] = [a.answer for a in done]
        logits[name] = last_logits(model, tokenizer, items, ckpt.config.vision.image_size)
    base = "fp32"
    for name in answers:
        if name == base:
            continue
        same = sum(x == y for x, y in zip(answers[name], answers[base]))
        cos = cosines(logits[name], logits[base])
        results["ways"][name] = {"answers_equal": same, "logits_cosine_min": min(cos),
                                 "logits_cosine_mean": sum(cos) / len(cos)}
        print(f"demo model, {name}: {same}/{len(items)} answers equal to fp32's; logits cosine min {min(cos):.5f}, "
              f"mean {sum(cos) / len(cos):.5f}", flush=True)
    return results


def heavy_tailed_model() -> dict:
    from make_6b_standin import make_standin
    from porter_visualglm.assets import STANDIN, tokenizer_for
    from porter_visualglm.evaluate import held_out
    from porter_visualglm.release import tiny_release_config

    config = tiny_release_config()
    for key, value in MID.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    items = held_out()[:8]
    results: dict = {"sizes": MID, "questions": len(items), "ways": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_standin(Path(tmp) / "mid", config, seed=0)
        tokenizer = tokenizer_for(STANDIN, None)
        logits = {}
        for dtype_name, bits in WAYS:
            model, ckpt = load(folder, dtype_name, bits)
            name = f"{dtype_name}" + (f" int{bits}" if bits else "")
            logits[name] = last_logits(model, tokenizer, items, ckpt.config.vision.image_size)
    for name in logits:
        if name != "fp32":
            cos = cosines(logits[name], logits["fp32"])
            results["ways"][name] = {"logits_cosine_min": min(cos), "logits_cosine_mean": sum(cos) / len(cos)}
            print(f"heavy-tailed 1024-wide model, {name}: logits cosine min {min(cos):.5f}, mean "
                  f"{sum(cos) / len(cos):.5f}", flush=True)
    return results


def newest_demo() -> Path | None:
    found = sorted(Path("runs/demo/checkpoints").glob("visualglm-*"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=None, help="the demo's checkpoint (default: the newest)")
    args = parser.parse_args()
    folder = args.demo or newest_demo()
    if folder is None:
        raise SystemExit("no demo checkpoint under runs/demo/checkpoints: run `make demo` first, or pass --demo DIR")
    import os

    os.environ.setdefault("PORTER_DEVICE", "cpu")
    port_sat()
    result = {"demo": demo_model(folder), "heavy_tailed": heavy_tailed_model(),
              "goals": {"int8 logits cosine": ">= 0.999", "demo answers under --quant 8": ">= 34 of 36 equal"}}
    save("quant_accuracy", result)
    return result


if __name__ == "__main__":
    main()
