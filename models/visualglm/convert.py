"""`porter run visualglm convert SRC DST`: checkpoints between the layouts VisualGLM-6B (and ChatGLM-6B) come in.

The command line only; :mod:`.conversion` does the work (imported when the command runs, so `porter --help` and
the other everyday commands never import torch).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from porter.errors import UsageError
from porter.recipes import positive_int

EPILOG = """\
the two layouts:
  SAT           latest, model_config.json, <iteration>/mp_rank_00_model_states.pt ({"module": weights});
                what SAT fine-tunes and porter loads. A model-parallel run has mp_rank_00, mp_rank_01, ...
  Hugging Face  config.json (auto_map names THUDM's remote code), weights in model-0000K-of-0000N.safetensors
                or pytorch_model-0000K-of-0000N.bin with their *.index.json
  The language model's query_key_value rows differ: HF keeps each head's q, k, v together, SAT (since 0.4.1)
  all q, then all k, then all v. SAT files from 0.4.0 and before have HF's order: name it with --qkv-order.

examples:
  porter run visualglm convert hf/visualglm-6b glm/visualglm
      the Hugging Face repository's files -> a SAT checkpoint porter and SAT load (direction from SRC)
  porter run visualglm convert runs/lora/checkpoints/visualglm-MM-DD-HH-MM merged --merge-lora
      a LoRA fine-tune -> a plain checkpoint that loads without LoRA
  porter run visualglm convert mp2-checkpoint one --mp 1
      a model-parallel checkpoint's ranks merged into one file
  porter run visualglm convert glm/visualglm hf-out --to hf
      -> Hugging Face safetensors shards; add THUDM's code files to load it (listed when done)

exit codes: 0 written; 2 options that do not fit; 7 SRC cannot be converted (it names the file and the key);
8 DST exists or cannot be written (nothing is left behind)
"""


SHARD_DEFAULT = 5 * 10 ** 9  # bytes per HF output shard, transformers' default
QKV_ORDERS = ("grouped", "per-head")  # layouts.GROUPED, layouts.PER_HEAD


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, metavar="SRC", help="a checkpoint folder in SAT's or Hugging Face's layout")
    p.add_argument("dst", type=Path, metavar="DST", help="the folder to write (must not exist)")
    p.add_argument("--to", choices=("sat", "hf"), help="the layout to write (default: the other one; SAT when "
                                                       "--merge-lora or --mp is given for a SAT source)")
    p.add_argument("--merge-lora", action="store_true", help="fold LoRA into the weights (SAT's scaling, 1/rank; "
                                                             "the checkpoint's layer range); P-tuning is kept")
    p.add_argument("--mp", type=positive_int, metavar="N", help="model-parallel ranks to write (SAT): 1 merges a "
                                                                "model-parallel checkpoint, N splits one")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="store floating-point weights in this dtype (default: "
                                                          "as stored)")
    p.add_argument("--qkv-order", choices=QKV_ORDERS, help="the query_key_value row order of a SAT "
                   "source whose model_config.json cannot tell: grouped (SAT 0.4.1 and later), per-head (0.4.0 and "
                   "before; written as grouped)")
    p.add_argument("--format", choices=("safetensors", "bin"),
                   help="HF weight files (default safetensors; bin: torch's pytorch_model-*.bin)")
    p.add_argument("--shard-size", type=_size, metavar="SIZE",
                   help="largest HF weight file, e.g. 2GB, 500MB (default 5GB)")


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 2GB or 500MB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}[unit]
    value = int(float(m.group(1)) * scale)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1 byte")
    return value



def run(args) -> int:
    from . import conversion as K

    src, dst = Path(args.src), Path(args.dst)
    layout = K.detect(src)
    to = args.to or ("sat" if layout == "hf" or args.mp or args.merge_lora else "hf")
    if to == "hf" and args.mp not in (None, 1):
        raise UsageError(f"--mp {args.mp} with --to hf: Hugging Face checkpoints have no model-parallel files")
    if layout == "hf" and args.qkv_order:
        raise UsageError("--qkv-order names a SAT source's row order; an HF source is always per head")
    if layout == "hf" and args.merge_lora:
        raise UsageError("--merge-lora: a Hugging Face checkpoint has no SAT LoRA to merge")
    if to == "sat" and (args.format or args.shard_size):
        raise UsageError("--format and --shard-size shape Hugging Face output; SAT writes one file per rank")
    K.check_destination(dst)
    K.convert(src, dst, layout=layout, to=to, merge_lora=args.merge_lora, ranks=args.mp or 1, dtype=args.dtype,
              qkv_order=args.qkv_order, fmt=args.format or "safetensors",
              shard_size=args.shard_size or SHARD_DEFAULT)
    print(dst)
    return 0
