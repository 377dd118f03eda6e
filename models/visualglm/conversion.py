"""Converting checkpoints between the layouts VisualGLM-6B (and ChatGLM-6B) come in (`porter run visualglm convert`).

- SAT (``latest``, ``model_config.json``, ``<iter>/mp_rank_XX_model_states.pt``) <-> Hugging Face (``config.json``,
  weight shards and their index), names and ``query_key_value`` rows by the tables of :mod:`.layouts`;
- ``--merge-lora``: LoRA folded into the weights as SAT's merge does it (P-tuning prefixes are kept);
- ``--mp N``: a model-parallel checkpoint merged into one file, or one split into N, by SAT's partition arithmetic.

The source is read through memory maps, one tensor at a time, and the output written one tensor at a time
(:mod:`.tensorio`): memory holds about one tensor beside the file's mapped pages. Everything is checked (layout,
keys, shapes, adapters, sizes, free disk) before a byte is written, and the output appears only when complete: it
is written in a hidden folder beside DST and renamed to DST at the end.
"""
from __future__ import annotations

import functools
import glob
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from porter.errors import OutputError, UsageError

from . import layouts as L
from .checkpoint import DTYPES, Checkpoint, CheckpointError, check_adapter_fields, meta_model, read_json_object
from .tensorio import ReadError, SafetensorsFile, Spec, TorchFile, give_back_freed_memory, write_file

INDEX_LIMIT = 64 << 20  # bytes: a shard index is a name per tensor
RANK_FILE = re.compile(r"^mp_rank_(\d{2,})_model_states\.(pt|safetensors)$")


# -- the source, seen in SAT's names --------------------------------------------------------------------------------
@dataclass
class Source:
    """A checkpoint seen in SAT's current layout whatever it is stored in: ``specs`` by SAT name (grouped
    query_key_value, model-parallel ranks merged), ``get`` reads one tensor."""
    layout: str  # "sat" or "hf"
    folder: Path
    visual: bool
    sat_args: dict
    specs: dict[str, Spec]
    get: Callable[[str], torch.Tensor]
    iteration: str = "1"
    ranks: int = 1
    notes: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # tensors every rank holds that differed between ranks


def detect(folder: Path) -> str:
    """"sat" or "hf", or one error saying what each layout needs."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    if (folder / "latest").exists() and (folder / "model_config.json").exists():
        return "sat"
    if L.is_hf_folder(folder):
        return "hf"
    raise CheckpointError(f"{folder}: neither a SAT checkpoint (latest + model_config.json) nor a Hugging Face one "
                       f"(config.json + model*.safetensors or pytorch_model*.bin, with their index)")


def _json_file(path: Path, limit: int, what: str) -> dict:
    return read_json_object(path, limit, what, f"a JSON object ({what})")


def _plain_name(folder: Path, name, what: str) -> Path:
    """A file named by an index: a plain file name inside ``folder``, never a path out of it."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise CheckpointError(f"{folder / what}: names {name!r}, which is not a file name in {folder}")
    return folder / name


def _open_file(path: Path):
    from porter.runtime import checkpoints as safe_load

    from .checkpoint import read_states

    try:
        safe_load.check_regular_file(path)
        if path.suffix == ".safetensors":
            return SafetensorsFile(path)
        return TorchFile(path, read_states)
    except safe_load.RefusedCheckpoint as exc:
        raise CheckpointError(str(exc)) from None
    except ReadError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _hf_shards(folder: Path) -> dict[str, list[str] | None]:
    """Each weight file and the tensors the index puts in it (None: the one file of an unsharded folder, all of
    it); the index's file names are plain names in ``folder`` and every one exists."""
    index_name = next((i for i, _ in L.HF_INDEXES if (folder / i).exists()), None)
    if index_name is None:
        return {next(n for _, n in L.HF_INDEXES if (folder / n).exists()): None}
    index = _json_file(folder / index_name, INDEX_LIMIT, "a weight_map of tensor names to shard files")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{folder / index_name}: no 'weight_map' of tensor names to files")
    files: dict[str, list[str] | None] = {}
    for name, file in weight_map.items():
        _plain_name(folder, file, index_name)
        files.setdefault(file, []).append(name)  # type: ignore[union-attr]
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise CheckpointError(f"{folder / index_name}: names {len(missing)} shard(s) not in the folder: "
                           + ", ".join(repr(m) for m in sorted(missing)[:5]) + (" ..." if len(missing) > 5 else ""))
    return files


