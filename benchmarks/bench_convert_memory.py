"""Peak anonymous memory of `porter run visualglm convert` (issue #28): converting a >= 1 GB checkpoint in 4 shards
should take at most 2x its largest shard above the process's post-import baseline. Results in
results/convert_memory.json.

    .venv/bin/python benchmarks/bench_convert_memory.py [--runs 3]

What runs: an HF-layout VisualGLM stand-in (fp16 random weights, ChatGLM's 130528-token vocabulary, LM hidden 1024,
24 layers; ~1.17 GB in 4 shards) and a SAT copy of it, both made once and kept in
``<porter cache>/bench-convert/`` ($PORTER_CACHE, default ~/.cache/porter), keyed by their sizes; never in git.
The stand-in's values come from ``standin_layouts.random_hf_weights`` (names and shapes from ``hf_keys``,
config.json from ``hf_config``); its shards are cut by bytes, as ``save_pretrained`` cuts them, not by tensor count
as ``make_hf_folder`` does (which at these sizes gives 460, 193, 199 and 317 MB). The SAT copy is made by the
convert command itself, outside measurement.

Each conversion runs in a fresh child process that imports everything first (torch, safetensors, SAT, the convert
module), records its RssAnon, then runs ``convert.run`` with ``_shared.PeakAnon`` sampling RssAnon every 10 ms:

- HF -> SAT: 4 safetensors shards in, one ``mp_rank_00_model_states.pt`` out;
- SAT -> HF: that one file in, ``--to hf --shard-size`` (the HF stand-in's largest shard) so that ~4 shards come out;
- HF -> SAT with ``--dtype bf16`` and SAT -> SAT ``--mp 2``: the two that copy tensors (a cast; a rank's slices).

Directions alternate, ``--runs`` times each; the output folder is removed after each run. The goal's denominator is
the largest shard of the 4-shard (HF) side: the input's for HF -> SAT, the output's for SAT -> HF (the SAT side is
one file, so "peak / largest source file" is also recorded but is not the goal). RssAnon excludes the mapped
source's pages (page cache, RssFile). Wall times are with the source in the page cache; the output is fsynced.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _shared import save, summary

VERSION = 1  # bump when the stand-in's values or layout change
SHARDS = 4
SEED = 0
GOAL_RATIO = 2.0
SIZES = {"num_layers": 24, "hidden_size": 1024, "num_attention_heads": 16, "inner_hidden_size": 4096,
         "eva_args": {"num_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "inner_hidden_size": 2048},
         "qformer_args": {"num_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "is_decoder": [True, False],
                          "cross_attn_hidden_size": 512}}

CHILD = r"""
import argparse, contextlib, gc, json, os, sys, time
bench_dir, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, bench_dir)
import torch, safetensors, safetensors.torch
from porter_visualglm import import_sat
import_sat()
from porter_visualglm import convert, layouts, tensorio, checkpoint, model, config
from _shared import PeakAnon
parser = argparse.ArgumentParser()
convert.add_arguments(parser)
args = parser.parse_args([src, dst, *sys.argv[4:]])
files = [p for p in __import__("pathlib").Path(src).rglob("*") if p.suffix in (".safetensors", ".pt", ".bin")]
largest = max(p.stat().st_size for p in files)
gc.collect()
start = time.perf_counter()
with PeakAnon() as mem:
    with contextlib.redirect_stdout(sys.stderr):
        rc = convert.run(args)
wall = time.perf_counter() - start
print(json.dumps({"rc": rc, "baseline_anon_bytes": mem.baseline, "peak_anon_bytes": mem.peak,
                  "peak_above_baseline_bytes": mem.peak_above_baseline, "peak_file_bytes": mem.peak_file,
                  "wall_s": wall, "source_files": len(files), "largest_source_file_bytes": largest,
                  "peak_per_largest_source_file": mem.peak_above_baseline / largest}))
