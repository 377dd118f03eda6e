"""`porter run visualglm train`: fine-tune VisualGLM through SAT's own training_main and DeepSpeed.

Runs in every worker `porter run` starts (the launcher options --npus, --device, --hostfile, --patch are
porter's, see `porter run visualglm train --help`). Rank 0 shows progress and writes metrics.jsonl,
loss.png, summary.json, the TensorBoard events and sampling.json (where each start of the run began reading
the data, for --resume) under --save; SAT writes the checkpoint there too.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

from porter.errors import PorterError, UsageError
from porter.recipes import fraction, non_negative_float, non_negative_int, positive_float, positive_int, positive_seed

from . import import_sat
from . import tokenizer as tok
from .assets import add_weight_arguments
from .config import FINETUNE_MODES, PRESET_NAMES

EPILOG = """\
examples:
  porter run visualglm train --npus 2 --device cpu --preset tiny --iters 10
      two CPU processes, the tiny model, the shipped data
  porter run visualglm train --npus 8 --data /data/coco2017 --from_pretrained glm/visualglm \\
      --chatglm_path glm/chatglm --fp16
      the old recipe's `bash test/train_full_8p.sh <COCO> <pretrained>` on 8 NPUs
  porter run visualglm train --npus 8 --hostfile hosts --num_nodes 2 --master_addr 10.0.0.1 ...
      several machines through DeepSpeed's hostfile
  porter run visualglm train ... --resume        continue the last run in --save from its checkpoint
  porter run visualglm train --npus 8 --device npu --dry-run    print the launch, run nothing
