"""VisualGLM checkpoints in SAT's layout: ``latest``, ``model_config.json``, ``<iter>/mp_rank_00_model_states.pt``.

The released VisualGLM-6B folder loads as it is, and so do the checkpoints SAT's training_main writes:

- the model is built on the meta device and the file's tensors are assigned to it in the requested dtype,
  read through a memory map: peak host memory is about one copy of the file (one more copy of the part that
  changes dtype), not a random-weight model plus the file;
- keys that a known SAT version left behind are dropped with one line saying why (:data:`STALE`); rotary
  ``inv_freq`` buffers may or may not be in a file, and are computed as SAT does either way (SAT's rotary
  module ignores them on load);
- any other unexpected or missing key, or a shape that does not match ``model_config.json``, is an error
  that lists all of them;
- nothing in a file runs: weights files are unpickled by :mod:`porter.runtime.checkpoints` (``weights_only``
  with SAT's own RNG state allowed, nothing else), and ``check`` and ``train --resume`` read a file's pickle
  globals as opcodes before anything unpickles it. ``latest`` and ``model_config.json`` are checked to be small
  regular files of UTF-8 text before they are read.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from porter.errors import InputError, UsageError
from porter.runtime import checkpoints as safe_load

from .config import ENCODER_PARTS, VisualGLMConfig

STATES = "mp_rank_00_model_states.pt"
STATES_SAFETENSORS = "mp_rank_00_model_states.safetensors"  # the same weights without a pickle, if converted
LATEST_LIMIT = 256  # bytes: `latest` holds one iteration name; a bigger file is not SAT's
CONFIG_LIMIT = 1 << 20  # bytes: SAT's model_config.json is about 2 KB
# key -> why it is in some files and may be dropped
STALE = {
    "transformer.position_embeddings.weight":
        "a learned position table SAT 0.3.6's ChatGLM kept but never used (ChatGLM uses rotary positions; SAT "
        "removed it in July 2023); the released VisualGLM-6B checkpoint was saved with it",
}
DERIVED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # recomputed by SAT's rotary module, never loaded
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class CheckpointError(InputError):
    pass


@dataclass
class Checkpoint:
    folder: Path
    iteration: str
    config: VisualGLMConfig
    sat_args: dict  # model_config.json as written
    states_name: str = STATES
    stored_bits: int | None = None  # the language model's bits where the file is quantized (check_checkpoint)

    @property
    def finetune(self) -> str | None:
        if self.sat_args.get("use_lora"):
            return "lora"
        if self.sat_args.get("use_ptuning"):
            return "ptuning"
        return None

    @property
    def quant_base(self) -> str | None:
        """The base checkpoint a run fine-tuned on a quantized base names (its own file holds adapters alone)."""
        return self.sat_args.get("quant_base")

    @property
    def states_file(self) -> Path:
        return self.folder / self.iteration / self.states_name


def _read_small_text(path: Path, limit: int, what: str) -> str:
    """A small UTF-8 file's text; one error naming it if it is missing, not a regular file (a FIFO or a device would
    never finish reading), too big for ``what`` or not UTF-8."""
    try:
        safe_load.check_regular_file(path)
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except safe_load.RefusedCheckpoint as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise CheckpointError(f"{path}: more than {limit:,} bytes; {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start}); {what}") from None


def read_latest(folder: Path) -> str:
    """The iteration ``folder/latest`` names: one folder name inside ``folder``, never a path out of it."""
    latest = folder / "latest"
    if not latest.exists() and not latest.is_symlink():
        raise CheckpointError(f"{latest}: missing; a SAT checkpoint folder names its iteration in `latest`",
                              hint="point --from_pretrained at the folder that holds `latest` and `model_config.json`")
    iteration = _read_small_text(latest, LATEST_LIMIT, "SAT writes the iteration's folder name there").strip()
    if not iteration:
        raise CheckpointError(f"{latest}: empty; SAT writes the iteration's folder name there")
    if iteration in (".", "..") or Path(iteration).name != iteration or "\\" in iteration or "\0" in iteration:
        raise CheckpointError(f"{latest}: says {iteration!r}, which is not a folder name in {folder}",
                              hint="SAT writes the iteration number, e.g. 1000")
    return iteration


def inspect_checkpoint(folder: str | Path) -> Checkpoint:
    """Read ``latest`` and ``model_config.json`` and check the weights file exists; loads no tensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    from .layouts import is_hf_folder

    if not (folder / "latest").exists() and is_hf_folder(folder):
        raise CheckpointError(f"{folder}: a Hugging Face checkpoint (config.json, no `latest`); porter loads SAT's "
                              f"layout", hint=f"convert it: {convert_command(folder, '-sat')}")
    iteration = read_latest(folder)
    if not (folder / iteration).is_dir():
        raise CheckpointError(f"{folder / iteration}: iteration folder missing (`latest` says {iteration!r})")
    ranks = sorted(p.name for p in (folder / iteration).glob("mp_rank_*_model_states.*")
                   if p.suffix in (".pt", ".safetensors"))
    if len({name.split("_model_states")[0] for name in ranks}) > 1:
        raise CheckpointError(
            f"{folder / iteration}: a model-parallel checkpoint in {len(ranks)} parts ({', '.join(ranks)}); porter "
            f"loads model_parallel_size 1", hint=f"merge the parts: {convert_command(folder, '-mp1', '--mp 1')}")
    names = [n for n in (STATES, STATES_SAFETENSORS) if (folder / iteration / n).exists()
             or (folder / iteration / n).is_symlink()]
    if not names:
        raise CheckpointError(f"{folder / iteration / STATES}: weights file missing")
    if len(names) > 1:
        raise CheckpointError(f"{folder / iteration}: both {STATES} and {STATES_SAFETENSORS}; porter will not guess "
                              f"which one holds the weights", hint="remove one of them")
    try:
        safe_load.check_regular_file(folder / iteration / names[0])
    except safe_load.RefusedCheckpoint as exc:
        raise CheckpointError(str(exc)) from None
    config_file = folder / "model_config.json"
    if not config_file.exists() and not config_file.is_symlink():
        raise CheckpointError(f"{config_file}: missing")
    sat_args = read_json_object(config_file, CONFIG_LIMIT, "expected SAT's model_config.json",
                                "a JSON object of SAT's arguments")
    mp = sat_args.get("model_parallel_size", 1)
    if mp not in (1, None, 0) or isinstance(mp, bool):  # 0 and null: SAT's default, one part
        raise CheckpointError(f"{config_file}: model_parallel_size {mp!r}; porter loads 1",
                              hint=f"merge the model-parallel parts: {convert_command(folder, '-mp1', '--mp 1')}")
    check_adapter_fields(sat_args, config_file)
    return Checkpoint(folder, iteration, VisualGLMConfig.from_sat_args(sat_args, str(config_file)), sat_args,
                      names[0])