def open_hf(folder: Path) -> Source:
    config = _json_file(folder / "config.json", 1 << 20, "Hugging Face's config.json")
    for key in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{folder / 'config.json'}: '{key}' is {value!r}: expected a whole number above 0",
                               hint="expected ChatGLM-6B's or VisualGLM-6B's config.json")
    files = _hf_shards(folder)
    opened, specs, where = {}, {}, {}
    notes = []
    for file in files:
        handle = opened[file] = _open_file(folder / file)
        listed = files[file]
        names = listed if listed is not None else list(handle.specs)
        absent = [n for n in names if n not in handle.specs]
        if absent:
            raise CheckpointError(f"{folder / file}: lacks {len(absent)} tensor(s) the index puts there: "
                               + ", ".join(absent[:5]))
        for name in names:
            where[name] = handle
            specs[name] = handle.specs[name]
    visual = any(n.startswith("image_encoder.") for n in specs) or "eva_config" in config
    for part in ("eva_config", "qformer_config"):
        if visual and not isinstance(config.get(part), dict):
            raise CheckpointError(f"{folder / 'config.json'}: '{part}' is {config.get(part)!r}: VisualGLM's config.json "
                               f"describes its image encoder there (SAT's argument names)")
    try:
        sat_args = L.config_to_sat(config, visual=visual)
    except ValueError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None
    heads = config["num_attention_heads"]
    out, sources = {}, {}
    dropped = [n for n in specs if L.HF_INV_FREQ.match(n)]
    for name, spec in specs.items():
        if L.HF_INV_FREQ.match(name):
            continue
        sat = L.to_sat_name(name)
        if sat is None:
            raise CheckpointError(f"{folder}: tensor {name!r} is not part of ChatGLM-6B's or VisualGLM-6B's HF model",
                               hint="porter converts the released models' tensors (HF P-tuning prefixes and "
                                    "quantized files are not)")
        out[sat], sources[sat] = Spec(sat, spec.dtype, spec.shape), name
    if dropped:
        notes.append(f"dropped {len(dropped)} rotary inv_freq buffer(s): SAT computes them")

    def get(sat_name: str) -> torch.Tensor:
        name = sources[sat_name]
        t = where[name].get(name)
        return L.reorder_qkv(t, heads, L.GROUPED) if L.LM_QKV.match(sat_name) else t

    return Source("hf", folder, visual, sat_args, out, get, notes=notes)


def _rank_files(folder: Path, sat_args: dict) -> tuple[str, list[Path]]:
    """The iteration ``latest`` names and its rank files, 0..N-1 with none missing or doubled, N as the config says."""
    from .checkpoint import read_latest

    iteration = read_latest(folder)
    where = folder / iteration
    if not where.is_dir():
        raise CheckpointError(f"{where}: iteration folder missing (`latest` says {iteration!r})")
    found: dict[int, Path] = {}
    for p in where.iterdir():
        m = RANK_FILE.match(p.name)
        if m and m.group(1) != f"{int(m.group(1)):02d}":  # SAT names rank r '{:02d}'; mp_rank_001 is not rank 1's
            raise CheckpointError(f"{p}: not a name SAT gives a rank's file (mp_rank_{int(m.group(1)):02d}_...)")
        if m:
            if int(m.group(1)) in found:
                raise CheckpointError(f"{where}: two files for rank {int(m.group(1))}: {found[int(m.group(1))].name} "
                                   f"and {p.name}", hint="remove one of them")
            found[int(m.group(1))] = p
    if not found:
        raise CheckpointError(f"{where / 'mp_rank_00_model_states.pt'}: weights file missing")
    ranks = len(found)
    if sorted(found) != list(range(ranks)):
        raise CheckpointError(f"{where}: model-parallel ranks {sorted(found)}: expected 0..{ranks - 1} with none missing")
    declared = sat_args.get("model_parallel_size")
    if declared in (None, 0):  # SAT's default: one part
        declared = 1
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise CheckpointError(f"{folder / 'model_config.json'}: 'model_parallel_size' is {declared!r}: expected a whole "
                           f"number above 0")
    if declared != ranks:
        raise CheckpointError(f"{folder / 'model_config.json'}: model_parallel_size {declared!r}, but {where} holds "
                           f"{ranks} rank file(s)")
    return iteration, [found[r] for r in range(ranks)]