"""


def default_data() -> Path:
    from .data_paths import SHAPES_DIR

    return SHAPES_DIR / "fewshot" / "train.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    # one function per argument group, called in the order --help lists the groups
    _add_model_arguments(p.add_argument_group("model"))
    _add_data_arguments(p.add_argument_group("data"))
    _add_training_arguments(p.add_argument_group("training"))
    _add_output_arguments(p.add_argument_group("output"))


def _add_model_arguments(g: argparse._ArgumentGroup) -> None:
    """Which model, where its weights start from, and which of them train."""
    g.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="architecture for random init (default tiny)")
    add_weight_arguments(g, dtype=False)  # --fp16 / --bf16 decide
    g.add_argument("--finetune", choices=("auto", *FINETUNE_MODES), default="auto",
                   help="lora: SAT's LoRA adapters only; ptuning: P-tuning v2 prefixes; full: every weight; "
                        "auto (default): lora when starting from --from_pretrained weights, full for a random-init "
                        "--preset (adapters on random weights have nothing to adapt)")
    g.add_argument("--lora_rank", "--lora-rank", type=positive_int, default=10)
    g.add_argument("--layer_range", "--layer-range", "--lora-layers", dest="lora_layers", type=non_negative_int, nargs="+",
                   metavar="I", help="the layers that get LoRA, each one named (upstream's --layer_range: '0 14' is "
                                     "layers 0 and 14, not a range); default: all")
    g.add_argument("--pre_seq_len", "--pre-seq-len", type=positive_int, default=8, help="P-tuning prefix length")
    g.add_argument("--image-encoder", type=Path, metavar="FILE",
                   help="start the ViT and Q-Former of a random-init --preset from pretrained weights, as VisualGLM "
                        "starts from EVA-CLIP and BLIP-2: a torch file of their parameters under the release's names "
                        "(mixins.eva.model.vit.*, mixins.eva.model.qformer.*). `make demo` builds the tiny preset's with "
                        "`python -m porter_visualglm.image_encoder`")
    g.add_argument("--vision-lr-scale", type=non_negative_float, default=1.0, metavar="F",
                   help="the ViT learns at F x --lr: 0 freezes it (as upstream's fine-tuning does), other values "
                        "use SAT's per-parameter lr_scale (SAT 0.4.6 or newer); default 1")
    g.add_argument("--qformer-lr-scale", type=non_negative_float, default=1.0, metavar="F",
                   help="the Q-Former learns at F x --lr, as --vision-lr-scale: 0 freezes it (upstream's fine-tuning "
                        "trains neither; a pretrained --image-encoder keeps the features it was pretrained for); "
                        "default 1")


def _add_data_arguments(g: argparse._ArgumentGroup) -> None:
    """The training set and how each sample becomes ids."""
    g.add_argument("--data", type=Path, help="few-shot JSON file/folder or COCO 2017 root (default: the shipped "
                                             "shapes set). Before the launch every image is decoded once where "
                                             "the set has at most 2000, else a sample of 2000 drawn with --seed")
    g.add_argument("--data-format", choices=("fewshot", "coco", "auto"), default="auto")
    g.add_argument("--prompt", default="What's in the image?", help="question paired with COCO captions")
    g.add_argument("--augment", action="store_true", help="flip images left-right at random (only where captions "
                                                            "do not depend on orientation)")
    g.add_argument("--skip-bad", action="store_true", help="skip records with a missing or unreadable image, a "
                                                           "missing field or an empty caption, and say how many")
    g.add_argument("--max_source_length", "--max-source-length", type=positive_int, default=64,
                   help="ids of image and question, cut to this minus 1 (default 64, as upstream)")
    g.add_argument("--max_target_length", "--max-target-length", type=positive_int, default=None,
                   help="ids of the answer, cut to this minus 2 (default 256, as upstream's finetune script, or "
                        "less where the model's max_sequence_length leaves less after --max_source_length: 192 on "
                        "the tiny preset)")
    g.add_argument("--pad-to", choices=("max", "longest"), default="max",
                   help="max (default, upstream): every sample padded to the two lengths' sum; longest: to the "
                        "longest in its batch (the same loss, less work)")
    g.add_argument("--ignore_pad_token_for_loss", "--ignore-pad-token-for-loss", type=_yes_no, default=True,
                   metavar="true|false", help="pad positions get no loss (default true, as upstream)")


def _add_training_arguments(g: argparse._ArgumentGroup) -> None:
    """Steps, batches, the optimizer, precision and how samples are drawn."""
    g.add_argument("--iters", type=positive_int, default=100, help="optimizer steps")
    g.add_argument("--batch-size", type=positive_int, default=4,
                   help="samples per worker per micro-batch: at most the number of samples, and refused where an "
                        "estimate of the least memory it needs is more than is free")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=positive_float, default=1e-4)
    g.add_argument("--warmup", type=fraction, default=0.02, help="fraction of --iters spent warming up (cosine after)")
    g.add_argument("--zero-stage", type=int, choices=(0, 1, 2), default=None,
                   help="DeepSpeed ZeRO stage (default: 1 with several workers; 0 with one, where ZeRO partitions "
                        "nothing and its flattening and norms cost a quarter of a tiny step; a resumed run keeps "
                        "the stage it started with)")
    precision = g.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 with loss scaling (accelerators only)")
    precision.add_argument("--bf16", action="store_true", help="bf16 (accelerators only; the CPU trains in fp32)")
    g.add_argument("--seed", type=positive_seed, default=1234, help="SAT requires it above 0, numpy below 2**32")
    g.add_argument("--sampling", choices=("epochs", "sat"), default="epochs",
                   help="epochs (default): every sample once per epoch, in a fresh order each epoch, resumed where "
                        "the run stopped; sat: SAT's own RandomMappingDataset, random draws with replacement, as "
                        "upstream's finetune reads data (on a few hundred samples it learns markedly less)")
    g.add_argument("--mode", choices=("full", "performance"), default="full",
                   help="performance: at most 20 steps, no checkpoint, report throughput (as the old scripts)")


def _add_output_arguments(g: argparse._ArgumentGroup) -> None:
    """The run folder, checkpoints, progress lines and --resume."""
    g.add_argument("--save", type=Path, default=Path("runs/visualglm"), help="run folder (default runs/visualglm)")
    g.add_argument("--save-interval", type=positive_int, help="steps between checkpoints (default: only at the end)")
    g.add_argument("--log-interval", type=positive_int, default=1, help="steps between progress lines when not on a terminal")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --save")


def _yes_no(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((p.parent for p in (run_dir / "checkpoints").glob("*/latest")), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def deepspeed_config(args, device_name: str) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "gradient_clipping": 1.0,
        "fp16": {"enabled": bool(args.fp16), "loss_scale": 0, "loss_scale_window": 400, "hysteresis": 2,
                 "min_loss_scale": 1},
        "bf16": {"enabled": bool(args.bf16)},
        "optimizer": {"type": "AdamW", "params": {"lr": args.lr, "betas": [0.9, 0.95], "eps": 1e-8,
                                                  "weight_decay": 0.01}},
    }
    if device_name == "cpu":
        config["optimizer"]["params"]["torch_adam"] = True  # DeepSpeed's own CPU Adam is a minute of compiling
        if _torch_has_fused_cpu_adamw():
            # torch's fused CPU kernel: 0.14-0.28x the for-loop AdamW's step on the tiny preset's 17 M parameters
            # (benchmarks/bench_cpu_adamw.py); DeepSpeed passes the flag through to torch.optim.AdamW
            config["optimizer"]["params"]["fused"] = True
    if args.zero_stage:
        config["zero_optimization"] = {"stage": args.zero_stage, "contiguous_gradients": False,
                                       "overlap_comm": False, "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7}
    return config


def zero_stage(args, world: int, resumed: Path | None = None) -> int:
    """The ZeRO stage of a run: ``--zero-stage`` where given; else the stage the resumed run in ``resumed`` was
    started with (its optimizer states are saved in that stage's layout), read by every rank from rank 0's config
    (which rank 0 replaces atomically, with the same stage); else 1 with several workers and 0 with one. With one
    worker ZeRO partitions nothing, and its gradient flattening, per-tensor norms and copy back cost about a
    quarter of a tiny step (benchmarks/bench_train_overhead.py)."""
    if args.zero_stage is not None:
        return args.zero_stage
    if resumed is not None:
        recorded = _recorded_zero_stage(resumed / "deepspeed_config.rank0.json")
        if recorded is not None:
            return recorded
    return 1 if world > 1 else 0


def _recorded_zero_stage(path: Path) -> int | None:
    """The stage in a DeepSpeed config porter wrote, or None where the file is absent or not one porter writes."""
    try:
        config = json.loads(path.read_text())
        stage = config.get("zero_optimization", {}).get("stage", 0)
    except (OSError, ValueError, AttributeError):
        return None
    return stage if type(stage) is int and stage in (0, 1, 2) else None


def _torch_has_fused_cpu_adamw() -> bool:
    import torch

    from porter.target import version_in

    return version_in(torch.__version__, ">=2.4")  # the release that gave AdamW(fused=True) a CPU kernel


def build(args, say):
    """(model, tokenizer, config, tokenizer_type) for the arguments; the model has its adapters."""
    import torch  # here, not at the top: `porter status` and `--help` load this plugin and must stay light

    from .assets import model_source, tokenizer_for, tokenizer_type_of
    from .checkpoint import load_model, read_image_encoder
    from .model import add_finetuning, build_model, save_adapters_only, scale_lr

    base = quant_base(args)
    if (args.from_pretrained and not args.resume) or base is not None:
        # the precision training runs in (SAT's --fp16 halves the model anyway): no fp32 copy of fp16 weights
        dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32
        quant = getattr(args, "quant", None)
        source = base or args.from_pretrained
        model, ckpt = load_model(source, merge_lora=True, dtype=dtype, say=say, quant=quant)
        config, tokenizer_type = ckpt.config, tokenizer_type_of(ckpt)
        say(f"weights: {source} (iteration {ckpt.iteration}"
            + (f", language model frozen in {quant} bits)" if quant else ")"))
        add_finetuning(model, args.finetune, lora_rank=args.lora_rank, lora_layers=args.lora_layers,
                       pre_seq_len=args.pre_seq_len)
        if base is not None:  # checkpoints hold the adapters; model_config.json names the base (sat_argv)
            save_adapters_only(model, args.finetune)
    else:
        config, tokenizer_type, _ = model_source(args)
        model = build_model(config, finetune=args.finetune, lora_rank=args.lora_rank, lora_layers=args.lora_layers,
                            pre_seq_len=args.pre_seq_len, seed=args.seed)
        if args.image_encoder and not args.resume:  # a resumed run's checkpoint holds the encoder as trained
            model.load_state_dict(read_image_encoder(args.image_encoder, config), strict=False)
            say(f"weights: random ({args.preset} preset), image encoder from {args.image_encoder}")
        elif not args.resume:
            say(f"weights: random ({args.preset} preset)")
    for part, _, scale in lr_scales(args):
        scale_lr(model, part, scale)
    return model, tokenizer_for(tokenizer_type, args.chatglm_path), config, tokenizer_type


def preflight(args) -> None:
    """Run in the parent before any worker starts: everything about the input that a worker would otherwise find
    out after DeepSpeed's start, as one error line with its exit code. A dry run runs it too (porter.launch), so
    ``--dry-run`` answers whether the run would start."""
    from porter.outputs import check_run_folder, claim_run_folder

    from .assets import tokenizer_for

    if getattr(args, "_preflight_passed", False):  # porter.launch ran it already for these arguments
        return
    # new, empty or an earlier porter run's folder, and writable (exit 8); made and marked only once every check
    # passed, and never by a dry run
    check_run_folder(args.save, "--save")
    _check_resume(args)
    config, tokenizer_type, lengths = _check_model(args)
    tokenizer = tokenizer_for(tokenizer_type, args.chatglm_path)
    _check_data(args, tokenizer, config, lengths)
    check_memory(args, config, lengths)
    if not getattr(args, "dry_run", False):
        claim_run_folder(args.save, "--save")
    args._preflight_passed = True


def _check_resume(args) -> None:
    """--resume: --save holds a checkpoint, and what SAT reads of the newest one is sound."""
    from porter.errors import EXIT_USAGE, InputError

    if not args.resume:
        return
    latest = latest_checkpoint(args.save.resolve())
    if latest is None:
        raise InputError(f"--resume: no checkpoint under {args.save / 'checkpoints'}",
                         hint="--save names the run folder of the run to continue", exit_code=EXIT_USAGE)
    check_latest(latest / "latest")
    from .checkpoint import check_resume_states  # its weights file: a regular file whose pickle runs nothing

    check_resume_states(latest)


def _check_model(args):
    """(config, tokenizer_type, lengths) once the model's options are known to fit the model they name."""
    from porter.errors import EXIT_USAGE, InputError

    from .assets import model_source

    if args.image_encoder and args.from_pretrained:
        raise InputError("--image-encoder with --from_pretrained: the checkpoint already holds an image encoder",
                         hint="drop one of them", exit_code=EXIT_USAGE)
    # a checkpoint's check builds its model on the meta device, importing SAT: its loggers must not take stdout
    # (where a dry run prints the command)
    with contextlib.redirect_stdout(sys.stderr):
        config, tokenizer_type, ckpt = model_source(args)
    if getattr(args, "quant", None) and ckpt is not None and (ckpt.finetune or ckpt.quant_base):
        raise InputError(f"--quant {args.quant} --from_pretrained {args.from_pretrained}: a checkpoint fine-tuned "
                         f"with {ckpt.finetune}; training on a quantized base starts from weights without adapters",
                         hint="start from the checkpoint its adapters were trained on, or drop --quant",
                         exit_code=EXIT_USAGE)
    if args.resume:
        quant_base(args)  # a run's recorded base, bits and adapters, checked before any worker starts
    lengths = sample_lengths(args, config)
    check_model_options(args, config)
    if args.image_encoder:
        from .checkpoint import read_image_encoder

        read_image_encoder(args.image_encoder, config)
    for _, flag, scale in lr_scales(args):
        if scale not in (0.0, 1.0):
            check_lr_scale_support(flag)
    return config, tokenizer_type, lengths


def _check_data(args, tokenizer, config, lengths) -> None:
    """The data has records, the first encodes, the images decode, and a batch has that many usable samples."""
    from porter.errors import EXIT_USAGE, InputError

    from .data import DataError, check_images, encode_example, load_records

    data = args.data or default_data()
    loaded = load_records(data, args.data_format, prompt=args.prompt, skip_bad=args.skip_bad)
    if not loaded.records:
        skipped = f" ({len(loaded.skipped)} skipped, first: {loaded.skipped[0]})" if loaded.skipped else ""
        raise DataError(f"{data}: no usable records{skipped}")
    first = loaded.records[0]
    encode_example(tokenizer, config.image_length, first.prompt, first.answer, lengths)
    # every worker decodes every image as it starts: a bad one found there ends a run DeepSpeed already started
    images = check_images(loaded.records, config.vision.image_size, seed=args.seed)
    if images.bad and not args.skip_bad:
        record, why = images.bad[0]
        more = f" (and {len(images.bad) - 1} more record(s))" if len(images.bad) > 1 else ""
        raise DataError(f"{record.source}: {why}{more}", hint="--skip-bad skips such records and reports how many")
    usable = len(loaded.records) - len(images.bad)
    if not usable:
        raise DataError(f"{data}: no usable records (every image checked is unreadable)")
    if args.batch_size > usable:
        raise InputError(f"--batch-size {args.batch_size}: more than the {usable} usable sample(s) in {data}",
                         hint=f"use --batch-size {usable} or less", exit_code=EXIT_USAGE)


DEFAULT_TARGET_LENGTH = 256  # upstream's finetune script


def model_name(args) -> str:
    """Where the model's sizes come from, for messages."""
    if args.from_pretrained and not args.resume:
        return f"{args.from_pretrained / 'model_config.json'}"
    return f"the {args.preset} preset"


def sample_lengths(args, config):
    """--max_source_length and --max_target_length as a :class:`~.data.Lengths`, the target's default cut to what
    the model's max_sequence_length leaves; refused (exit 2) where a sample cannot fit the model: a padded sample
    is their sum long, and positions past the model's maximum are ones it was never trained on."""
    from porter.errors import EXIT_USAGE, PorterError

    from .data import Lengths

    limit, source = config.lm.max_sequence_length, args.max_source_length
    target = args.max_target_length
    if target is None:
        target = min(DEFAULT_TARGET_LENGTH, limit - source)
        if target < 3:
            raise PorterError(f"--max_source_length {source} leaves {max(limit - source, 0)} of the model's "
                              f"max_sequence_length {limit} ({model_name(args)}) for the answer, which needs 3 "
                              f"(<sop>, one id, <eop>)", hint=f"use --max_source_length {limit - 3} or less",
                              exit_code=EXIT_USAGE)
    elif target < 3:
        raise PorterError(f"--max_target_length {target} leaves no room for the answer: <sop> and <eop> take 2 of "
                          f"its ids", hint="use --max_target_length 3 or more", exit_code=EXIT_USAGE)
    elif source + target > limit:
        raise PorterError(f"--max_source_length {source} + --max_target_length {target} = {source + target} ids a "
                          f"sample, beyond the model's max_sequence_length {limit} ({model_name(args)})",
                          hint=f"keep the two at {limit} or less together", exit_code=EXIT_USAGE)
    return Lengths(source, target, args.pad_to, args.ignore_pad_token_for_loss)


def check_model_options(args, config) -> None:
    """Options that name parts of the model must name parts it has (exit 2), here rather than in SAT's mixins
    after the launch."""
    from porter.errors import EXIT_USAGE, PorterError

    from .quantized import check_options

    quant = getattr(args, "quant", None)
    finetune = args.finetune if args.finetune != "auto" else ("lora" if args.from_pretrained else "full")
    check_options(quant, finetune)
    if quant and not args.from_pretrained and not args.resume:
        raise PorterError(f"--quant {quant} needs --from_pretrained DIR: it quantizes a checkpoint's weights",
                          exit_code=EXIT_USAGE)
    layers = config.lm.layers
    beyond = sorted({i for i in args.lora_layers or () if i >= layers})
    if beyond:
        raise PorterError(f"--layer_range {' '.join(map(str, beyond))}: the model has {layers} layers, 0 to "
                          f"{layers - 1} ({model_name(args)})", hint=f"name layers below {layers}",
                          exit_code=EXIT_USAGE)
    if args.lora_rank > config.lm.hidden:  # a rank above the width adapts nothing more, at a cost
        raise PorterError(f"--lora_rank {args.lora_rank}: more than the model's hidden size {config.lm.hidden} "
                          f"({model_name(args)})", hint=f"use --lora_rank {config.lm.hidden} or less (10 as upstream)",
                          exit_code=EXIT_USAGE)
    if args.pre_seq_len > config.lm.max_sequence_length:
        raise PorterError(f"--pre_seq_len {args.pre_seq_len}: more than the model's max_sequence_length "
                          f"{config.lm.max_sequence_length} ({model_name(args)})",
                          hint="a prefix of 8 to 128 is usual", exit_code=EXIT_USAGE)


def check_latest(latest: Path) -> None:
    """What SAT reads from a checkpoint's ``latest`` must be an iteration (a whole number above 0) or "release";
    SAT answers anything else by printing one line and exiting 0 before the first step (exit 7 here)."""
    import re
    import stat

    from porter.errors import InputError

    try:
        if not stat.S_ISREG(os.stat(latest).st_mode):  # a folder, or a FIFO whose read would never end
            raise InputError(f"--resume: {latest}: not a regular file")
        with open(latest, "rb") as f:
            raw = f.read(65)  # an iteration is a few digits: more than this is not one
    except OSError as exc:
        raise InputError(f"--resume: {latest}: cannot read ({exc.strerror or exc})") from None
    text = raw.decode("utf-8", errors="replace").strip()
    if text == "release" or (len(raw) <= 64 and re.fullmatch(r"[0-9]+", text) and int(text) > 0):
        return
    shown = text[:32] + ("..." if len(text) > 32 else "")
    raise InputError(f"--resume: {latest}: holds {shown!r}, not an iteration number", hint="SAT writes the number "
                     "of the checkpoint's step there: rewrite it, or start the run again without --resume")


def check_memory(args, config, lengths) -> None:
    """Refuse (exit 2) a --batch-size whose least memory is more than the workers have free. The estimate is a
    lower bound: the weights, their gradients and AdamW's two moments where every weight trains, and per
    sample the language model's activations kept for backward (input, attention output and MLP hidden of each
    layer); SAT and DeepSpeed need more. Skipped where the free memory is not known (NPU, a dry run without
    the device)."""
    from porter.errors import EXIT_USAGE, PorterError
    from porter.launch import free_memory_per_worker

    device = getattr(args, "launch_device", None)
    if not device:  # a dry run without the device
        return
    free = free_memory_per_worker(device, args.npus)
    if free is None:
        return
    available, where = free
    fixed, per_sample = memory_lower_bound(args, config, lengths, device)
    need = fixed + args.batch_size * per_sample
    if need <= available:
        return
    fits = (available - fixed) // per_sample if available > fixed else 0
    hint = (f"use --batch-size {fits} or less (--grad-accum keeps the samples per step)" if fits >= 1 else
            "fewer --npus per node, --finetune lora, or a machine with more memory")
    raise PorterError(f"--batch-size {args.batch_size}: training needs at least {_gib(need)} per worker "
                      f"({_gib(fixed)} for the model, {_gib(per_sample)} per sample), and {where}", hint=hint,
                      exit_code=EXIT_USAGE)


def memory_lower_bound(args, config, lengths, device: str) -> tuple[int, int]:
    """(bytes for the model, bytes per sample) that one worker needs at the least; see :func:`check_memory`."""
    lm, vit, qf = config.lm, config.vision, config.qformer
    width = 4 if device == "cpu" or not (args.fp16 or args.bf16) else 2  # the CPU trains in fp32
    linears = lm.layers * (4 * lm.hidden ** 2 + 2 * lm.hidden * lm.inner)  # what --quant quantizes
    params = {"lm": lm.vocab * lm.hidden + linears,
              "vit": vit.layers * (4 * vit.hidden ** 2 + 2 * vit.hidden * vit.mlp),
              "qformer": qf.layers * 4 * qf.hidden ** 2}
    fixed = sum(params.values()) * width
    quant = getattr(args, "quant", None)
    if quant:  # the language model's linears held in `quant` bits, frozen
        fixed -= linears * width - linears * quant // 8
    finetune = args.finetune if args.finetune != "auto" else ("lora" if args.from_pretrained else "full")
    if finetune == "full":  # adapters are a few million weights at most: left out
        trained = params["lm"] + (params["vit"] if args.vision_lr_scale else 0) + (
            params["qformer"] if args.qformer_lr_scale else 0)
        world = args.npus * (getattr(args, "launch_nodes", None) or 1)
        states = 8 + (4 if width == 2 else 0)  # AdamW's two fp32 moments, an fp32 master copy in mixed precision
        fixed += trained * width + trained * states // (world if zero_stage(args, world) else 1)
    tokens = lengths.max_source + lengths.max_target if lengths.pad_to == "max" else config.image_length + 3
    per_sample = tokens * lm.layers * (2 * lm.hidden + lm.inner) * width
    return fixed, per_sample


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def lr_scales(args) -> list[tuple[str, str, float]]:
    """(image-encoder part, its flag, the scale asked for), for each part a flag scales."""
    return [("vit", "--vision-lr-scale", args.vision_lr_scale), ("qformer", "--qformer-lr-scale", args.qformer_lr_scale)]


def check_lr_scale_support(flag: str) -> None:
    """A learning-rate scale other than 0 or 1 rides on SAT's per-parameter ``lr_scale``, which SAT reads from
    0.4.6 on; older releases would train the part at the full rate without a word."""
    from importlib import metadata

    from porter.errors import EXIT_USAGE, InputError
    from porter.target import version_in

    version = metadata.version("SwissArmyTransformer")
    if not version_in(version, ">=0.4.6"):
        raise InputError(f"{flag}: SwissArmyTransformer {version} ignores per-parameter learning rates "
                         f"(SAT reads them from 0.4.6 on)", hint=f"upgrade SAT, or set {flag} to 0 or 1",
                         exit_code=EXIT_USAGE)


def sat_argv(args, config, run_dir: Path, ds_config: Path, tokenizer_type: str, resume_from: Path | None,
             device_name: str) -> list[str]:
    sat = config.sat_args()
    # Random-init runs and resumed runs are SAT's "pretrain" mode; fine-tuning loaded weights is "finetune",
    # where SAT holds the learning rate at 5% for the first 100 steps.
    pretrain = resume_from is not None or not args.from_pretrained
    argv = ["--mode", "pretrain" if pretrain else "finetune",
            "--train-iters", str(args.iters), "--train-data", "porter", "--split", "1", "--num-workers", "0",
            "--save", str(run_dir / "checkpoints"), "--experiment-name", "visualglm",
            "--save-interval", str(args.save_interval or args.iters), "--log-interval", str(args.log_interval),
            "--eval-interval", str(10 ** 9), "--summary-dir", str(run_dir), "--lr", str(args.lr),
            "--lr-decay-style", "cosine", "--warmup", str(args.warmup), "--deepspeed_config", str(ds_config),
            "--zero-stage", str(args.zero_stage), "--seed", str(args.seed),
            "--make-vocab-size-divisible-by", "1", "--tokenizer-type", tokenizer_type,
            "--num-layers", str(sat["num_layers"]), "--hidden-size", str(sat["hidden_size"]),
            "--num-attention-heads", str(sat["num_attention_heads"]), "--vocab-size", str(sat["vocab_size"]),
            "--inner-hidden-size", str(sat["inner_hidden_size"]), "--layernorm-order", "post",
            "--max-sequence-length", str(sat["max_sequence_length"]), "--image_length", str(sat["image_length"]),
            "--eva_args", json.dumps(sat["eva_args"]), "--qformer_args", json.dumps(sat["qformer_args"]),
            "--bos-token-id", str(sat["bos_token_id"]), "--mask-token-id", str(sat["mask_token_id"]),
            "--gmask-token-id", str(sat["gmask_token_id"]), "--pad-token-id", str(sat["pad_token_id"]),
            "--lora_rank", str(args.lora_rank), "--pre_seq_len", str(args.pre_seq_len)]
    if args.finetune == "lora":
        argv.append("--use_lora")
        if args.lora_layers:
            argv += ["--layer_range", *map(str, args.lora_layers)]
    elif args.finetune == "ptuning":
        argv.append("--use_ptuning")
    if args.fp16:
        argv.append("--fp16")
    if args.bf16:
        argv.append("--bf16")
    base = quant_base(args)
    if base is not None:  # adapters on a frozen quantized base: model_config.json names the base (see build)
        argv += ["--quant_bits", str(args.quant), "--quant_base", str(base)]
    if resume_from:
        argv += ["--load", str(resume_from), "--no-load-rng"]  # SAT 0.4.12 saves no RNG tracker state to load
        if base is not None:  # the checkpoint holds the adapters alone; the base is loaded already
            argv.append("--force-train")
    return argv


def quant_base(args) -> Path | None:
    """The quantized base a run's adapters train on: --from_pretrained, or on --resume the base the run's newest
    checkpoint names (its --quant taken from there too; a different one is an error)."""
    from porter.errors import EXIT_USAGE, PorterError

    if not args.resume:
        return args.from_pretrained.resolve() if getattr(args, "quant", None) and args.from_pretrained else None
    latest = latest_checkpoint(args.save.resolve())
    if latest is None:
        return None
    from .checkpoint import check_quant_fields, inspect_checkpoint

    recorded = inspect_checkpoint(latest)
    if recorded.quant_base is None:
        if getattr(args, "quant", None):
            raise PorterError(f"--resume with --quant {args.quant}: the run in {args.save} did not train on a "
                              f"quantized base", hint="drop --quant", exit_code=EXIT_USAGE)
        return None
    bits = check_quant_fields(recorded)
    if getattr(args, "quant", None) not in (None, bits):
        raise PorterError(f"--resume: the run trained on a base quantized to {bits} bits, not --quant {args.quant}",
                          hint=f"drop --quant or pass --quant {bits}", exit_code=EXIT_USAGE)
    args.quant = bits
    # the run goes on training the adapters it saved, shaped as they were
    args.finetune = recorded.finetune
    args.lora_rank = recorded.sat_args.get("lora_rank", args.lora_rank)
    args.lora_layers = recorded.sat_args.get("layer_range", args.lora_layers)
    args.pre_seq_len = recorded.sat_args.get("pre_seq_len", args.pre_seq_len)
    return Path(recorded.quant_base)


def run(args) -> int:
    """One training worker (``porter run`` starts one per device): build, load the data, hand both to SAT."""
    if args.finetune == "auto":
        args.finetune = "lora" if args.from_pretrained else "full"
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    os.environ.setdefault("SAT_LOGLEVEL", "WARNING")  # SAT's per-step log lines would drown the progress bar
    from porter.recipes import single_process_defaults

    single_process_defaults()

    def say(msg):
        if rank == 0:
            print(msg, file=sys.stderr, flush=True)

    from porter.metrics import RunLog

    device_name = _training_device(args, say)
    if args.mode == "performance":
        args.iters = min(args.iters, 20)
    run_dir = args.save.resolve()
    resume_from = latest_checkpoint(run_dir) if args.resume else None
    if args.resume and resume_from is None:
        raise UsageError(f"--resume: no checkpoint under {run_dir / 'checkpoints'}")
    # resolved once, here: SAT's arguments and the DeepSpeed config below both read it
    args.zero_stage = zero_stage(args, world, run_dir if resume_from else None)

    import_sat()
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from sat.training.deepspeed_training import training_main

    from .data import collate

    model, tokenizer, config, tokenizer_type = build(args, say)
    dataset, lengths, data_format = _dataset(args, tokenizer, config, say)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"data: {len(dataset)} samples ({data_format}); finetune: {args.finetune}, {trainable:,} trainable "
        f"parameters; {world} worker(s) on {device_name}")

    sat_args = _sat_args(args, config, run_dir, rank, tokenizer_type, resume_from, device_name)
    steps = StepMeter(RunLog(run_dir, args.iters, rank, args.log_interval), args.grad_accum, world, args.lr)
    batch_of = functools.partial(collate, label_pad=-100 if lengths.ignore_pad_token_for_loss else tok.PAD)
    forward_step, init_function = _step_functions(args, dataset, batch_of, steps, run_dir, rank, world)
    training_main(sat_args, model_cls=model, forward_step_function=forward_step,
                  create_dataset_function=lambda path, a: dataset, init_function=init_function,
                  collate_fn=batch_of)
    steps.finish(model)
    checkpoint = sat_args.save if args.mode == "full" and sat_args.save else None
    summary = steps.log.close(checkpoint)
    if rank == 0:
        print_summary(summary, args)
    return 0