"""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sat_config() -> dict:
    from porter_visualglm.release import tiny_release_config

    config = tiny_release_config()
    for key, value in SIZES.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


def standin_key() -> str:
    text = json.dumps({"version": VERSION, "seed": SEED, "shards": SHARDS, "sizes": SIZES}, sort_keys=True)
    return (f"h{SIZES['hidden_size']}-l{SIZES['num_layers']}-s{SHARDS}-v{VERSION}-"
            + hashlib.sha256(text.encode()).hexdigest()[:10])


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".pt", ".bin"))


def make_hf_standin(folder: Path) -> None:
    """Run in its own process (``--make-standin FOLDER``): the HF folder, written into a hidden folder beside it and
    renamed into place, so an interrupted run leaves nothing that looks complete."""
    from porter_visualglm.standin_layouts import hf_config, random_hf_weights
    from safetensors.torch import save_file

    config = hf_config(sat_config())
    start = time.perf_counter()
    weights = random_hf_weights(config, seed=SEED, dtype="fp16")  # all in memory: ~1.2 GB, fine here
    _say(f"drew {sum(t.nbytes for t in weights.values()) / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")
    # contiguous runs of tensors in hf_keys order, each tensor in the shard its middle byte falls in
    total = sum(t.nbytes for t in weights.values())
    parts: list[list[str]] = [[] for _ in range(SHARDS)]
    at = 0
    for name, t in weights.items():
        parts[min(SHARDS - 1, int((at + t.nbytes / 2) * SHARDS // total))].append(name)
        at += t.nbytes
    tmp = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    for k, names in enumerate(parts):
        file = f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors"
        save_file({n: weights[n].contiguous() for n in names}, str(tmp / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
        _say(f"wrote {file}: {len(names)} tensors, {(tmp / file).stat().st_size / 1e6:.0f} MB")
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "standin.json").write_text(json.dumps({"generator": "benchmarks/bench_convert_memory.py",
                                                  "version": VERSION, "seed": SEED, "sizes": SIZES}, indent=2) + "\n")
    os.rename(tmp, folder)


def standins(root: Path) -> tuple[Path, Path]:
    """The HF stand-in and its SAT copy under ``root``, made if missing."""
    key = standin_key()
    hf, sat = root / f"hf-{key}", root / f"sat-{key}"
    root.mkdir(parents=True, exist_ok=True)
    if not (hf / "standin.json").exists():
        _say(f"generating the HF stand-in in {hf} (once; a minute or two)")
        shutil.rmtree(hf, ignore_errors=True)
        subprocess.run([sys.executable, __file__, "--make-standin", str(hf)], check=True)
    if not (sat / "latest").exists():
        _say(f"converting it to SAT's layout in {sat} (once)")
        shutil.rmtree(sat, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "porter.cli", "run", "visualglm", "convert", str(hf), str(sat),
                        "--to", "sat"], check=True, stdout=subprocess.DEVNULL)
    return hf, sat


def convert_once(src: Path, dst: Path, extra: list[str]) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(src), str(dst), *extra],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"conversion {src} -> {dst} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["output_files"] = {p.relative_to(dst).as_posix(): p.stat().st_size for p in weight_files(dst)}
    shutil.rmtree(dst)
    return result


def machine() -> str:
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:")), 0)
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem / 2**20:.0f} GiB"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--make-standin", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.make_standin:
        make_hf_standin(opts.make_standin)
        return {}
    import torch

    from porter.diskio import cache_dir

    root = cache_dir("bench-convert")
    hf, sat = standins(root)
    hf_shards = {p.name: p.stat().st_size for p in weight_files(hf)}
    sat_files = {p.relative_to(sat).as_posix(): p.stat().st_size for p in weight_files(sat)}
    largest_hf = max(hf_shards.values())
    weights_bytes = json.loads((hf / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    _say(f"stand-in: {weights_bytes / 1e9:.3f} GB of fp16 weights in {len(hf_shards)} shards: "
         + ", ".join(f"{b:,}" for b in hf_shards.values()) + f" bytes (largest {largest_hf:,}); SAT copy "
         + ", ".join(f"{n} {b:,}" for n, b in sat_files.items()))
    directions = {"hf_to_sat": (hf, ["--to", "sat"]),
                  "sat_to_hf": (sat, ["--to", "hf", "--shard-size", str(largest_hf)]),
                  # the two that copy tensors: a dtype change, and a split's per-rank slices
                  "hf_to_sat_bf16": (hf, ["--to", "sat", "--dtype", "bf16"]),
                  "sat_to_mp2": (sat, ["--mp", "2"])}
    samples: dict[str, list[dict]] = {d: [] for d in directions}
    for run in range(opts.runs):  # alternating, so drift on a busy machine hits both alike
        for name, (src, extra) in directions.items():
            r = convert_once(src, root / f"out-{name}", extra)
            hf_side = r["output_files"] if name == "sat_to_hf" else hf_shards
            r["largest_hf_shard_bytes"] = max(hf_side.values())
            r["hf_shards"] = len(hf_side)
            r["peak_per_largest_hf_shard"] = r["peak_above_baseline_bytes"] / r["largest_hf_shard_bytes"]
            samples[name].append(r)
            _say(f"run {run + 1}/{opts.runs} {name}: peak {r['peak_above_baseline_bytes'] / 2**20:.0f} MiB above "
                 f"baseline = {r['peak_per_largest_hf_shard']:.2f}x the largest shard, {r['wall_s']:.1f} s")
    per_direction = {}
    for name, rs in samples.items():
        per_direction[name] = {
            "peak_above_baseline_bytes": summary([r["peak_above_baseline_bytes"] for r in rs]),
            "peak_per_largest_hf_shard": summary([r["peak_per_largest_hf_shard"] for r in rs]),
            "peak_per_largest_source_file": summary([r["peak_per_largest_source_file"] for r in rs]),
            "wall_s": summary([r["wall_s"] for r in rs]),
            "baseline_anon_bytes": statistics.median(r["baseline_anon_bytes"] for r in rs),
            "largest_hf_shard_bytes": rs[0]["largest_hf_shard_bytes"], "hf_shards": rs[0]["hf_shards"],
            "largest_source_file_bytes": rs[0]["largest_source_file_bytes"],
            "output_files": rs[0]["output_files"], "runs": rs,
        }
    worst = max(r["peak_per_largest_hf_shard"] for rs in samples.values() for r in rs)
    result = {
        "machine": machine(), "python": platform.python_version(), "torch": torch.__version__, "runs": opts.runs,
        "sampling_interval_s": 0.01,
        # glibc's heap keeps freed 6-8 MB tensors unless told otherwise, which moves the peak: record any setting
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "LD_PRELOAD"))},
        "standin": {"folder_name": hf.name, "sizes": SIZES, "vocab_size": 130528, "weights_bytes": weights_bytes,
                    "hf_shard_bytes": hf_shards, "largest_hf_shard_bytes": largest_hf, "sat_file_bytes": sat_files},
        "directions": per_direction,
        "goal": f"peak RssAnon above the post-import baseline <= {GOAL_RATIO:g}x the largest shard (issue #28)",
        "worst_peak_per_largest_hf_shard": worst,
        "goal_met": worst <= GOAL_RATIO,
    }
    save("convert_memory", result)
    print(f"stand-in {weights_bytes / 1e9:.2f} GB fp16, {len(hf_shards)} shards, largest {largest_hf / 1e6:.0f} MB; "
          f"peak RssAnon above baseline, sampled every 10 ms ({opts.runs} runs, alternating):")
    print(f"  {'direction':<14} {'peak MiB (median, max)':>24} {'x largest shard':>16} {'wall s':>8}")
    for name, d in per_direction.items():
        p, x, w = d["peak_above_baseline_bytes"], d["peak_per_largest_hf_shard"], d["wall_s"]
        print(f"  {name:<14} {p['median'] / 2**20:>14.0f} {p['max'] / 2**20:>9.0f} "
              f"{x['median']:>10.2f} {x['max']:>5.2f} {w['median']:>8.1f}")
    print(f"goal <= {GOAL_RATIO:g}x the largest shard: {'met' if result['goal_met'] else 'NOT met'} "
          f"(worst {worst:.2f}x)")
    return result


if __name__ == "__main__":
    main()