def convert_command(folder: Path, suffix: str, *options: str) -> str:
    """The `convert` command that makes ``folder`` loadable, writing beside it."""
    import shlex

    dst = folder.parent / (folder.name + suffix)
    return " ".join(["porter run visualglm convert", shlex.quote(str(folder)), shlex.quote(str(dst)), *options])


def read_json_object(path: Path, limit: int, what: str, expected: str) -> dict:
    """A small JSON file that must hold an object; one error naming the file otherwise (nesting too deep for
    the parser included)."""
    text = _read_small_text(path, limit, what)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # deep nesting is a RecursionError
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected {expected}")
    return value


def check_adapter_fields(sat_args: dict, config_file: Path) -> None:
    """The fields meta_model passes to the adapters have the types SAT's mixins take."""
    for key, expected in ADAPTER_FIELDS.items():
        value = sat_args.get(key)
        if value is not None and not _is_a(value, expected):
            raise CheckpointError(f"{config_file}: '{key}' is {value!r}: expected {expected}")


ADAPTER_FIELDS = {"use_lora": "true or false", "use_ptuning": "true or false", "lora_rank": "a whole number",
                  "pre_seq_len": "a whole number", "layer_range": "a list"}


def _is_a(value, expected: str) -> bool:
    if expected == "true or false":
        return isinstance(value, bool)
    if expected == "a whole number":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, list)