def _check_same_parts(files: list) -> None:
    """Every rank file holds the same tensors in the same dtypes and shapes as rank 0's: SAT cuts every split
    tensor in equal parts."""
    first = files[0]
    for f in files[1:]:
        if set(f.specs) != set(first.specs):
            odd = sorted(set(f.specs) ^ set(first.specs))
            raise CheckpointError(f"{f.path}: its tensors differ from {first.path.name}'s ({len(odd)}: "
                               + ", ".join(odd[:3]) + ")")
        for name, spec in f.specs.items():
            was = first.specs[name]
            if (spec.dtype, spec.shape) != (was.dtype, was.shape):
                raise CheckpointError(f"{f.path}: {name} is {spec.dtype} {list(spec.shape)}, {first.path.name} holds "
                                   f"{was.dtype} {list(was.shape)}; model-parallel parts are equal")


def open_sat(folder: Path, qkv_order: str | None) -> Source:
    sat_args = _json_file(folder / "model_config.json", 1 << 20, "SAT's model_config.json")
    iteration, paths = _rank_files(folder, sat_args)
    ranks = len(paths)
    files = [_open_file(p) for p in paths]
    _check_same_parts(files)
    visual = "eva_args" in sat_args or sat_args.get("model_class") == "VisualGLMModel"
    heads = sat_args.get("num_attention_heads")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise CheckpointError(f"{folder / 'model_config.json'}: 'num_attention_heads' is {heads!r}: expected a whole "
                           f"number above 0")
    if qkv_order is None and "pad_token_id" not in sat_args:
        raise CheckpointError(f"{folder / 'model_config.json'}: no pad_token_id, which SAT writes since 0.4.1: the file "
                           f"may be from SAT 0.4.0 or before, whose query_key_value rows are per head (HF's order)",
                           hint="name its order: --qkv-order per-head (SAT 0.4.0 and before) or --qkv-order grouped")
    order = qkv_order or L.GROUPED
    notes = []
    specs = {}
    for name, spec in files[0].specs.items():
        if name == L.SAT_STALE or L.DERIVED_SAT.search(name):
            continue
        if spec.dtype in (torch.int8, torch.uint8) or name.endswith(("weight_scale", "quant_state")):
            raise CheckpointError(f"{paths[0]}: {name} is stored quantized ({spec.dtype}); porter converts 16- and "
                               f"32-bit checkpoints", hint="convert the 16-bit checkpoint, then load it with --quant")
        split = L.mp_split_of(name)
        shape = list(spec.shape)
        if ranks > 1 and split.dim is not None:
            shape[split.dim] *= ranks
        specs[name] = Spec(name, spec.dtype, tuple(shape))
    if L.SAT_STALE in files[0].specs:
        notes.append(f"dropped {L.SAT_STALE}: a position table SAT 0.3's ChatGLM kept and never used")
    if any(L.DERIVED_SAT.search(n) for n in files[0].specs):
        notes.append("dropped the rotary inv_freq buffer: it is computed, never loaded")
    if order == L.PER_HEAD:
        notes.append("query_key_value rows reordered from per-head (SAT 0.4.0) to grouped (SAT 0.4.1 and later)")
    differs: list[str] = []

    def get(name: str) -> torch.Tensor:
        split = L.mp_split_of(name)
        parts = [f.get(name) for f in files]
        if split.dim is None and ranks > 1 and name not in differs and \
                any(not torch.equal(parts[0], p) for p in parts[1:]):
            differs.append(name)
        t = L.merge_ranks(parts, split) if ranks > 1 else parts[0]
        if order == L.PER_HEAD and L.LM_QKV.match(name):
            t = L.reorder_qkv(t, heads, L.GROUPED)
        return t

    return Source("sat", folder, visual, sat_args, specs, get, iteration=iteration, ranks=ranks, notes=notes,
                  differs=differs)


