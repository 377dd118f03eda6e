"""`porter run visualglm demo` (`make demo`): the whole product on this machine, in a few minutes.

Patches the installed SAT on disk (the journaled transaction), trains the tiny VisualGLM on the shipped
shapes with 2 CPU processes through DeepSpeed and SAT's training_main, answers questions about held-out
images beside the expected captions, scores them, and reverts the patch it applied. The image encoder starts
from the tiny preset's pretrained one (``image_encoder.tiny_encoder``: built by `make install`, else here, and
cached), as VisualGLM's starts from EVA-CLIP and BLIP-2, with the ViT and the Q-Former frozen as upstream's
fine-tuning leaves them.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from porter.errors import PorterError
from porter.recipes import positive_int

from . import import_sat

EPILOG = """\
examples:
  porter run visualglm demo                   the defaults (about 4 minutes on 2 CPU cores)
  porter run visualglm demo --iters 100       shorter, and the model knows less
"""


def add_arguments(p):
    p.add_argument("--iters", type=positive_int, default=400, help="training steps (default 400)")
    p.add_argument("--workers", type=positive_int, default=2, help="CPU processes (default 2)")
    p.add_argument("--seed", type=positive_int, default=1234, help="training seed (default 1234)")
    p.add_argument("--save", type=Path, default=Path("runs/demo"),
                   help="run folder (default runs/demo): new, empty, or an earlier porter run's, whose run files "
                        "(checkpoints, metrics, summary) are replaced; a folder holding anything else is refused")
    p.add_argument("--patch", choices=("disk", "memory"), default="disk",
                   help="disk (default): patch the installed SAT and revert it at the end; memory: touch nothing")


def porter(*args, quiet: bool = False) -> subprocess.CompletedProcess:
    """The porter CLI in a fresh interpreter, as a user runs it: the demo uses porter as its users do. ``quiet``
    keeps its output (progress and tables) for the caller, who shows it only when the command failed."""
    print(f"\n$ porter {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "porter.cli", *args], text=True,
                          capture_output=quiet)
    if quiet and done.returncode != 0:
        print(done.stdout + done.stderr, end="", flush=True)
    return done


def sat_state() -> str:
    import json

    done = subprocess.run([sys.executable, "-m", "porter.cli", "status", "sat", "--json"], text=True,
                          capture_output=True)
    if done.returncode != 0:
        raise PorterError(f"`porter status sat` failed: {done.stderr.strip()}")
    return json.loads(done.stdout)[0]["state"]


def run(args) -> int:
    import json

    from porter.outputs import claim_run_folder, clear_run_outputs

    # first, before minutes of work: the run folder must be new, empty or an earlier porter run's; of an earlier
    # run only the files a run writes are removed, never the folder
    clear_run_outputs(claim_run_folder(args.save, "--save"))
    encoder = pretrained_encoder()
    applied = False
    if args.patch == "disk" and sat_state() != "patched":
        done = porter("patch", "sat", "--json", quiet=True)
        if done.returncode != 0:
            raise PorterError("`porter patch sat` failed; see above")
        outcome = json.loads(done.stdout)
        print(f"sat {outcome['version']}: patched {len(outcome['files'])} file(s) as one journaled transaction "
              f"(`porter patch sat --dry-run` shows the diff and the rule table)", flush=True)
        applied = True
    try:
        code = porter("run", "visualglm", "train", "--npus", str(args.workers), "--device", "cpu",
                      "--preset", "tiny", "--finetune", "full", "--iters", str(args.iters), "--batch-size", "16",
                      "--lr", "3e-3", "--warmup", "0.05", "--zero-stage", "0", "--augment", "--pad-to", "longest",
                      "--image-encoder", str(encoder), "--vision-lr-scale", "0", "--qformer-lr-scale", "0",
                      "--seed", str(args.seed),
                      "--patch", args.patch, "--save", str(args.save), "--log-interval", "25").returncode
        if code != 0:
            raise PorterError(f"training failed (exit {code}); see above")
        return evaluate_run(args.save)
    finally:
        if applied:
            done = porter("revert", quiet=True)
            if done.returncode != 0:
                raise PorterError("`porter revert` failed; see above (run it again, or `porter status` to see why)")
            print(done.stdout.strip(), flush=True)


def pretrained_encoder() -> Path:
    """The tiny preset's pretrained image encoder: `make install` builds it, else the first demo on a machine
    does (about 4 minutes)."""
    import os

    os.environ.setdefault("PORTER_DEVICE", "cpu")
    os.environ.setdefault("SAT_LOGLEVEL", "WARNING")  # SAT's start-up lines are not the demo's news
    from .image_encoder import tiny_encoder

    return tiny_encoder(log=lambda line: print(line, flush=True))


def evaluate_run(save: Path) -> int:
    import json
    import os

    os.environ.setdefault("PORTER_DEVICE", "cpu")
    import_sat()
    from . import evaluate
    from .assets import tokenizer_for, tokenizer_type_of
    from .checkpoint import load_model

    summary = json.loads((save / "summary.json").read_text())
    model, ckpt = load_model(summary["checkpoint"])
    tokenizer = tokenizer_for(tokenizer_type_of(ckpt), None)
    print("\nheld-out images (never seen in training): the model's answer beside the expected caption\n", flush=True)
    rows = evaluate.answer(model.eval(), tokenizer, evaluate.held_out(), ckpt.config.vision.image_size)
    width = max(len(r.references[0]) for r in rows)
    for r in rows:
        marks = ("colour " if r.colour_right else "") + ("shape" if r.shape_right else "")
        print(f"{Path(r.image).name}  {r.references[0]:<{width}}  | {r.answer:<{width}}  {marks.strip() or '-'}")
    scores = evaluate.score(rows)
    s, c = scores["shapes"], scores["captions"]
    print(f"\ncolour right {s['colour']:.0%}, shape right {s['shape']:.0%}, colour or shape right "
          f"{s['colour_or_shape']:.0%}, both {s['both']:.0%} of {s['answers']} answers "
          f"(chance: colour 17%, shape 33%); BLEU-4 {c['BLEU-4']:.3f}, ROUGE-L {c['ROUGE-L']:.3f}, "
          f"CIDEr {c['CIDEr']:.3f}")
    print(f"loss curve: {summary['loss_curve']}\ncheckpoint: {summary['checkpoint']}\nmetrics: {summary['metrics']}")
    print(f"try it: porter run visualglm infer --from_pretrained {summary['checkpoint']} --english "
          f"--image models/visualglm/data/shapes/fewshot/images/000000000073.png")
    (save / "demo_score.json").write_text(json.dumps(scores, indent=2) + "\n")
    return 0
