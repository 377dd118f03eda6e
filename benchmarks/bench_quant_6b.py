"""VisualGLM-6B quantized on this CPU machine: the released 6B's layout (a generated stand-in, see
make_6b_standin.py), loaded with ``--quant 8`` and ``--quant 4``, one image, a streamed answer. Results in
results/quant_6b.json.

    .venv/bin/python benchmarks/make_6b_standin.py          # once: ~15.6 GB into porter's cache
    .venv/bin/python benchmarks/bench_quant_6b.py [--bits 8 4] [--tokens 24]

Each load runs in a fresh process that gets SAT's port in memory, as `porter run`'s workers do, then:
- peak anonymous memory (RssAnon, sampled every 10 ms) above the process's own baseline after its imports: the
  checkpoint's memory-mapped pages are page cache, not RssAnon, and are reported apart (peak RssFile);
- load time with a cold page cache (the file's pages dropped first with posix_fadvise) and a warm one (the run
  right after; with ~10 GB held by the model, the 15.6 GB file cannot all stay cached on a 24 GB machine, so
  "warm" is as warm as this machine allows: the figure says so by being close to cold);
- decode tokens/s at batch 1 (greedy, after the first token), and the bytes one decode step reads (every tensor
  of the language model's layers, the final norm and lm_head, and one embedding row);
- host bandwidth measured in the same run, in the parent between the children (benchmarks/_shared.bandwidth, at
  decode's thread count), so the decode's share of it is a ratio of two numbers from one machine state.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from _shared import bandwidth, drop_page_cache, save

CHILD = r"""
import contextlib, json, os, sys, time
sys.path.insert(0, sys.argv[4])
from porter import memory, plugins
memory.install(memory.prepare_for(plugins.load(lazy=True), "sat"))   # as porter run's workers get the port
os.environ["PORTER_DEVICE"] = "cpu"
import torch
from _shared import PeakAnon, step_bytes
with contextlib.redirect_stdout(sys.stderr):
    import sat  # noqa: F401
from porter_visualglm.assets import STANDIN, tokenizer_for
from porter_visualglm.chat import build_prompt
from porter_visualglm.checkpoint import load_model
from porter_visualglm.generate import Decoder, Request, Sampling
from porter_visualglm.images import load_image
from porter_visualglm.infer import default_image

folder, bits, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
say = lambda m: print(m, file=sys.stderr, flush=True)
tokenizer = tokenizer_for(STANDIN, None)
out = {"threads": torch.get_num_threads()}
with PeakAnon() as load_mem:
    t = time.perf_counter()
    model, ckpt = load_model(folder, dtype=torch.bfloat16, quant=bits, say=say)
    out["load_s"] = time.perf_counter() - t
    model.eval()
    config = ckpt.config
    prompt = build_prompt(tokenizer, "Describe the image.", [], image_length=config.image_length, has_image=True,
                          english=True)
    image = load_image(default_image(), config.vision.image_size).to(torch.bfloat16)
    sampling = Sampling.greedy(max_length=len(prompt.ids) + tokens + 1)
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    with torch.no_grad():
        decoder = Decoder(model, [Request(prompt, image, sampling)], allowed)
        t = time.perf_counter()
        decoder.step()
        out["first_token_s"] = time.perf_counter() - t
        times = []
        while not decoder.done and len(times) < tokens:
            t = time.perf_counter()
            if decoder.step()[0] is None:
                break
            times.append(time.perf_counter() - t)
out["decode_tokens"] = len(times)
out["decode_tokens_per_s"] = len(times) / sum(times) if times else None
out["peak_anon_bytes"] = load_mem.peak_above_baseline
out["baseline_anon_bytes"] = load_mem.baseline
out["peak_file_bytes"] = load_mem.peak_file

out["bytes_per_token"] = step_bytes(model)
parts = {"quantized": 0, "16-bit": 0}
for name, t in model.state_dict().items():
    parts["quantized" if t.dtype == torch.int8 or name.endswith("weight_scale") else "16-bit"] += (
        t.numel() * t.element_size())
out["held_bytes"] = parts
print(json.dumps(out))
"""


def child(folder: Path, bits: int, tokens: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(bits), str(tokens),
                        str(Path(__file__).parent)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bits {bits}: the child failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def default_folder() -> Path:
    from porter.diskio import cache_dir

    return cache_dir("standins") / "visualglm-6b-fp16"  # where make_6b_standin.py writes it


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="the 6B-layout checkpoint (default: the stand-in)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4], choices=(4, 8))
    parser.add_argument("--tokens", type=int, default=24, help="decode steps timed after the first token")
    args = parser.parse_args()
    folder = args.folder or default_folder()
    states = folder / "1" / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise SystemExit(f"{states}: missing; run benchmarks/make_6b_standin.py first")
    import torch

    threads = torch.get_num_threads()
    result: dict = {"machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
                    "file_bytes": states.stat().st_size, "folder": str(folder), "bandwidth": [], "runs": {}}
    for bits in args.bits:
        result["bandwidth"].append(bandwidth(threads))
        cold_ok = drop_page_cache(states)
        cold = child(folder, bits, args.tokens)
        warm = child(folder, bits, args.tokens)
        result["runs"][str(bits)] = {"cold": cold, "warm": warm, "cold_cache_dropped": cold_ok}
        best = max(b["bytes_per_s"] for b in result["bandwidth"])
        rate = max(r["decode_tokens_per_s"] or 0 for r in (cold, warm))
        share = rate * cold["bytes_per_token"] / best
        result["runs"][str(bits)]["bandwidth_share"] = share
        print(f"int{bits}: peak RssAnon {cold['peak_anon_bytes'] / 2**30:.2f} GiB above baseline "
              f"(held: {cold['held_bytes']['quantized'] / 2**30:.2f} GiB quantized + "
              f"{cold['held_bytes']['16-bit'] / 2**30:.2f} GiB 16-bit); load {cold['load_s']:.0f} s cold, "
              f"{warm['load_s']:.0f} s warm; first token {cold['first_token_s']:.1f} s; decode {rate:.2f} tokens/s x "
              f"{cold['bytes_per_token'] / 2**30:.2f} GiB/token = {share:.0%} of {best / 1e9:.1f} GB/s", flush=True)
    result["bandwidth"].append(bandwidth(threads))
    result["goals"] = {"int8 peak RssAnon": "<= 14 GB", "int4 peak RssAnon": "<= 10 GB",
                       "int8 decode": ">= 50% of bandwidth"}
    save("quant_6b", result)
    return result


if __name__ == "__main__":
    main()