def _training_device(args, say) -> str:
    """The device this worker trains on; the CPU trains in fp32 whatever --fp16/--bf16 asked."""
    from porter.runtime import device

    device_name = device.current().name
    if device_name == "cpu" and (args.fp16 or args.bf16):
        say("note: training on the CPU in fp32 (--fp16/--bf16 are for accelerators)")
        args.fp16 = args.bf16 = False
    return device_name


def _dataset(args, tokenizer, config, say):
    """(dataset, sample lengths, the format the data was read as); bad records skipped with a word, or none left
    refused."""
    from .data import VisualGLMDataset, load_records

    loaded = load_records(args.data or default_data(), args.data_format, prompt=args.prompt, skip_bad=args.skip_bad)
    lengths = sample_lengths(args, config)  # what preflight checked, the default cut to the model the same way
    dataset = VisualGLMDataset(loaded.records, tokenizer, config.vision.image_size, config.image_length,
                               skip_bad=args.skip_bad, flip=args.augment, lengths=lengths)
    skipped = loaded.skipped + dataset.skipped
    if skipped:
        say(f"skipped {len(skipped)} bad record(s) (--skip-bad), first: {skipped[0]}")
    if not len(dataset):
        raise PorterError(f"{args.data or default_data()}: no usable records")
    return dataset, lengths, loaded.format