def scan_states(path: Path) -> None:
    """Refuse a weights file whose pickle names any global beyond tensors and SAT's training state, reading its
    pickle as opcodes: nothing in it runs, and no tensor is read. A file this cannot scan (the legacy format,
    safetensors) is left to :func:`read_states`, which unpickles weights-only."""
    try:
        names = safe_load.unsafe_globals(path)
    except safe_load.RefusedCheckpoint as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a damaged zip raises RuntimeError, KeyError, ValueError...
        raise CheckpointError(f"checkpoint file corrupt: {path} ({_first_line(exc)})") from None
    bnb = [n for n in names or () if n.startswith("bitsandbytes.")]
    if bnb:
        raise _qlora(path, "its pickle names " + ", ".join(bnb))
    if names:
        raise CheckpointError(str(safe_load.refusal(path, names)), hint=UNSAFE_HINT)


def check_resume_states(folder: Path) -> Path:
    """Before ``train --resume`` launches: the weights file SAT's load_checkpoint will read from ``folder`` (``latest``
    -> ``<iteration>/mp_rank_00_model_states.pt``, as SAT names it) exists, is a regular file, and its pickle names
    nothing beyond tensors and SAT's training state. Read as opcodes in the parent, so a crafted file is refused
    before DeepSpeed starts a worker; the workers' patched SAT unpickles weights-only as well."""
    text = read_latest(folder)
    # SAT reads `latest` as an int (or "release") and names the folder '{:d}'.format(it): "007" is folder 7
    name = "release" if text == "release" else str(int(text)) if text.isdigit() and text.isascii() else None
    if name is None:
        raise CheckpointError(f"--resume: {folder / 'latest'}: holds {text[:32]!r}, not an iteration number")
    states = folder / name / STATES
    if not states.exists() and not states.is_symlink():
        raise CheckpointError(f"--resume: {states}: weights file missing (`latest` says {text!r})")
    try:
        scan_states(states)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {exc.message}", hint=exc.hint) from None
    return states


QLORA_HINT = ("merge the adapters into the base and save it in fp16 where bitsandbytes runs (upstream's tools, on "
              "CUDA), then fine-tune here with --quant 4 --finetune lora")


def _qlora(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: an upstream QLoRA checkpoint ({what}): its base is bitsandbytes' NF4, which "
                           f"porter does not read (it reads SAT's own int8/int4 layout)", hint=QLORA_HINT)


UNSAFE_HINT = ("porter reads only tensors and SAT's own training state; if you trust the file, load it in Python and "
               "save its state dict again with torch.save, or as .safetensors")


def read_states(path: Path) -> dict[str, torch.Tensor]:
    """The ``module`` state dict of a SAT weights file, memory-mapped: tensors are read when first touched.

    Unpickled weights-only (porter.runtime.checkpoints): a file whose pickle names anything beyond tensors and SAT's
    RNG state is refused, naming it, and nothing in it runs. ``.safetensors`` files load through safetensors."""
    try:
        state = _load(path, mmap=True)
    except RuntimeError:  # _load lets only torch's "mmap can only be used with" zip files through
        state = _load(path, mmap=False)  # the legacy (pre-zip) serialization cannot be memory-mapped
    weights = state.get("module", state) if isinstance(state, dict) else None
    if isinstance(weights, dict) and any(str(k).endswith("quant_state") for k in weights):
        raise _qlora(path, "bitsandbytes 'quant_state' keys")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: no 'module' state dict of tensors inside")
    return weights


