"""Census: `porter run visualglm train|infer|eval` refuses every input it cannot use in the parent, before DeepSpeed
starts, a weight is read or a file is written: one error line, the documented exit code (2 usage, 7 an unusable
input file, 8 a path it cannot write), no traceback.

Every case runs the CLI in this interpreter (``census.cli``). Train cases run with ``--dry-run`` wherever that
changes nothing, because a dry run runs every check too: a dry run that passes is a run that starts. A few run
without it, to show the real path refuses at the same place. For every case, ``porter.launch.launch`` and
infer's model loading (which eval uses too) are tripwires, and the --save / --out folder the case names must not
exist afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from census import Case, assert_refused, cli, ids

from porter.outputs import MARKER

ENV = {"PORTER_DEVICE": "cpu"}
TRAIN = ("run", "visualglm", "train", "--device", "cpu", "--save", "{save}")
DRY = TRAIN + ("--dry-run",)
INFER = ("run", "visualglm", "infer")
EVAL = ("run", "visualglm", "eval", "--from_pretrained", "{root}/tiny-ckpt", "--out", "{out}")
SHAPES = Path(__file__).resolve().parents[2] / "models" / "visualglm" / "data" / "shapes"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A decompression bomb as they come: a few bytes whose header claims 900 million pixels. Its pixel data is
    a stub, so a checker that decoded it would report a truncated image, not its size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    import torch
    from PIL import Image
    from porter_visualglm.release import make_release_folder, tiny_release_config

    root = tmp_path_factory.mktemp("census-run")
    (root / "a-file").write_text("not a folder")
    (root / "not.json").write_text("{ not json")
    (root / "empty-run").mkdir()
    (root / "no-json-here").mkdir()
    make_release_folder(root / "corrupt")
    (root / "corrupt" / "1" / "mp_rank_00_model_states.pt").write_bytes(b"\x00garbage" * 100)
    make_release_folder(root / "release")
    # a tiny checkpoint with porter's stand-in tokenizer, so eval gets past the tokenizer to the images
    make_release_folder(root / "tiny-ckpt", {**tiny_release_config(), "tokenizer_type": "porter-standin"})
    torch.save({"mixins.eva.model.vit.transformer.word_embeddings.weight": torch.zeros(3, 3)}, root / "wrong-encoder.pt")

    # images: two good ones, and every kind of bad one
    good = sorted((SHAPES / "coco" / "val2017").glob("*.png"))[:2]
    shutil.copy(good[0], root / "a.png")
    shutil.copy(good[1], root / "b.png")
    whole = (root / "a.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "text.png").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(bomb_png())
    Image.new("RGB", (60, 60), (200, 10, 10)).save(root / "3600-pixels.png")
    (root / "image-folder.png").mkdir()
    os.mkfifo(root / "fifo.png")  # Pillow would block reading it forever
    os.mkfifo(root / "fifo.json")

    def fewshot(name, records):
        (root / f"{name}.json").write_text(json.dumps(records))

    def one(img="a.png", prompt="What's in the image?", label="a red circle"):
        return {"img": img, "prompt": prompt, "label": label}

    fewshot("good", [one(), one("b.png")])
    fewshot("prompt-number", [{"img": "a.png", "prompt": 5, "label": None}])
    fewshot("img-list", [one(img=["a.png"])])
    fewshot("label-object", [one(label={"text": "a red circle"})])
    fewshot("one-good-one-typed-wrong", [one(), one(prompt=7)])
    fewshot("record-number", [5])
    fewshot("missing-label", [{"img": "a.png", "prompt": "q"}])
    fewshot("empty-label", [one(label="   ")])
    fewshot("image-missing", [one(img="nowhere.png")])
    for bad in ("truncated", "text", "bomb", "image-folder", "fifo"):
        fewshot(f"image-{bad}", [one(), one(img=f"{bad}.png")])
    fewshot("image-3600-pixels", [one(img="3600-pixels.png")])  # alone: under a 2,000-pixel limit a.png fails too
    (root / "object.json").write_text(json.dumps({"img": "a.png"}))
    (root / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "latin1.json").write_bytes('[{"img": "a.png", "prompt": "caf\xe9", "label": "x"}]'.encode("latin-1"))
    coco = root / "coco-null-caption"
    (coco / "annotations").mkdir(parents=True)
    (coco / "train2017").mkdir()
    shutil.copy(good[0], coco / "train2017" / "000000000001.png")
    (coco / "annotations" / "captions_train2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "000000000001.png"}],
         "annotations": [{"id": 10, "image_id": 1, "caption": None}]}))

    # hostfiles
    (root / "hosts-bad-line").write_text("# two nodes\nnode1 slots=2\nnode2 2\n")
    (root / "hosts-twice").write_text("node1 slots=2\nnode1 slots=4\n")
    (root / "hosts-comments").write_text("# nothing but comments\n\n   # and blanks\n")
    (root / "hosts-zero").write_text("node1 slots=0\n")
    (root / "hosts-binary").write_bytes(b"\xff\xfe\x00node1 slots=2\n")
    (root / "hosts-one-slot").write_text("localhost slots=1\n")
    (root / "hosts-folder").mkdir()

    # run folders to --resume, each with a `latest` SAT cannot use
    for name, latest in (("garbage", "garbage\0\n"), ("zero", "0\n"), ("empty", ""), ("negative", "-5"),
                         ("long", "1" * 200)):
        folder = root / f"run-{name}" / "checkpoints" / "visualglm-01-01-00-00"
        folder.mkdir(parents=True)
        (folder / "latest").write_text(latest)
    (root / "run-folder" / "checkpoints" / "visualglm-01-01-00-00" / "latest").mkdir(parents=True)
    for run in root.glob("run-*"):  # folders of earlier porter runs, as porter.outputs marks them
        (run / MARKER).write_text("{}\n")
    return root


def _free_memory(mib: int):
    def setup(monkeypatch):
        import types

        import psutil

        monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=mib * 2 ** 20))
    return setup


def _pixel_limit(pixels: int):
    def setup(monkeypatch):
        from PIL import Image

        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    return setup


def C(id, proves, argv, code, *needles, setup=None):  # noqa: N802 - a table row
    return Case(id=id, kind=id.split("/")[0], proves=proves), argv, code, needles, setup


CASES = [
    # ---- numbers: nan, inf, negative, zero, too big, for every numeric option ----
    C("numeric/train-lr-inf", "--lr inf is refused: an infinite learning rate is not more than 0 in any sense",
      DRY + ("--lr", "inf"), 2, "argument --lr: must be a finite number, not inf"),
    C("numeric/train-lr-nan", "--lr nan is refused as not finite (nan compares false with every bound)",
      DRY + ("--lr", "nan"), 2, "argument --lr: must be a finite number, not nan"),
    C("numeric/train-lr-negative", "--lr -1 is refused", DRY + ("--lr", "-1"), 2,
      "argument --lr: must be more than 0, not -1"),
    C("numeric/train-lr-zero", "--lr 0 is refused", DRY + ("--lr", "0"), 2, "argument --lr: must be more than 0, not 0"),
    C("numeric/train-warmup-one", "--warmup 1 (all warm-up, no schedule) is refused", DRY + ("--warmup", "1"), 2,
      "argument --warmup: must be in [0, 1), not 1"),
    C("numeric/train-warmup-nan", "--warmup nan is refused", DRY + ("--warmup", "nan"), 2,
      "argument --warmup: must be a finite number, not nan"),
    C("numeric/train-vision-lr-scale-inf", "--vision-lr-scale inf is refused", DRY + ("--vision-lr-scale", "inf"), 2,
      "argument --vision-lr-scale: must be a finite number, not inf"),
    C("numeric/train-vision-lr-scale-negative", "--vision-lr-scale -1 is refused",
      DRY + ("--vision-lr-scale", "-1"), 2, "argument --vision-lr-scale: must be 0 or more, not -1"),
    C("numeric/train-qformer-lr-scale-negative", "--qformer-lr-scale -0.5 is refused",
      DRY + ("--qformer-lr-scale", "-0.5"), 2, "argument --qformer-lr-scale: must be 0 or more, not -0.5"),
    C("numeric/train-qformer-lr-scale-overflow", "--qformer-lr-scale 1e999 (float() reads it as inf) is refused",
      DRY + ("--qformer-lr-scale", "1e999"), 2, "argument --qformer-lr-scale: must be a finite number, not 1e999"),
    C("numeric/train-iters-negative", "--iters -1 is refused", DRY + ("--iters", "-1"), 2,
      "argument --iters: must be at least 1, not -1"),
    C("numeric/train-iters-not-an-integer", "--iters 1e3 is refused, not truncated",
      DRY + ("--iters", "1e3"), 2, "argument --iters: expected an integer, not '1e3'"),
    C("numeric/train-batch-size-zero", "--batch-size 0 is refused", DRY + ("--batch-size", "0"), 2,
      "argument --batch-size: must be at least 1, not 0"),
    C("numeric/train-batch-size-beyond-samples", "--batch-size 1000000000, which launched and hung, is refused "
      "against the data's sample count", DRY + ("--batch-size", "1000000000"), 2,
      "--batch-size 1000000000: more than the 432 usable sample(s)", "use --batch-size 432 or less"),
    C("numeric/train-batch-size-beyond-memory", "a --batch-size whose least memory is beyond what is free is "
      "refused with the batch size that fits", TRAIN + ("--batch-size", "400"), 2,
      "--batch-size 400: training needs at least", "this machine has 150.0 MiB free", "use --batch-size 40 or less",
      setup=_free_memory(150)),
    C("numeric/train-model-beyond-memory", "a model that does not fit the free memory at any batch size is "
      "refused", DRY + ("--batch-size", "1"), 2, "for the model", "fewer --npus per node",
      setup=_free_memory(50)),
    C("numeric/train-grad-accum-zero", "--grad-accum 0 is refused", DRY + ("--grad-accum", "0"), 2,
      "argument --grad-accum: must be at least 1, not 0"),
    C("numeric/train-seed-zero", "--seed 0 is refused (SAT seeds nothing for 0)", DRY + ("--seed", "0"), 2,
      "argument --seed: must be 1 to 4294967295, not 0"),
    C("numeric/train-seed-too-big", "--seed 2**32 is refused (numpy's seed range, which SAT seeds)",
      DRY + ("--seed", "4294967296"), 2, "argument --seed: must be 1 to 4294967295, not 4294967296"),
    C("numeric/train-lora-rank-zero", "--lora_rank 0 is refused", DRY + ("--lora_rank", "0"), 2,
      "argument --lora_rank/--lora-rank: must be at least 1, not 0"),
    C("numeric/train-lora-rank-beyond-hidden", "--lora_rank above the model's hidden size is refused",
      DRY + ("--lora_rank", "1000"), 2, "--lora_rank 1000: more than the model's hidden size 64 (the tiny preset)"),
    C("numeric/train-pre-seq-len-too-big", "--pre_seq_len beyond the model's max_sequence_length is refused",
      DRY + ("--pre_seq_len", "100000"), 2, "--pre_seq_len 100000: more than the model's max_sequence_length 256"),
    C("numeric/train-max-source-length-huge", "--max_source_length 100000000, which launched and hung, is refused "
      "against the model's max_sequence_length", DRY + ("--max_source_length", "100000000"), 2,
      "--max_source_length 100000000 leaves 0 of the model's max_sequence_length 256 (the tiny preset)"),
    C("numeric/train-lengths-beyond-model", "a source and target length whose sum is beyond the model's "
      "max_sequence_length are refused", DRY + ("--max_source_length", "64", "--max_target_length", "100000000"), 2,
      "--max_source_length 64 + --max_target_length 100000000 = 100000064 ids a sample, beyond the model's "
      "max_sequence_length 256 (the tiny preset)"),
    C("numeric/train-max-target-length-two", "--max_target_length 2 (room for <sop> and <eop> only) is refused",
      DRY + ("--max_target_length", "2"), 2, "--max_target_length 2 leaves no room for the answer"),
    C("numeric/train-max-source-length-no-room", "a --max_source_length the image alone fills is refused",
      DRY + ("--max_source_length", "8"), 7, "--max-source-length 8 leaves no room for the question"),
    C("numeric/train-layer-range-beyond-layers", "--layer_range 99 on a 2-layer model is refused before SAT's LoRA "
      "mixin sees it", DRY + ("--layer_range", "99"), 2, "--layer_range 99: the model has 2 layers, 0 to 1"),
    C("numeric/train-layer-range-negative", "--layer_range -1 is refused", DRY + ("--layer_range", "-1"), 2,
      "must be 0 or more, not -1"),
    C("numeric/train-save-interval-zero", "--save-interval 0 is refused", DRY + ("--save-interval", "0"), 2,
      "argument --save-interval: must be at least 1, not 0"),
    C("numeric/train-log-interval-zero", "--log-interval 0 is refused", DRY + ("--log-interval", "0"), 2,
      "argument --log-interval: must be at least 1, not 0"),
    C("numeric/launch-npus-zero", "--npus 0 is refused", DRY + ("--npus", "0"), 2,
      "argument --npus: must be at least 1, not 0"),
    C("numeric/launch-npus-negative", "--npus -3 is refused", DRY + ("--npus", "-3"), 2,
      "argument --npus: must be at least 1, not -3"),
    C("numeric/launch-npus-beyond-cores", "--npus beyond this machine's cores is refused", DRY + ("--npus", "999"),
      2, "--npus 999, but this machine has"),
    C("numeric/launch-master-port-too-big", "--master_port 70000 is refused, not handed to torch.distributed",
      DRY + ("--master_port", "70000"), 2, "argument --master_port/--master-port: must be a TCP port, 1 to 65535"),
    C("numeric/launch-master-port-zero", "--master_port 0 is refused", DRY + ("--master_port", "0"), 2,
      "must be a TCP port, 1 to 65535, not 0"),
    C("numeric/launch-master-port-words", "--master_port http is refused", DRY + ("--master_port", "http"), 2,
      "argument --master_port/--master-port: expected an integer, not 'http'"),
    C("numeric/launch-num-nodes-zero", "--num_nodes 0 is refused", DRY + ("--num_nodes", "0"), 2,
      "argument --num_nodes/--num-nodes: must be at least 1, not 0"),
    C("numeric/infer-max-length-zero", "infer --max_length 0 is refused", INFER + ("--max_length", "0"), 2,
      "argument --max_length/--max-length: must be at least 1, not 0"),
    C("numeric/infer-temperature-negative", "infer --temperature -1 is refused", INFER + ("--temperature", "-1"), 2,
      "argument --temperature: must be more than 0, not -1"),
    C("numeric/infer-temperature-inf", "infer --temperature inf is refused", INFER + ("--temperature", "inf"), 2,
      "argument --temperature: must be a finite number, not inf"),
    C("numeric/infer-top-p-above-one", "infer --top_p 2 is refused", INFER + ("--top_p", "2"), 2,
      "argument --top_p/--top-p: must be in (0, 1], not 2"),
    C("numeric/infer-top-p-nan", "infer --top_p nan is refused", INFER + ("--top_p", "nan"), 2,
      "argument --top_p/--top-p: must be a finite number, not nan"),
    C("numeric/infer-repetition-penalty-overflow", "infer --repetition_penalty 1e999 is refused",
      INFER + ("--repetition_penalty", "1e999"), 2, "must be a finite number, not 1e999"),
    C("numeric/infer-top-k-negative", "infer --top_k -1 is refused", INFER + ("--top_k", "-1"), 2,
      "argument --top_k/--top-k: must be 0 or more, not -1"),
    C("numeric/infer-seed-too-big", "infer --seed 2**32 is refused", INFER + ("--seed", "4294967296"), 2,
      "argument --seed: must be 0 to 4294967295"),
    C("numeric/infer-prompt-beyond-model", "a prompt longer than the model takes is refused before the model loads, "
      "and the hint does not suggest a --max_length the model caps", INFER + ("--prompt", "long " * 300,
                                                                              "--max_length", "5000"), 2,
      "tokens and --max_length is 256 (the model's maximum): no room for an answer",
      "shorten the question: the model takes at most 256 tokens"),
    C("numeric/infer-prompt-beyond-max-length", "a prompt longer than --max_length is refused before the model "
      "loads, with a --max_length within the model's maximum", INFER + ("--prompt", "long " * 100,
                                                                         "--max_length", "30"), 2,
      "tokens and --max_length is 30: no room for an answer", "(the model takes at most 256)"),
    C("numeric/eval-batch-size-zero", "eval --batch-size 0 is refused", EVAL + ("--batch-size", "0"), 2,
      "argument --batch-size: must be at least 1, not 0"),
    C("numeric/eval-max-new-tokens-negative", "eval --max-new-tokens -1 is refused", EVAL + ("--max-new-tokens", "-1"),
      2, "argument --max-new-tokens: must be at least 1, not -1"),
    C("numeric/eval-limit-zero", "eval --limit 0 is refused", EVAL + ("--limit", "0"), 2,
      "argument --limit: must be at least 1, not 0"),

    # ---- launch options, run folders, checkpoints to resume ----
    C("cli/train-hostfile-missing", "a --hostfile that does not exist is refused (DeepSpeed would warn and train "
      "on one node)", DRY + ("--hostfile", "{root}/no-such-hosts"), 7, "--hostfile {root}/no-such-hosts: no such file"),
    C("cli/train-hostfile-folder", "a --hostfile that is a folder is refused", DRY + ("--hostfile", "{root}/hosts-folder"),
      7, "--hostfile {root}/hosts-folder: a folder, not a hostfile"),
    C("cli/train-hostfile-bad-line", "a hostfile line DeepSpeed's runner cannot parse is refused by its number",
      DRY + ("--hostfile", "{root}/hosts-bad-line"), 7, "--hostfile {root}/hosts-bad-line: line 3: 'node2 2': "
      "expected 'HOSTNAME slots=N'"),
    C("cli/train-hostfile-host-twice", "a host listed twice is refused (DeepSpeed raises on it)",
      DRY + ("--hostfile", "{root}/hosts-twice"), 7, "line 2: host 'node1' is listed twice"),
    C("cli/train-hostfile-no-hosts", "a hostfile of comments only is refused", DRY + ("--hostfile", "{root}/hosts-comments"),
      7, "--hostfile {root}/hosts-comments: no hosts in it"),
    C("cli/train-hostfile-zero-slots", "a host with slots=0 is refused", DRY + ("--hostfile", "{root}/hosts-zero"), 7,
      "line 1: node1 has slots=0"),
    C("cli/train-hostfile-binary", "a hostfile that is not text is refused", DRY + ("--hostfile", "{root}/hosts-binary"),
      7, "--hostfile {root}/hosts-binary: not a text file"),
    C("cli/train-hostfile-fewer-slots", "--npus beyond a host's slots is refused (DeepSpeed would start --npus "
      "workers there anyway)", DRY + ("--npus", "2", "--hostfile", "{root}/hosts-one-slot"), 2,
      "--npus 2, but --hostfile {root}/hosts-one-slot gives localhost slots=1"),
    C("cli/train-num-nodes-beyond-hostfile", "--num_nodes beyond the hostfile's hosts is refused",
      DRY + ("--num_nodes", "3", "--hostfile", "{root}/hosts-one-slot"), 2,
      "--num_nodes 3, but --hostfile {root}/hosts-one-slot lists 1 host(s)"),
    C("cli/train-num-nodes-without-hostfile", "--num_nodes 2 without a hostfile is refused",
      DRY + ("--num_nodes", "2"), 2, "--num_nodes 2 without --hostfile"),
    C("cli/train-preset-unknown", "an unknown --preset is refused", DRY + ("--preset", "huge"), 2,
      "argument --preset: invalid choice: 'huge'"),
    C("cli/train-sampling-unknown", "an unknown --sampling is refused", DRY + ("--sampling", "random"), 2,
      "argument --sampling: invalid choice"),
    # --save naming a file, or under one, with --dry-run: test_census_paths.py's paths/train-save-* rows
    C("cli/train-save-under-a-file-live", "--save under a file is refused before the launch (exit 8), not by each "
      "worker's mkdir, and without --dry-run nothing is launched", TRAIN + ("--save", "{root}/a-file/run"), 8,
      "--save {root}/a-file/run: cannot be written ({root}/a-file is not a folder)"),
    C("cli/train-image-encoder-with-pretrained", "--image-encoder with --from_pretrained is refused",
      DRY + ("--image-encoder", "{root}/not.json", "--from_pretrained", "{root}/release"), 2,
      "--image-encoder with --from_pretrained: the checkpoint already holds an image encoder"),
    C("cli/train-resume-without-checkpoint", "--resume of a run folder without a checkpoint is refused",
      DRY + ("--resume", "--save", "{root}/empty-run"), 2, "--resume: no checkpoint under {root}/empty-run/checkpoints"),
    C("cli/train-resume-garbage-latest", "--resume from a checkpoint whose latest holds garbage is refused (SAT "
      "prints a line and exits 0 before the first step)", DRY + ("--resume", "--save", "{root}/run-garbage"), 7,
      "--resume: {root}/run-garbage/checkpoints/visualglm-01-01-00-00/latest: holds 'garbage", "not an iteration"),
    C("cli/train-resume-garbage-latest-live", "the same without --dry-run: nothing is launched",
      TRAIN + ("--resume", "--save", "{root}/run-garbage"), 7, "latest: holds 'garbage"),
    C("cli/train-resume-latest-zero", "a latest of 0 is refused (SAT asserts above 0)",
      DRY + ("--resume", "--save", "{root}/run-zero"), 7, "latest: holds '0', not an iteration number"),
    C("cli/train-resume-latest-empty", "an empty latest is refused", DRY + ("--resume", "--save", "{root}/run-empty"),
      7, "latest: holds '', not an iteration number"),
    C("cli/train-resume-latest-negative", "a latest of -5 is refused",
      DRY + ("--resume", "--save", "{root}/run-negative"), 7, "latest: holds '-5'"),
    C("cli/train-resume-latest-long", "a latest of 200 digits is refused, shown cut short",
      DRY + ("--resume", "--save", "{root}/run-long"), 7, "latest: holds '11111111111111111111111111111111...'"),
    C("cli/train-resume-latest-folder", "a latest that is a folder is refused",
      DRY + ("--resume", "--save", "{root}/run-folder"), 7, "latest: not a regular file"),
    C("cli/infer-preset-unknown", "infer --preset huge is refused", INFER + ("--preset", "huge"), 2,
      "argument --preset: invalid choice: 'huge'"),
    C("cli/infer-preset-without-weights", "infer --preset visualglm-6b with random weights is refused before "
      "anything is built", INFER + ("--preset", "visualglm-6b"), 2, "--preset visualglm-6b with random weights"),
    C("cli/eval-compare-missing", "eval --compare of a missing folder is refused before the first model loads",
      EVAL + ("--compare", "{root}/nothing"), 2, "{root}/nothing: no such checkpoint folder"),
    C("cli/eval-out-under-a-file", "eval --out under a file is refused before any model loads (exit 8)",
      EVAL[:-1] + ("{root}/a-file/out",), 8, "--out {root}/a-file/out: cannot be written ({root}/a-file is not a folder)"),
    C("cli/eval-out-is-a-file", "eval --out naming a file is refused (8)", EVAL[:-1] + ("{root}/a-file",), 8,
      "--out {root}/a-file: a file, not a folder"),

    # ---- data, images and other input files: exit 7, the file (and record) named ----
    C("data/train-data-missing", "a --data that does not exist is refused", DRY + ("--data", "{root}/nothing-here"), 7,
      "{root}/nothing-here: no such file or folder"),
    C("data/train-data-not-json", "a --data that is not JSON is refused", DRY + ("--data", "{root}/not.json"), 7,
      "{root}/not.json: not valid JSON"),
    C("data/train-data-not-json-live", "the same without --dry-run: nothing launched, --save not made",
      TRAIN + ("--data", "{root}/not.json"), 7, "{root}/not.json: not valid JSON"),
    C("data/train-data-not-utf8", "a --data file in Latin-1 is refused", DRY + ("--data", "{root}/latin1.json"), 7,
      "{root}/latin1.json: not valid JSON"),
    C("data/train-data-nested-too-deep", "JSON nested 100,000 deep is refused, not a RecursionError",
      DRY + ("--data", "{root}/nested.json"), 7, "{root}/nested.json: not valid JSON (nested too deeply)"),
    C("data/train-data-not-a-list", "a JSON object instead of a list is refused", DRY + ("--data", "{root}/object.json"),
      7, "{root}/object.json: expected a JSON list"),
    C("data/train-data-folder-without-json", "a folder with no JSON and no COCO layout is refused",
      DRY + ("--data", "{root}/no-json-here"), 7, "{root}/no-json-here: cannot tell the data format"),
    C("data/train-data-fifo", "a FIFO as --data is refused, not read forever",
      DRY + ("--data", "{root}/fifo.json", "--data-format", "fewshot"), 7,
      "{root}/fifo.json: not a regular file"),
    C("data/train-record-prompt-number-label-null", "a record {prompt: 5, label: null} is refused by file and index, "
      "not trained on as '5' and 'None'", DRY + ("--data", "{root}/prompt-number.json"), 7,
      "{root}/prompt-number.json: record 0 (counting from 0): prompt is a number (5), label is null, not a string"),
    C("data/train-record-img-list", "a record whose img is a list is refused", DRY + ("--data", "{root}/img-list.json"),
      7, "record 0 (counting from 0): img is a list ([\"a.png\"]), not a string"),
    C("data/train-record-label-object", "a record whose label is an object is refused",
      DRY + ("--data", "{root}/label-object.json"), 7, "record 0 (counting from 0): label is an object"),
    C("data/train-record-wrong-type-skipped", "with --skip-bad a record of wrong types is skipped and counted: one "
      "usable sample is left, so --batch-size 2 is refused",
      DRY + ("--data", "{root}/one-good-one-typed-wrong.json", "--skip-bad", "--batch-size", "2"), 2,
      "--batch-size 2: more than the 1 usable sample(s)"),
    C("data/train-record-not-an-object", "a record that is a number is refused",
      DRY + ("--data", "{root}/record-number.json"), 7, "record 0 (counting from 0): expected an object, got int"),
    C("data/train-record-missing-label", "a record without a label is refused",
      DRY + ("--data", "{root}/missing-label.json"), 7, "missing field(s) label"),
    C("data/train-record-empty-label", "a record whose label is blank is refused",
      DRY + ("--data", "{root}/empty-label.json"), 7, "record 0 (counting from 0): empty label"),
    C("data/train-image-missing", "a record whose image is nowhere is refused",
      DRY + ("--data", "{root}/image-missing.json"), 7, "image nowhere.png not found (looked beside image-missing.json"),
    C("data/train-image-truncated", "a truncated image is found by the parent before the launch, not by rank 0",
      DRY + ("--data", "{root}/image-truncated.json"), 7,
      "{root}/image-truncated.json: record 1 (counting from 0): {root}/truncated.png: unreadable image"),
    C("data/train-image-truncated-live", "the same without --dry-run: nothing launched",
      TRAIN + ("--data", "{root}/image-truncated.json"), 7, "{root}/truncated.png: unreadable image"),
    C("data/train-image-not-an-image", "a text file named .png is refused",
      DRY + ("--data", "{root}/image-text.json"), 7, "{root}/text.png: unreadable image (not a format Pillow knows"),
    C("data/train-image-bomb", "a decompression bomb (900 million pixels in a few bytes) is refused from its header: "
      "the message is its size, not the truncation a decode would meet", DRY + ("--data", "{root}/image-bomb.json"),
      7, "{root}/bomb.png: image too large (900,000,000 pixels); porter reads images up to"),
    C("data/train-image-over-pixel-limit", "an image over MAX_IMAGE_PIXELS but under twice it (Pillow only warns "
      "there) is refused too", DRY + ("--data", "{root}/image-3600-pixels.json"), 7,
      "{root}/3600-pixels.png: image too large (3,600 pixels); porter reads images up to 2,000 pixels",
      setup=_pixel_limit(2000)),
    C("data/train-image-folder", "a record whose image is a folder is refused",
      DRY + ("--data", "{root}/image-image-folder.json"), 7, "{root}/image-folder.png: a folder, not an image"),
    C("data/train-image-fifo", "a record whose image is a FIFO is refused, not read forever",
      DRY + ("--data", "{root}/image-fifo.json"), 7, "{root}/fifo.png: not a regular file"),
    C("data/train-coco-caption-null", "a COCO caption of null is refused by annotation id",
      DRY + ("--data", "{root}/coco-null-caption"), 7, "annotation id 10: caption is null, not a string"),
    C("data/train-image-encoder-missing", "a missing --image-encoder is refused",
      DRY + ("--image-encoder", "{root}/nothing.pt"), 7, "--image-encoder {root}/nothing.pt: no such file"),
    C("data/train-image-encoder-not-torch", "an --image-encoder that is not a torch file is refused",
      DRY + ("--image-encoder", "{root}/not.json"), 7, "checkpoint file corrupt: {root}/not.json"),
    C("data/train-image-encoder-wrong", "an --image-encoder of another model is refused",
      DRY + ("--image-encoder", "{root}/wrong-encoder.pt"), 7,
      "--image-encoder {root}/wrong-encoder.pt: not an image encoder for this model ("),
    C("data/train-from-pretrained-corrupt", "a corrupt checkpoint is refused before the launch",
      DRY + ("--from_pretrained", "{root}/corrupt"), 7,
      "checkpoint file corrupt: {root}/corrupt/1/mp_rank_00_model_states.pt"),
    C("data/train-from-pretrained-needs-tokenizer", "the released layout without --chatglm_path is refused",
      DRY + ("--from_pretrained", "{root}/release"), 7, "this checkpoint uses ChatGLM-6B's tokenizer: pass --chatglm_path"),
    C("data/infer-image-missing", "infer --image of a missing file is refused before the model loads",
      INFER + ("--image", "{root}/nowhere.png"), 7, "{root}/nowhere.png: image not found"),
    C("data/infer-image-folder", "infer --image of a folder is refused", INFER + ("--image", "{root}"), 7,
      "{root}: a folder, not an image"),
    C("data/infer-image-truncated", "infer --image of a truncated file is refused before the model loads",
      INFER + ("--image", "{root}/truncated.png"), 7, "{root}/truncated.png: unreadable image"),
    C("data/infer-image-bomb", "infer --image of a bomb is refused from its header",
      INFER + ("--image", "{root}/bomb.png"), 7, "{root}/bomb.png: image too large (900,000,000 pixels)"),
    C("data/infer-image-fifo", "infer --image of a FIFO is refused, not read forever",
      INFER + ("--image", "{root}/fifo.png"), 7, "{root}/fifo.png: not a regular file"),
    C("data/infer-interactive-image-bomb", "infer --interactive checks its first --image before the model loads",
      INFER + ("--interactive", "--image", "{root}/bomb.png"), 7, "{root}/bomb.png: image too large"),
    C("data/infer-from-pretrained-corrupt", "infer of a corrupt checkpoint is refused",
      INFER + ("--from_pretrained", "{root}/corrupt"), 7, "checkpoint file corrupt: {root}/corrupt"),
    C("data/infer-from-pretrained-a-file", "infer --from_pretrained of a file is refused",
      INFER + ("--from_pretrained", "{root}/a-file"), 7, "{root}/a-file: no such checkpoint folder"),
    C("data/infer-chatglm-path-without-model", "infer --chatglm_path of a folder without ice_text.model is refused",
      INFER + ("--chatglm_path", "{root}"), 7, "{root}/ice_text.model: no ice_text.model here"),
    C("data/eval-image-truncated", "eval on a data set with a truncated image is one line, exit 7, before any model "
      "loads", EVAL + ("--data", "{root}/image-truncated.json"), 7, "{root}/truncated.png: unreadable image"),
    C("data/eval-image-bomb", "eval on a data set with a bomb is refused from its header",
      EVAL + ("--data", "{root}/image-bomb.json"), 7, "{root}/bomb.png: image too large"),
    C("data/eval-record-prompt-number", "eval on records of wrong types is refused by file and index",
      EVAL + ("--data", "{root}/prompt-number.json"), 7, "record 0 (counting from 0): prompt is a number (5)"),
]


@pytest.fixture
def no_launch(monkeypatch):
    """Tripwires: nothing in these cases may start the launcher, or load a model (infer's and eval's load)."""
    import porter_visualglm.infer

    import porter.launch

    def launched(plan):
        raise AssertionError(f"launched: {plan.render()}")

    def loaded(args, *rest, **kw):
        raise AssertionError(f"loaded a model: {args.from_pretrained or args.preset}")
    monkeypatch.setattr(porter.launch, "launch", launched)
    monkeypatch.setattr(porter_visualglm.infer, "load", loaded)


@pytest.mark.parametrize("case,argv,code,needles,setup", CASES, ids=ids(CASES))
def test_refused_before_anything_starts(root, no_launch, monkeypatch, tmp_path, case, argv, code, needles, setup):
    if setup:
        setup(monkeypatch)
    save, out = tmp_path / "run", tmp_path / "out"
    fill = {"root": root, "save": save, "out": out}
    result = cli(*[a.format(**fill) for a in argv], env=ENV)
    assert_refused(result, code, *[n.format(**fill) for n in needles])
    assert "launching:" not in result.stderr
    assert not save.exists() and not out.exists()  # the run folder and eval's output: not made


def test_the_census_is_big_and_distinct():
    assert len(CASES) >= 45
    assert len({c[0].id for c in CASES}) == len(CASES)
    assert len({tuple(c[1]) for c in CASES}) == len(CASES)  # no two rows run the same command line


def test_a_dry_run_that_passes_every_check_prints_the_launch(root, no_launch, tmp_path):
    """The other side of the dry-run cases: where every check passes, a dry run says so and prints the command."""
    save = tmp_path / "run"
    result = cli(*[a.format(root=root, save=save) for a in DRY + ("--data", "{root}/good.json", "--batch-size", "2",
                                                                  "--hostfile", "{root}/hosts-one-slot")], env=ENV)
    assert result.returncode == 0, result.stderr
    assert "deepspeed.launcher.runner" in result.stdout and f"--hostfile {root}/hosts-one-slot" in result.stdout
    assert not save.exists()