def _sat_args(args, config, run_dir: Path, rank: int, tokenizer_type: str, resume_from: Path | None,
              device_name: str) -> argparse.Namespace:
    """SAT's arguments for this run, parsed by SAT itself, with the DeepSpeed config file they name written."""
    from sat import get_args

    from .model import classes

    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = run_dir / f"deepspeed_config.rank{rank}.json"
    # replaced, not rewritten in place: other ranks of a resumed run read rank 0's for its ZeRO stage (zero_stage)
    from porter.diskio import atomic_write

    atomic_write(ds_path, json.dumps(deepspeed_config(args, device_name), indent=2).encode())
    parser = argparse.ArgumentParser()
    classes()["VisualGLMModel"].add_model_specific_args(parser)
    with contextlib.redirect_stdout(sys.stderr):
        sat_args = get_args(sat_argv(args, config, run_dir, ds_path, tokenizer_type, resume_from, device_name), parser)
    if args.mode == "performance":
        sat_args.save = None
    return sat_args


def _step_functions(args, dataset, batch_of, steps: StepMeter, run_dir: Path, rank: int, world: int):
    """(forward_step, init_function) for SAT's training_main: porter's batches, answer-only loss, step metrics."""
    from .model import answer_loss
    from .sampling import EpochBatches, resume_position

    epochs = EpochBatches(dataset, args.batch_size, batch_of, rank=rank, world=world,
                          seed=args.seed) if args.sampling == "epochs" else None

    def forward_step(data_iterator, model, sat_args, timers):
        steps.begin_micro_batch(model)
        timers("batch generator").start()
        # SAT's iterator stays unread with --sampling epochs: it draws with replacement (see sampling.py)
        batch = next(epochs if epochs is not None else data_iterator)
        timers("batch generator").stop()
        param = next(model.parameters())
        ids = batch["input_ids"].to(param.device)
        loss = answer_loss(model, {**batch, "input_ids": ids, "labels": batch["labels"].to(param.device),
                                   "image": batch["image"].to(param.device, dtype=param.dtype)})
        steps.add(loss, ids.shape[0], int((ids != tok.PAD).sum()))
        return loss, {}

    def init_function(sat_args_, model_):
        steps.step = getattr(sat_args_, "iteration", 0)  # after --resume, counting continues from there
        if epochs is not None:  # read on where the run stopped, whatever its batch size and workers were
            epochs.position = resume_position(run_dir, steps.step, args.batch_size * world * args.grad_accum,
                                              seed=args.seed, samples=len(dataset), write=rank == 0)

    return forward_step, init_function
