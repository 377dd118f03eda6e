"""Time per decode step of porter's ``Decoder`` on the tiny preset (random weights, one of the shipped images, upstream's
default sampling or greedy), at batch 1 and batch 8, split into the model's forward and the rest (drawing the
tokens, the step's inputs); optionally against another commit of this repository in the same run.

    .venv/bin/python benchmarks/bench_decode_step.py [--steps 32] [--rounds 3] [--against REV]
                                                                         -> results/decode_step.json

``--against REV`` checks REV out into a temporary git worktree and runs the same measurement there, in a fresh
process each time, alternating with this checkout (A B A B ...): the ratio is this checkout's step time over REV's.
Only the public API both share is used (``Decoder(model, requests, allowed)``, ``step()``), so REV may be any
commit since the decoder existed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCHES = (1, 8)
MODES = ("sampled", "greedy")


def measure(steps: int) -> dict:
    """In this process, with whatever ``porter_visualglm`` is importable: seconds per step by batch and mode."""
    import time

    from porter_visualglm import import_sat

    import_sat()
    from porter_visualglm.assets import STANDIN, tokenizer_for
    from porter_visualglm.chat import build_prompt
    from porter_visualglm.config import preset
    from porter_visualglm.evaluate import held_out
    from porter_visualglm.generate import Decoder, Request, Sampling
    from porter_visualglm.images import load_image
    from porter_visualglm.model import build_model
    from porter_visualglm.tokenizer import EOS

    config = preset("tiny")
    model = build_model(config).eval()
    tokenizer = tokenizer_for(STANDIN, None)
    image = load_image(held_out()[0].image, config.vision.image_size)
    prompt = build_prompt(tokenizer, "图片里有什么？", image_length=model.image_length)
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    forward_time = [0.0]
    real_forward = model.forward

    def timed_forward(*args, **kwargs):  # the model's own share of a step
        started = time.perf_counter()
        out = real_forward(*args, **kwargs)
        forward_time[0] += time.perf_counter() - started
        return out

    model.forward = timed_forward
    out: dict = {}
    for mode in MODES:
        for batch in BATCHES:
            def sampling(i, mode=mode):
                s = (Sampling.greedy(max_length=len(prompt.ids) + steps + 2) if mode == "greedy"
                     else Sampling(max_length=len(prompt.ids) + steps + 2, seed=i))
                s.invalid_slices = [slice(EOS, EOS + 1)]  # every row runs all its steps
                return s

            decoder = Decoder(model, [Request(prompt, image, sampling(i)) for i in range(batch)], allowed)
            decoder.step()  # the prompt
            forward_time[0] = 0.0
            started = time.perf_counter()
            for _ in range(steps):
                decoder.step()
            total = time.perf_counter() - started
            out[f"{mode}/{batch}"] = {"step_s": total / steps, "forward_s": forward_time[0] / steps,
                                      "rest_s": (total - forward_time[0]) / steps}
    return out


def child(tree: Path, steps: int) -> dict:
    env = {**os.environ, "PORTER_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join([str(tree / "models"), str(tree)])}
    # porter_visualglm is the models/visualglm folder under its import name: point it at this tree's copy
    code = (f"import sys, json, types, importlib.util; sys.path.insert(0, {str(tree)!r}); "
            f"spec = importlib.util.spec_from_file_location('porter_visualglm', {str(tree / 'models/visualglm/__init__.py')!r}, "
            f"submodule_search_locations=[{str(tree / 'models/visualglm')!r}]); m = importlib.util.module_from_spec(spec); "
            f"sys.modules['porter_visualglm'] = m; spec.loader.exec_module(m); "
            f"sys.path.insert(0, {str(HERE)!r}); import bench_decode_step as b; "
            f"print('RESULT ' + json.dumps(b.measure({steps})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"the measurement in {tree} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> dict:
    from _shared import save, summary

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--against", metavar="REV", help="another commit, measured alternately in a worktree")
    args = p.parse_args()
    trees = {"this": ROOT}
    with tempfile.TemporaryDirectory(prefix="bench-decode-step-") as tmp:
        if args.against:
            other = Path(tmp) / "other"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.against],
                           check=True, capture_output=True)
            trees[args.against] = other
        try:
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for r in range(args.rounds):
                for name, tree in trees.items():
                    runs[name].append(child(tree, args.steps))
                    row = runs[name][-1]
                    print(f"round {r + 1}, {name}: " + ", ".join(
                        f"{k} {v['step_s'] * 1e3:.1f} ms (forward {v['forward_s'] * 1e3:.1f})" for k, v in row.items()),
                        flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[args.against])],
                               capture_output=True)
    keys = list(runs["this"][0])
    result: dict = {"what": "Decoder.step() on the tiny preset, random weights, one image prompt; ms per step by "
                            "sampling mode / batch",
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": sys.version.split()[0],
                    "steps": args.steps, "rounds": args.rounds, "against": args.against,
                    "step_s": {name: {k: summary([run[k]["step_s"] for run in rs]) for k in keys}
                               for name, rs in runs.items()},
                    "forward_s": {name: {k: summary([run[k]["forward_s"] for run in rs]) for k in keys}
                                  for name, rs in runs.items()}}
    if args.against:
        result["ratio_this_over_against"] = {
            k: statistics.median(a[k]["step_s"] / b[k]["step_s"] for a, b in zip(runs["this"], runs[args.against]))
            for k in keys}
        print("this / " + args.against + ": " + ", ".join(f"{k} {v:.2f}x"
                                                           for k, v in result["ratio_this_over_against"].items()))
    print(f"wrote {save('decode_step', result)}")
    return result


if __name__ == "__main__":
    main()
