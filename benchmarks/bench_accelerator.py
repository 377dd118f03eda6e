"""porter.runtime.ops against SAT's default path on an accelerator, bf16, ChatGLM-6B layer shapes (hidden 4096,
32 heads of 128, sequence 1024, batch 1): attention, GELU, rotary. CUDA events, alternating A and B, median of
20. Short enough for 2 minutes of GPU time; without a CUDA device it says so and writes a skip.

    .venv/bin/python benchmarks/bench_accelerator.py      -> results/accelerator.json
"""
from __future__ import annotations

import json
import os
import statistics

import torch
from _shared import save


def cuda_ms(fn, reps: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> dict:
    if not torch.cuda.is_available():
        result = {"skipped": "no CUDA device on this machine: run this script where one is"}
        print(result["skipped"])  # and results/accelerator.json keeps what a GPU machine measured, if any
        return result
    os.environ["PORTER_DEVICE"] = "cuda"
    from porter.runtime import ops

    dev, dt = torch.device("cuda"), torch.bfloat16
    seq, heads, dim, hidden = 1024, 32, 128, 4096
    q, k, v = (torch.randn(1, heads, seq, dim, device=dev, dtype=dt) for _ in range(3))
    x = torch.randn(seq, 4 * hidden, device=dev, dtype=dt)
    rq = torch.randn(seq, 1, heads, dim // 2, device=dev, dtype=dt)
    cos, sin = (torch.randn(seq, 1, 1, dim // 2, device=dev, dtype=dt) for _ in range(2))

    def sat_gelu():  # ChatGLM's gelu_impl formula, eager
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))

    def sat_rotary():
        half = rq.shape[-1] // 2
        rotated = torch.cat((-rq[..., half:], rq[..., :half]), dim=rq.ndim - 1)
        return rq * cos + rotated * sin

    pairs = {
        "attention (causal)": (lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                               lambda: ops.attention(q, k, v, is_causal=True)),
        "gelu": (sat_gelu, lambda: ops.gelu(x)),
        "rotary": (sat_rotary, lambda: ops.rotary_mul(rq, cos, sin)),
    }
    result = {"device": torch.cuda.get_device_name(), "dtype": "bf16", "shapes": {"seq": seq, "heads": heads,
              "head_dim": dim, "hidden": hidden}, "ops": {}}
    for name, (sat_path, porter_path) in pairs.items():
        for fn in (sat_path, porter_path):
            cuda_ms(fn, 3)  # warm-up
        a, b = [], []
        for _ in range(20):
            a.append(cuda_ms(sat_path))
            b.append(cuda_ms(porter_path))
        diff = (sat_path().float() - porter_path().float()).abs().max().item()
        result["ops"][name] = {"sat_ms": statistics.median(a), "porter_ms": statistics.median(b),
                               "ratio": statistics.median(y / z for y, z in zip(b, a)), "max_abs_diff": diff}
        print(name, json.dumps(result["ops"][name]))
    save("accelerator", result)
    return result


if __name__ == "__main__":
    main()