# -- what to write ----------------------------------------------------------------------------------------------------
def merged_lora(src: Source) -> int:
    """Replace ``src``'s LoRA tensors with merged weights (lazily); returns how many layers were merged."""
    groups: dict[str, dict[str, str]] = {}
    for name in src.specs:
        m = L.LORA_KEY.match(name)
        if m:
            groups.setdefault(m.group("layer"), {})[m.group("part")] = name
    if not groups:
        return 0
    rank = src.sat_args.get("lora_rank")
    allowed = src.sat_args.get("layer_range")
    config = src.folder / "model_config.json"
    scaling_alpha = src.sat_args.get("lora_alpha", 1)  # SAT's default; VisualGLM's fine-tuning never sets it
    if isinstance(scaling_alpha, bool) or not isinstance(scaling_alpha, (int, float)) or not scaling_alpha > 0:
        raise CheckpointError(f"{config}: 'lora_alpha' is {scaling_alpha!r}: expected a number above 0")
    lora: dict[str, tuple[dict[str, str], list[str], list[str], float, torch.dtype]] = {}
    for layer, parts in groups.items():
        a = sorted((k for k in parts if k.startswith("matrix_A.")), key=lambda k: int(k.split(".")[1]))
        b = sorted((k for k in parts if k.startswith("matrix_B.")), key=lambda k: int(k.split(".")[1]))
        if "original.weight" not in parts or not a or len(a) != len(b):
            raise CheckpointError(f"{src.folder}: {layer}: LoRA parts incomplete ({', '.join(sorted(parts))})")
        r = src.specs[parts[a[0]]].shape[0]
        if rank is not None and r != rank:
            raise CheckpointError(f"{config}: lora_rank {rank}, but {layer}.matrix_A.0 has rank {r}",
                               hint="the weights and model_config.json come from different fine-tunes")
        n = int(layer.split(".")[2])  # transformer.layers.<n>....
        if isinstance(allowed, list) and allowed and n not in allowed:
            raise CheckpointError(f"{config}: layer_range {allowed}, but layer {n} has LoRA weights")
        weight = src.specs[parts["original.weight"]]
        rows, cols = (weight.shape + (0, 0))[:2]
        for k in a + b:  # SAT's LoraLinear: A_i is (rank, in), B_i is (out / parts, rank)
            want = (r, cols) if k in a else (rows // len(b), r)
            if src.specs[parts[k]].shape != want or rows % len(b):
                raise CheckpointError(f"{src.folder}: {layer}.{k} is {list(src.specs[parts[k]].shape)}, not "
                                      f"{list(want)} for a {list(weight.shape)} weight of rank {r}")
        bias = src.specs.get(parts.get("original.bias", ""))
        out_dtype = bias.dtype if bias is not None else weight.dtype
        names = parts
        for p in names.values():
            del src.specs[p]
        src.specs[layer + ".weight"] = Spec(layer + ".weight", out_dtype, weight.shape)
        if bias is not None:
            src.specs[layer + ".bias"] = Spec(layer + ".bias", bias.dtype, bias.shape)
        lora[layer] = (names, [names[k] for k in a], [names[k] for k in b], scaling_alpha / r, out_dtype)
    inner = src.get

    def get(name: str) -> torch.Tensor:
        layer, _, last = name.rpartition(".")
        if layer in lora:
            names, a, b, scaling, dtype = lora[layer]
            if last == "bias":
                return inner(names["original.bias"])
            return L.merge_lora(inner(names["original.weight"]), [inner(k) for k in a], [inner(k) for k in b],
                                scaling, dtype)
        return inner(name)

    src.get = get
    src.sat_args = {**src.sat_args, "use_lora": False}
    return len(groups)


def expected_shapes(src: Source) -> dict[str, tuple]:
    """Every tensor the config describes and its shape, from SAT's own classes built on the meta device."""
    if not src.visual:
        return L.lm_shapes(src.sat_args)
    from . import import_sat
    from .config import VisualGLMConfig

    import_sat()
    check_adapter_fields(src.sat_args, src.folder)
    config = VisualGLMConfig.from_sat_args({**src.sat_args, "model_parallel_size": 1}, str(src.folder))
    model = meta_model(Checkpoint(src.folder, src.iteration, config, src.sat_args))
    return {n: tuple(t.shape) for n, t in model.state_dict().items() if not L.DERIVED_SAT.search(n)}


def check_shapes(src: Source) -> None:
    expected = expected_shapes(src)
    problems = [f"unexpected {n} {list(s.shape)}" for n, s in src.specs.items() if n not in expected]
    problems += [f"missing {n} {list(shape)}" for n, shape in expected.items() if n not in src.specs]
    problems += [f"shape of {n}: file {list(s.shape)}, config {list(expected[n])}" for n, s in src.specs.items()
                 if n in expected and tuple(s.shape) != expected[n]]
    if problems:
        config = "config.json" if src.layout == "hf" else "model_config.json"
        raise CheckpointError(f"{src.folder}: the weights do not match its {config} ({len(problems)} problem(s)): "
                           + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""),
                           hint="the weights and the config come from different models")


