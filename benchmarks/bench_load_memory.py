"""Peak host memory of loading a VisualGLM checkpoint: porter's loader (meta build, memory-mapped file, tensors
assigned in fp16) against the usual way (random fp32 model, whole file read, load_state_dict), each in a fresh
process, alternating, on a mid-size checkpoint in the release's layout. Results in results/load_memory.json.

    .venv/bin/python benchmarks/bench_load_memory.py [--runs 3]

Peak RSS is the process's VmHWM; the baseline is the same process's imports without a load.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _shared import save

MID = {"num_layers": 8, "hidden_size": 1024, "num_attention_heads": 16, "inner_hidden_size": 4096,
       "eva_args": {"num_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "inner_hidden_size": 2048},
       "qformer_args": {"num_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "is_decoder": [True, False],
                        "cross_attn_hidden_size": 512}}

CHILD = r"""
import contextlib, sys, torch
with contextlib.redirect_stdout(sys.stderr):
    import sat
from porter_visualglm.checkpoint import load_model, inspect_checkpoint
from porter_visualglm.model import build_model
mode, folder = sys.argv[1], sys.argv[2]
if mode == "porter":
    model, _ = load_model(folder, dtype=torch.float16)
elif mode == "usual":
    ckpt = inspect_checkpoint(folder)
    model = build_model(ckpt.config)
    from porter.runtime.checkpoints import load as load_checkpoint  # the file is untrusted even here

    weights = load_checkpoint(ckpt.states_file, map_location="cpu")["module"]
    weights.pop("transformer.position_embeddings.weight")
    model.load_state_dict(weights, strict=False)
    model = model.half()
    del weights
if mode != "baseline":
    total = sum(float(p.sum()) for p in model.parameters())  # every page touched, no fp32 copy made
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak
print([int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
"""


def peak(mode: str, folder: Path) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    from porter_visualglm.release import make_release_folder, tiny_release_config

    config = tiny_release_config()
    for key, value in MID.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_release_folder(Path(tmp) / "mid", config, seed=0, dtype="fp16")
        size = (folder / "1" / "mp_rank_00_model_states.pt").stat().st_size
        samples: dict[str, list[int]] = {"baseline": [], "porter": [], "usual": []}
        for _ in range(runs):  # alternating, so drift on a noisy machine hits both alike
            for mode in samples:
                samples[mode].append(peak(mode, folder))
    base = statistics.median(samples["baseline"])
    result = {
        "machine": platform.machine(), "python": platform.python_version(), "runs": runs,
        "file_bytes": size, "baseline_rss_bytes": base,
        "samples_rss_bytes": samples,
        "porter_over_baseline_per_file_byte": (statistics.median(samples["porter"]) - base) / size,
        "usual_over_baseline_per_file_byte": (statistics.median(samples["usual"]) - base) / size,
        "goal": "porter <= 1.3",
    }
    save("load_memory", result)
    print(f"file {size / 2**30:.2f} GiB fp16; peak RSS above the {base / 2**30:.2f} GiB baseline, per byte of file: "
          f"porter {result['porter_over_baseline_per_file_byte']:.2f}, usual way "
          f"{result['usual_over_baseline_per_file_byte']:.2f} (median of {runs}, alternating)")
    return result


if __name__ == "__main__":
    main()