def _load(path: Path, mmap: bool):
    """The safe loader's result, or one CheckpointError naming the file; with ``mmap``, torch's refusal to map a
    legacy-format file is raised as it is, for the caller to load it unmapped."""
    try:
        return safe_load.load(path, map_location="cpu", mmap=mmap)
    except safe_load.RefusedCheckpoint as exc:
        if any(n.startswith("bitsandbytes.") for n in exc.globals):
            raise _qlora(path, "its pickle names " + ", ".join(exc.globals)) from None
        raise CheckpointError(str(exc), hint=UNSAFE_HINT if exc.globals else None) from None
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):
            raise
        raise CheckpointError(f"checkpoint file corrupt: {path} ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - truncated or random bytes raise anything from EOFError to IndexError
        reason = _first_line(exc).removeprefix(f"{path}: ")  # the safe loader's reasons start with the file
        raise CheckpointError(f"checkpoint file corrupt: {path} ({reason})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


@dataclass
class KeyReport:
    """How a file's keys compare with a model's."""
    stale: list[str] = field(default_factory=list)  # known leftovers, dropped
    derived: list[str] = field(default_factory=list)  # in the file, recomputed instead
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name: file (a, b), model (c, d)"

    @property
    def problems(self) -> list[str]:
        out = [f"unexpected {k}" for k in self.unexpected] + [f"missing {k}" for k in self.missing]
        return out + [f"shape of {m}" for m in self.mismatched]


def compare_keys(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                 against: str = "model_config.json") -> KeyReport:
    report = KeyReport()
    for name, tensor in weights.items():
        if name in STALE and name not in expected:
            report.stale.append(name)
        elif DERIVED.search(name):
            report.derived.append(name)
        elif name not in expected:
            report.unexpected.append(f"{name} {tuple(tensor.shape)}")
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            report.mismatched.append(f"{name}: file {tuple(tensor.shape)}, {against} {tuple(expected[name].shape)}")
    for name, tensor in expected.items():
        if name not in weights and not DERIVED.search(name):
            report.missing.append(f"{name} {tuple(tensor.shape)}")
    return report


def resolve_dtype(name: str | None, quant: int | None = None) -> torch.dtype:
    """--dtype fp16|bf16|fp32, or the current device's default (fp16 on accelerators, fp32 on the CPU; bf16 on the
    CPU with --quant, the dtype torch's CPU int8 weight-only kernel is fast in)."""
    if name in (None, "auto"):
        from porter.runtime import device

        dev = device.current()
        return torch.bfloat16 if quant and dev.name == "cpu" else dev.default_dtype
    try:
        return DTYPES[name]
    except KeyError:
        raise UsageError(f"--dtype {name}: expected one of auto, {', '.join(DTYPES)}") from None


def meta_model(ckpt: Checkpoint):
    """The model ``model_config.json`` describes (with its adapters), on the meta device: shapes, no memory."""
    from .model import build_model

    try:
        return build_model(ckpt.config, finetune=ckpt.finetune, lora_rank=ckpt.sat_args.get("lora_rank", 10),
                           lora_layers=ckpt.sat_args.get("layer_range"),
                           pre_seq_len=ckpt.sat_args.get("pre_seq_len", 8), meta=True)
    except (AssertionError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"{ckpt.folder / 'model_config.json'}: SAT cannot build the model it describes "
                              f"({_first_line(exc)})") from None


def check_checkpoint(folder: str | Path, quant: int | None = None):
    """(checkpoint, the model built on the meta device, the file's weights memory-mapped, key report); raises a
    CheckpointError listing every key or shape that does not match. Reads no tensor data.

    A file whose language model SAT's ``quantize()`` left in 8 or 4 bits (int8 weights and ``weight_scale``) loads
    with that ``--quant`` only, its keys compared with the quantized layers'; ``ckpt.stored_bits`` says so. The
    model returned is the unquantized one: ``load_model`` puts the quantized layers in, which needs the ported SAT,
    while checking needs no port (the launching process checks before its workers start)."""
    from .model import is_adapter
    from .quantized import quantized_state, stored_bits

    ckpt = inspect_checkpoint(folder)
    model = meta_model(ckpt)
    weights = read_states(ckpt.states_file)
    expected = model.state_dict()
    stored = stored_bits(weights, expected)
    if stored is not None and quant != stored:
        raise CheckpointError(
            f"{ckpt.states_file}: its language model is stored in {stored} bits (SAT's quantized layout)"
            + (f", not {quant}: porter does not re-quantize quantized weights" if quant else ""),
            hint=f"load it with --quant {stored}" + ("" if quant is None else ", or use the 16-bit checkpoint"))
    ckpt.stored_bits = stored
    if ckpt.quant_base is not None:  # adapters alone, for a quantized base named in model_config.json
        _check_adapters_only(ckpt, quant)
        expected = {k: v for k, v in expected.items() if is_adapter(k, ckpt.finetune)}
    report = compare_keys(weights, quantized_state(expected, stored))
    if report.problems:
        raise CheckpointError(
            f"{ckpt.states_file}: weights do not match {ckpt.folder / 'model_config.json'} "
            f"({len(report.problems)} problem(s)): " + "; ".join(report.problems),
            hint="the weights and model_config.json come from different models, or the file is not a VisualGLM "
                 "checkpoint")
    return ckpt, model, weights, report


def check_quant_fields(ckpt: Checkpoint) -> int:
    """The bits of a checkpoint of adapters trained on a quantized base (model_config.json's ``quant_bits`` and
    ``quant_base``, untrusted): a whole 4 or 8, a base path, adapters; and the base it names exists and is a plain
    checkpoint (no adapters, no base of its own: no chains, no cycles), checked before any weight is read."""
    bits, base = ckpt.sat_args.get("quant_bits"), ckpt.quant_base
    config_file = ckpt.folder / "model_config.json"
    if type(bits) is not int or bits not in (4, 8) or not isinstance(base, str) or not base or ckpt.finetune is None:
        raise CheckpointError(f"{config_file}: 'quant_base' {base!r} needs 'quant_bits' 4 or 8 (not {bits!r}) and "
                              f"LoRA or P-tuning adapters")
    if Path(base).resolve() == ckpt.folder.resolve():
        raise CheckpointError(f"{config_file}: 'quant_base' names this folder itself")
    try:
        based_on = inspect_checkpoint(base)
    except CheckpointError as exc:
        raise CheckpointError(f"{ckpt.folder}: the base its adapters were trained on: {exc.message}",
                              hint="put the base back where model_config.json's 'quant_base' says") from None
    if based_on.quant_base is not None or based_on.finetune is not None:
        raise CheckpointError(f"{ckpt.folder}: its base {base} is itself fine-tuned with adapters; porter stacks "
                              f"one set", hint="name the checkpoint the adapters were trained on")
    return bits


def _check_adapters_only(ckpt: Checkpoint, quant: int | None) -> None:
    """A checkpoint of a run fine-tuned on a quantized base holds its adapters alone: it loads with the base it
    names, quantized to the bits it was trained on."""
    bits = check_quant_fields(ckpt)
    if quant != bits:
        raise CheckpointError(f"{ckpt.folder}: adapters trained on a base quantized to {bits} bits "
                              f"({ckpt.quant_base}): load them with --quant {bits}", hint=f"add --quant {bits}")


def _load_adapters_only(ckpt: Checkpoint, weights, dtype: torch.dtype, say):
    """The base ``ckpt`` names, quantized, with ``ckpt``'s adapters added and their trained values put in."""
    from .model import add_finetuning

    base = Path(str(ckpt.quant_base))
    finetune = str(ckpt.finetune)  # _check_adapters_only: LoRA or P-tuning
    if say:
        say(f"base: {base} ({ckpt.sat_args['quant_bits']} bits), adapters: {ckpt.folder}")
    try:  # a plain checkpoint (check_quant_fields): no recursion beyond this one
        model, _ = load_model(base, dtype=dtype, say=say, quant=ckpt.sat_args["quant_bits"])
    except CheckpointError as exc:
        raise CheckpointError(f"{ckpt.folder}: its base {base}: {exc.message}", hint=exc.hint) from None
    add_finetuning(model, finetune, lora_rank=ckpt.sat_args.get("lora_rank", 10),
                   lora_layers=ckpt.sat_args.get("layer_range"), pre_seq_len=ckpt.sat_args.get("pre_seq_len", 8))
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            own[name].copy_(tensor)
    model.porter_config = ckpt.config
    return model, ckpt


def _on_cpu() -> bool:
    from porter.runtime import device

    return device.current().name == "cpu"


IMAGE_ENCODER_PARTS = tuple(ENCODER_PARTS.values())  # what an image-encoder file holds


def read_image_encoder(path: str | Path, config: VisualGLMConfig) -> dict[str, torch.Tensor]:
    """A pretrained image encoder for ``config``: the ViT's and the Q-Former's parameters under their names in the
    released checkpoint (``mixins.eva.model.vit...``, ``mixins.eva.model.qformer...``), in a torch file of one
    state dict (or SAT's ``{"module": ...}``). Every key and shape is checked; one error lists what does not fit."""
    from .model import build_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--image-encoder {path}: no such file")
    weights = read_states(path)
    expected = {k: v for k, v in build_model(config, meta=True).state_dict().items()
                if k.startswith(IMAGE_ENCODER_PARTS)}
    report = compare_keys(weights, expected, against="the model")
    if report.problems:
        raise CheckpointError(
            f"--image-encoder {path}: not an image encoder for this model ({len(report.problems)} problem(s)): "
            + "; ".join(report.problems[:5]) + (" ..." if len(report.problems) > 5 else ""),
            hint="the file holds the ViT and Q-Former parameters (mixins.eva.model.vit.*, mixins.eva.model.qformer.*)"
                 " of a model with the same sizes as --preset")
    return weights


def load_model(folder: str | Path, merge_lora: bool = False, dtype: torch.dtype = torch.float32, say=None,
               quant: int | None = None):
    """Build the model ``model_config.json`` describes and assign it the file's weights in ``dtype``; with
    ``quant``, the language model's linears in that many bits (quantized while read, or as stored)."""
    from .model import assign_weights, materialise_derived
    from .quantized import SCALE, quantize_meta, quantize_weights, quantized_names, repack_for_cpu, require_memory

    ckpt, model, weights, report = check_checkpoint(folder, quant)
    if ckpt.quant_base is not None:
        return _load_adapters_only(ckpt, {n: t for n, t in weights.items() if not DERIVED.search(n)}, dtype, say)
    if quant:
        quantize_meta(model, quant)
    for name in report.stale:
        if say:
            say(f"note: dropped {name} from {ckpt.states_file.name}: {STALE[name]}")
    # to quantize as read: the language model's linear weights (their scales stay fp16, as SAT keeps them)
    names = quantized_names(model) if quant and ckpt.stored_bits is None else []
    if quant:
        require_memory({k: t for k, t in weights.items() if k not in report.stale}, names, quant, dtype,
                       str(ckpt.folder))
    todo = {n + ".weight" for n in names}
    # contiguous: a file may hold strided or overlapping views (torch.save keeps a view's storage and strides); as
    # parameters they would alias each other and make every matmul walk memory the slow way
    keep = {n: (t.to(dtype) if t.is_floating_point() and not n.endswith("." + SCALE) else t).contiguous()
            for n, t in weights.items() if n not in report.stale and not DERIVED.search(n) and n not in todo}
    if quant and names:
        keep.update(quantize_weights(weights, names, quant, say))
    del weights
    assign_weights(model, keep)
    del keep
    materialise_derived(model, dtype)
    model.porter_config = ckpt.config
    model.porter_quant = quant
    if quant == 4 and dtype == torch.bfloat16 and _on_cpu():  # the dtype torch's int4 kernel is used in
        n = repack_for_cpu(model)
        if say and n:
            say(f"int4 weights of {n} layers laid out for torch's CPU int4 kernel (once; checkpoints keep SAT's layout)")
    if merge_lora and ckpt.finetune == "lora" and quant:
        if say:  # folding LoRA into int weights would re-quantize them: the adapters run beside the frozen base
            say(f"note: LoRA kept beside the {quant}-bit base (not merged into quantized weights)")
    elif merge_lora and ckpt.finetune == "lora":
        model.get_mixin("lora").merge_lora()
        model.del_mixin("lora")
    return model, ckpt


def save_model(model, config: VisualGLMConfig, folder: str | Path, iteration: int = 1, finetune: str | None = None,
               **extra_args) -> Path:
    """Write ``model`` in SAT's layout; ``latest`` is written last, so a crash leaves the old one in force."""
    folder = Path(folder)
    (folder / str(iteration)).mkdir(parents=True, exist_ok=True)
    sat_args = {**config.sat_args(), "use_lora": finetune == "lora", "use_ptuning": finetune == "ptuning", **extra_args}
    _atomic_text(folder / "model_config.json", json.dumps(sat_args, indent=2) + "\n")
    states = folder / str(iteration) / STATES
    fd, tmp = tempfile.mkstemp(dir=states.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"module": model.state_dict(), "iteration": iteration}, tmp)
    os.replace(tmp, states)
    _atomic_text(folder / "latest", str(iteration))
    return folder


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