@dataclass
class OutFile:
    name: str  # relative to the output folder
    specs: list[Spec]
    make: Callable[[Spec], torch.Tensor]
    fmt: str  # "torch" or "safetensors"
    wrap: Callable[[dict], object] = lambda sd: sd

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() and t.dtype != dtype else t


def _spec_dtype(spec: Spec, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and spec.dtype.is_floating_point else spec.dtype


def plan_sat(src: Source, ranks: int, dtype: torch.dtype | None) -> tuple[list[OutFile], dict, dict[str, str]]:
    """The rank files, model_config.json, and ``latest`` (the iteration folder's name)."""
    iteration = src.iteration if src.layout == "sat" else "1"
    args = dict(src.sat_args)
    args.setdefault("pad_token_id", 3)  # marks the grouped query_key_value order (SAT >= 0.4.1)
    args["model_parallel_size"] = ranks
    for part in ("eva_args", "qformer_args"):
        if isinstance(args.get(part), dict):
            args[part] = {**args[part], "model_parallel_size": ranks}
    it = int(iteration) if iteration.isdigit() else iteration
    files = []
    for r in range(ranks):
        specs = [Spec(n, _spec_dtype(s, dtype), L.split_shape(s.shape, L.mp_split_of(n), ranks))
                 for n, s in src.specs.items()]

        def make(spec: Spec, r=r) -> torch.Tensor:
            return _cast(L.split_for_rank(src.get(spec.name), L.mp_split_of(spec.name), r, ranks), dtype)

        files.append(OutFile(f"{iteration}/mp_rank_{r:02d}_model_states.pt", specs, make, "torch",
                             functools.partial(_sat_states, iteration=it)))
    return files, args, {"latest": iteration}


def _sat_states(weights: dict, iteration) -> dict:
    return {"module": weights, "iteration": iteration}  # what SAT's save_checkpoint writes


def _made(makers: dict[str, Callable[[], torch.Tensor]], spec: Spec) -> torch.Tensor:
    return makers[spec.name]()


def plan_hf(src: Source, dtype: torch.dtype | None, fmt: str,
            shard_size: int) -> tuple[list[OutFile], dict, dict[str, str]]:
    """The weight shards (at most ``shard_size`` bytes each, a bigger tensor alone), config.json, and the index
    and README files."""
    heads, hidden = src.sat_args["num_attention_heads"], src.sat_args["hidden_size"]
    ordered: list[tuple[Spec, Callable[[], torch.Tensor]]] = []
    for name, spec in src.specs.items():
        hf = L.to_hf_name(name)
        if hf is None:
            raise CheckpointError(f"{src.folder}: {name} has no place in the HF model")
        m = L.LM_QKV.match(name)
        if m and m.group(2) == "weight":  # HF keeps a rotary table per layer (fp16, as its remote code makes it)
            freq = L.HF_INV_FREQ_NAME.format(layer=m.group(1))
            table = L.inv_freq(hidden, heads, torch.float16)
            ordered.append((Spec(freq, torch.float16, tuple(table.shape)), functools.partial(torch.clone, table)))

        def make(name=name) -> torch.Tensor:
            t = src.get(name)
            return _cast(L.reorder_qkv(t, heads, L.PER_HEAD) if L.LM_QKV.match(name) else t, dtype)

        ordered.append((Spec(hf, _spec_dtype(spec, dtype), spec.shape), make))
    shards: list[list[tuple[Spec, Callable]]] = [[]]
    size = 0
    for item in ordered:
        if shards[-1] and size + item[0].nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item[0].nbytes
    stem, suffix = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    files = []
    for k, shard in enumerate(shards):
        name = f"{stem}.{suffix}" if len(shards) == 1 else f"{stem}-{k + 1:05d}-of-{len(shards):05d}.{suffix}"
        makers = {s.name: f for s, f in shard}
        files.append(OutFile(name, [s for s, _ in shard], functools.partial(_made, makers),
                             "safetensors" if fmt == "safetensors" else "torch"))
    floats = [s.dtype for s, _ in ordered if s.dtype.is_floating_point and not s.name.endswith("inv_freq")]
    main = max(set(floats), key=floats.count) if floats else torch.float16
    try:
        config = L.config_to_hf(src.sat_args, visual=src.visual, dtype=main)
    except ValueError as exc:
        raise CheckpointError(f"{src.folder / 'model_config.json'}: {exc}") from None
    return files, config, _hf_extra(files, src.visual)


# -- the conversion -------------------------------------------------------------------------------------------------
def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def convert(src_folder: Path, dst: Path, *, layout: str, to: str, merge_lora: bool, ranks: int, dtype: str | None,
            qkv_order: str | None, fmt: str, shard_size: int, say: Callable[[str], None] = _say) -> None:
    """Read ``src_folder`` (``layout``), check everything, write ``dst`` in ``to``'s layout; raises before writing."""
    src = open_hf(src_folder) if layout == "hf" else open_sat(src_folder, qkv_order)
    finetune = "lora" if src.sat_args.get("use_lora") else "ptuning" if src.sat_args.get("use_ptuning") else None
    merged = merged_lora(src) if merge_lora else 0
    if merge_lora and finetune == "lora" and not merged:
        raise CheckpointError(f"{src.folder / 'model_config.json'}: use_lora is true but the weights hold no LoRA "
                           f"matrices")
    if merge_lora and not merged:
        say(f"note: --merge-lora: {src.folder} holds no LoRA; nothing merged")
    check_adapters(src, finetune if not merged else None, to, ranks)
    check_shapes(src)
    if to == "sat" and ranks > 1 and (problems := L.mp_problems(src.sat_args, ranks)):
        raise UsageError(f"--mp {ranks}: SAT cannot split this model so: " + "; ".join(problems))
    cast = DTYPES[dtype] if dtype else None
    if to == "sat":
        files, config, extra = plan_sat(src, ranks, cast)
    else:
        files, config, extra = plan_hf(src, cast, fmt, shard_size)
    config_name = "model_config.json" if to == "sat" else "config.json"
    total = sum(f.nbytes for f in files)
    check_space(dst, total)
    for stale in stale_temporaries(dst):
        say(f"note: {stale} is what an interrupted conversion to {dst} left (not a checkpoint); remove it")
    for note in src.notes:
        say(f"note: {note}")
    if merged:
        say(f"note: LoRA merged into {merged} layer(s) (scaling {src.sat_args.get('lora_alpha', 1)}/rank)")
    if finetune == "ptuning":
        say("note: P-tuning prefixes kept as they are (model_config.json still says use_ptuning)")
    say(f"{src.layout.upper()} {src.folder} -> {to.upper()} {dst}: {len(files)} file(s), {total / 2 ** 30:.2f} GiB")
    write_folder(dst, files, config_name, config, extra=extra, say=say)
    if src.differs:
        say(f"note: {len(src.differs)} tensor(s) every rank holds differed between ranks; rank 0's kept, as SAT's "
            f"merge does: " + ", ".join(src.differs[:3]))
    if to == "hf":
        repo, needed = L.HF_CODE[src.visual]
        say(f"to load it with transformers (trust_remote_code=True), add from {repo}: " + ", ".join(needed))


def check_adapters(src: Source, finetune: str | None, to: str, ranks: int) -> None:
    """Adapters that have no place in the output: SAT LoRA in HF or across ranks (merge it), P-tuning likewise."""
    if finetune == "lora" and (to == "hf" or ranks != 1 or src.ranks != 1):
        why = "HF's ChatGLM has no SAT LoRA" if to == "hf" else "LoRA matrices are not split across ranks here"
        raise UsageError(f"{src.folder}: a LoRA fine-tune: {why}", hint="add --merge-lora")
    if finetune == "ptuning" and to == "hf":
        raise UsageError(f"{src.folder}: a P-tuning fine-tune: SAT's prefixes have no place in HF's ChatGLM "
                         f"(its own P-tuning differs)", hint="convert to SAT, or fine-tune with LoRA or fully")
    if finetune == "ptuning" and (ranks != 1 or src.ranks != 1):
        raise UsageError(f"{src.folder}: P-tuning prefixes are not split across ranks here")


def _hf_extra(files: list[OutFile], visual: bool) -> dict[str, str]:
    extra = {}
    if len(files) > 1:
        index = "model.safetensors.index.json" if files[0].fmt == "safetensors" else "pytorch_model.bin.index.json"
        weight_map = {s.name: f.name for f in files for s in f.specs}
        extra[index] = json.dumps({"metadata": {"total_size": sum(f.nbytes for f in files)},
                                   "weight_map": weight_map}, indent=2) + "\n"
    repo, needed = L.HF_CODE[visual]
    extra["README.md"] = (f"# Converted by porter from SAT's layout\n\nThese are the weights and config.json in the "
                          f"layout of the Hugging Face repository {repo}. The model's code is not included: copy "
                          f"these files from {repo} into this folder, then load it with "
                          f"`AutoModel.from_pretrained(folder, trust_remote_code=True)`:\n\n"
                          + "".join(f"- `{n}`\n" for n in needed))
    return extra


def check_destination(dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        raise OutputError(f"{dst}: exists; convert writes a new folder and never replaces one",
                          hint="name a folder that does not exist, or remove this one")
    parent = dst.parent
    if not parent.exists():
        raise OutputError(f"{dst}: its parent folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{dst}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{dst}: cannot write in {parent} (permission denied)")


TEMP_MARK = ".porter-convert-"


def _temp_prefix(dst: Path) -> str:
    """The hidden folder's name before its process id: DST's name, cut so the whole name stays under 255 bytes."""
    return "." + os.fsencode(dst.name)[:150].decode(errors="ignore") + TEMP_MARK


def stale_temporaries(dst: Path) -> list[Path]:
    """Hidden folders an earlier conversion to ``dst`` left when it was killed (its process gone, or its id now
    this process's: a container's pids start again). Named, not removed: an id alone does not prove porter made
    them."""
    out = []
    for p in dst.parent.glob(glob.escape(_temp_prefix(dst)) + "*"):
        pid = p.name[len(_temp_prefix(dst)):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
            out.append(p)
    return sorted(out)


def check_space(dst: Path, total: int) -> None:
    free = shutil.disk_usage(dst.parent).free
    if total + (64 << 20) > free:
        raise OutputError(f"{dst}: needs {total / 2 ** 30:.2f} GiB, {dst.parent} has {free / 2 ** 30:.2f} GiB free")


class _Terminated(BaseException):
    """SIGTERM or SIGHUP while writing: raised to clean up, then the signal is delivered again."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Deferred:
    """SIGTERM and SIGHUP noted by the handler and acted on between tensors. Raised from the handler itself, the
    exception could land inside a native reader (safetensors' get_tensor turns it into a ValueError)."""

    def __init__(self) -> None:
        self.signums: list[int] = []

    def note(self, signum, frame) -> None:
        self.signums.append(signum)

    def check(self, *_) -> None:
        if self.signums:
            raise _Terminated(self.signums[0])


def write_folder(dst: Path, files: list[OutFile], config_name: str, config: dict, extra: dict[str, str],
                 say) -> None:
    """Everything into a hidden folder beside ``dst``, renamed to ``dst`` when complete; on any failure, Ctrl-C,
    SIGTERM or SIGHUP the hidden folder, which this call made, is removed and ``dst`` never appears."""
    give_back_freed_memory()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(dst)}{os.getpid()}-", dir=dst.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would become DST's
    except OSError as exc:
        raise OutputError(f"{dst}: cannot create a folder in {dst.parent} ({exc.strerror or exc})") from None
    handlers, deferred = {}, _Deferred()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, deferred.note)
    try:
        for f in files:
            path = tmp / f.name
            path.parent.mkdir(parents=True, exist_ok=True)
            say(f"writing {f.name}: {len(f.specs)} tensors, {f.nbytes / 2 ** 30:.2f} GiB")
            write_file(path, f.specs, f.make, fmt=f.fmt, wrap=f.wrap, progress=deferred.check)
        (tmp / config_name).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        for name, text in extra.items():  # SAT's `latest` last: its presence says the folder is complete
            (tmp / name).write_text(text)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        deferred.check()
        if dst.exists() or dst.is_symlink():
            raise OutputError(f"{dst}: appeared while converting; the conversion is discarded")
        os.rename(tmp, dst)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, _Terminated):  # cleaned up: now end as the signal would have ended us
            signal.signal(exc.signum, signal.SIG_DFL)
            os.kill(os.getpid(), exc.signum)
        if isinstance(exc, OSError):
            raise OutputError(f"{dst}: writing failed ({exc.strerror or exc}); nothing was left behind") from None
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
