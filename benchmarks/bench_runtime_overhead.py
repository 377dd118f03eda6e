"""What the patched SAT costs at run time: ChatGLM forward + backward through the original SAT and through the
patched one, same weights and inputs, on the CPU, at two sizes.

Two worker processes stay up, one importing the original SAT (a copy of the installed one) and one the patched
copy; the parent asks them in turn (A, B, A, B, ...) for a batch of timed steps, so both see the same machine
noise. Each step's loss is returned too: equal losses show the two ran the same computation.

    .venv/bin/python benchmarks/bench_runtime_overhead.py [--rounds 7]      -> results/runtime_overhead.json
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
import time
from pathlib import Path

from _shared import original_and_patched, save, summary

SIZES = {"2 layers, hidden 256": (2, 256, 8), "6 layers, hidden 1024": (6, 1024, 16)}  # layers, hidden, heads
GOAL = 1.02  # patched / original, at most


def worker() -> None:
    """Answers `SIZE ITERS` lines with one `RESULT {json}` line: per-step seconds and losses. Whatever SAT and
    DeepSpeed print goes to stderr, so stdout carries only the answers."""
    import contextlib

    import torch

    answers, sys.stdout = sys.stdout, sys.stderr
    with contextlib.redirect_stdout(sys.stderr):
        from porter_sat.smoke import lm_loss, sample

    torch.set_num_threads(1)  # both workers share the machine's cores evenly
    models = {}
    batch = torch.stack([sample(i) for i in range(8)])
    for line in sys.stdin:
        name, iters = line.rsplit(" ", 1)
        if name not in models:
            layers, hidden, heads = SIZES[name]
            models[name] = _model(layers, hidden, heads)  # its prints go to stderr (sys.stdout is stderr here)
        model = models[name]
        times, losses = [], []
        for _ in range(int(iters)):
            start = time.perf_counter()
            loss = lm_loss(model, batch)
            loss.backward()
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
            model.zero_grad(set_to_none=True)
        print("RESULT " + json.dumps({"times": times, "losses": losses}), file=answers, flush=True)


def _model(layers: int, hidden: int, heads: int):
    import argparse as ap

    import torch
    from porter_sat.smoke import model_args
    from sat import get_args
    from sat.model.official.chatglm_model import ChatGLMModel

    from porter.recipes import single_process_defaults

    single_process_defaults()
    parser = ap.ArgumentParser()
    ChatGLMModel.add_model_specific_args(parser)
    sizes = ["--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", str(heads),
             "--inner-hidden-size", str(4 * hidden)]
    args = get_args(["--mode", "inference", "--distributed-backend", "gloo", *model_args(1234), *sizes], parser)
    torch.manual_seed(1234)
    return ChatGLMModel(args).float().train()


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3, help="steps per request")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        original, patched = original_and_patched(Path(tmp))
        env = {**os.environ, "PORTER_DEVICE": "cpu"}
        procs = {label: subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True,
                                         env={**env, "PYTHONPATH": str(site)})
                 for label, site in (("original", original), ("patched", patched))}

        def ask(label: str, size: str, iters: int) -> dict:
            procs[label].stdin.write(f"{size} {iters}\n")
            procs[label].stdin.flush()
            for line in procs[label].stdout:
                if line.startswith("RESULT "):
                    return json.loads(line[len("RESULT "):])
            raise SystemExit(f"the {label} worker exited without an answer (its stderr is above)")

        result = {"what": "ChatGLM forward + backward (SAT's ChatGLMModel, fp32, batch 8 x 24 tokens), original vs "
                          "patched SAT, one thread per worker, alternating requests",
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rounds": opts.rounds,
                  "steps_per_request": opts.iters, "goal_ratio_at_most": GOAL, "sizes": {}}
        for size in SIZES:
            for label in procs:  # warm-up: build the model, first steps
                ask(label, size, 2)
            samples = {"original": [], "patched": []}
            ratios, same_loss = [], True
            for _ in range(opts.rounds):
                a, b = ask("original", size, opts.iters), ask("patched", size, opts.iters)
                samples["original"].append(statistics.median(a["times"]))
                samples["patched"].append(statistics.median(b["times"]))
                ratios.append(samples["patched"][-1] / samples["original"][-1])
                same_loss &= a["losses"] == b["losses"]
            result["sizes"][size] = {
                "seconds_per_step": {k: summary(v)
                                     for k, v in samples.items()},
                "ratio_patched_to_original": {"median": statistics.median(ratios), "min": min(ratios),
                                              "max": max(ratios), "samples": ratios},
                "losses_identical": same_loss,
                "goal_met": statistics.median(ratios) <= GOAL,
            }
            print(size, json.dumps(result["sizes"][size]["ratio_patched_to_original"]), "same losses:", same_loss,
                  flush=True)
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    save("runtime_overhead", result)
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