class StepMeter:
    """What one optimizer step did: the mean loss of its micro-batches (averaged over the workers), its samples
    and tokens, its learning rate and time; logged once the step's last micro-batch is done."""

    def __init__(self, log, grad_accum: int, world: int, lr: float):
        self.log, self.grad_accum, self.world, self.default_lr = log, grad_accum, world, lr
        self.micro, self.step = 0, 0
        self.losses: list = []
        self.samples = self.tokens = 0
        self.started = time.monotonic()
        self.lr = lr

    def begin_micro_batch(self, model) -> None:
        if self.micro % self.grad_accum == 0:  # a new optimizer step: log the one before
            self.finish(model)
            self.started = time.monotonic()
            self.lr = model.get_lr()[0] if hasattr(model, "get_lr") else self.default_lr

    def add(self, loss, samples: int, tokens: int) -> None:
        self.micro += 1
        self.losses.append(loss.detach().float())
        self.samples += samples
        self.tokens += tokens

    def finish(self, model) -> None:
        import torch

        if not self.losses:
            return
        totals = torch.stack([torch.stack(self.losses).mean(), torch.tensor(float(self.samples)),
                              torch.tensor(float(self.tokens))])
        if torch.distributed.is_initialized() and self.world > 1:
            totals = totals.to(next(model.parameters()).device)
            torch.distributed.all_reduce(totals)
            totals[0] /= self.world
        self.step += 1
        self.log.step(self.step, float(totals[0]), float(self.lr), int(totals[1]), int(totals[2]),
                      time.monotonic() - self.started)
        self.losses, self.samples, self.tokens = [], 0, 0


def print_summary(summary: dict, args) -> None:
    lines = [f"steps: {summary['steps']}", f"final loss: {summary['final_loss']:.4f}",
             f"mean loss: {summary['mean_loss']:.4f}",
             f"throughput: {summary['samples_per_s']:.2f} samples/s, {summary['tokens_per_s']:.0f} tokens/s"]
    if summary.get("checkpoint"):
        lines.append(f"checkpoint: {summary['checkpoint']}")
    lines += [f"loss curve: {summary['loss_curve']}", f"metrics: {summary['metrics']}"]
    print("\n".join(lines), flush=True)
