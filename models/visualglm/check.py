"""`porter run visualglm check`: will this checkpoint folder (and tokenizer) work here? Answered in seconds.

Reads ``model_config.json``, every key and shape of the weights file through a memory map (no tensor data
is read), the tokenizer's layout, and compares the memory the load needs with what is free. Loads no weights,
and runs nothing from the weights file: its pickle's globals are read as opcodes first, and a file that names
anything beyond tensors and SAT's training state is refused (exit 7) before it is unpickled, weights-only.
"""
from __future__ import annotations

from pathlib import Path

from porter.errors import InputError, UsageError
from porter.recipes import add_device_argument, use_device

from . import import_sat
from .assets import add_weight_arguments

EPILOG = """\
examples:
  porter run visualglm check --from_pretrained glm/visualglm --chatglm_path glm/chatglm
      the released weights: config, 1012 keys and shapes, tokenizer, memory for fp16 on this machine
  porter run visualglm check --from_pretrained runs/demo/checkpoints/visualglm-MM-DD-HH-MM --dtype fp32
exit codes: 0 every check passed; 7 a problem was found (each one is listed)
"""


def add_arguments(p) -> None:
    add_weight_arguments(p)
    add_device_argument(p, help="the device to size the load for (default: detection, npu first; a plugin's device by name)")


def host_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


class _Findings:
    """Each check's line as it is made, "ok" or "problem"; the problems decide the exit code at the end."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def ok(self, msg: str) -> None:
        print(f"ok       {msg}", flush=True)

    def problem(self, msg: str) -> None:
        self.problems.append(msg)
        print(f"problem  {msg}", flush=True)


def run(args) -> int:
    if not args.from_pretrained:
        raise UsageError("check needs --from_pretrained DIR")
    use_device(args)

    import_sat()
    from .checkpoint import inspect_checkpoint

    found = _Findings()
    ckpt = inspect_checkpoint(args.from_pretrained)  # a folder that cannot be read at all is one error
    found.ok(_describe(ckpt))
    weights, expected = _check_keys(args, ckpt, found)
    _check_memory(args, ckpt, weights, expected, found)
    _check_tokenizer(args, ckpt, found)
    if found.problems:
        raise InputError(f"{len(found.problems)} problem(s) with {ckpt.folder}; each is listed above")
    print(f"{ckpt.folder} will load.", flush=True)
    return 0


def _describe(ckpt) -> str:
    """The checkpoint in one line: iteration, model class, the three parts' sizes, how it was fine-tuned."""
    c = ckpt.config
    return (f"{ckpt.folder}: iteration {ckpt.iteration}, {ckpt.sat_args.get('model_class', '?')}; ChatGLM "
            f"{c.lm.layers} layers x {c.lm.hidden}, vocab {c.lm.vocab}; EVA {c.vision.layers} x {c.vision.hidden} at "
            f"{c.vision.image_size} px; Q-Former {c.qformer.layers} x {c.qformer.hidden}, {c.qformer.queries} queries"
            + (f"; fine-tuned with {ckpt.finetune}" if ckpt.finetune else ""))


def _check_keys(args, ckpt, found: _Findings):
    """(weights, the model's own state dict): the file's keys and shapes against what model_config.json builds."""
    from .checkpoint import compare_keys, meta_model, read_states, scan_states

    # An unreadable or crafted weights file is one error, as a missing one is: nothing below can be checked without
    # its keys. Scanned before unpickling, so the refusal names every global the pickle would have called.
    from .quantized import quantized_state, stored_bits

    scan_states(ckpt.states_file)
    weights = read_states(ckpt.states_file)
    model = meta_model(ckpt)
    if ckpt.quant_base is not None:
        return _check_adapters(args, ckpt, weights, model, found)
    expected = model.state_dict()
    stored = ckpt.stored_bits = stored_bits(weights, expected)
    expected = quantized_state(expected, stored)
    quant = getattr(args, "quant", None)
    if stored is not None:
        if quant != stored:
            found.problem(f"{ckpt.states_file.name}: the language model is stored in {stored} bits (SAT's quantized "
                          f"layout): load it with --quant {stored}")
        else:
            found.ok(f"{ckpt.states_file.name}: the language model is stored in {stored} bits, as --quant asks")
    report = compare_keys(weights, expected)
    for p in report.problems:
        found.problem(f"{ckpt.states_file.name}: {p}")
    if not report.problems:
        found.ok(f"{ckpt.states_file.name}: all {len(expected)} keys and shapes as model_config.json describes")
    for name in report.stale:
        found.ok(f"{name}: left by an older SAT, will be dropped")
    return weights, expected


def _check_adapters(args, ckpt, weights, model, found: _Findings):
    """A run's adapters trained on a quantized base: the fields naming the base, the adapters' keys, the base's own
    keys; (the base's weights, its model's state dict) for the memory check, which is the base's."""
    from .checkpoint import CheckpointError, check_checkpoint, check_quant_fields, compare_keys
    from .model import is_adapter

    try:
        bits = check_quant_fields(ckpt)
        base, base_model, base_weights, _ = check_checkpoint(ckpt.quant_base)
    except CheckpointError as exc:
        found.problem(exc.message)
        return {}, {}
    if getattr(args, "quant", None) != bits:
        found.problem(f"{ckpt.folder.name}: adapters trained on a base quantized to {bits} bits: load them with "
                      f"--quant {bits}")
    adapters = {k: v for k, v in model.state_dict().items() if is_adapter(k, ckpt.finetune)}
    report = compare_keys(weights, adapters)
    for p in report.problems:
        found.problem(f"{ckpt.states_file.name}: {p}")
    if not report.problems:
        found.ok(f"{ckpt.states_file.name}: the {len(adapters)} {ckpt.finetune} adapter tensors, for the base "
                 f"{base.folder} in {bits} bits (its keys and shapes checked too)")
    return base_weights, base_model.state_dict()


def _check_memory(args, ckpt, weights, expected, found: _Findings) -> None:
    """The stored and loading dtypes, then the host's and the device's memory against what the load needs."""
    import torch

    from porter.runtime import device

    from .checkpoint import resolve_dtype

    quant = getattr(args, "quant", None)
    dtype = resolve_dtype(args.dtype, quant)
    file_bytes = ckpt.states_file.stat().st_size
    by_dtype: dict[torch.dtype, int] = {}
    changing = 0
    params = 0
    for name, t in weights.items():
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel()
        if name in expected and t.is_floating_point():
            params += t.numel()
            if t.dtype != dtype:
                changing += t.numel() * dtype.itemsize
    stored = ", ".join(f"{n / 1e9:.3f}e9 {str(d).removeprefix('torch.')}" for d, n in by_dtype.items())
    dev = device.current()
    found.ok(f"weights stored as {stored}; loading as {str(dtype).removeprefix('torch.')} on {dev.name}")
    if dev.name == "cpu" and dtype == torch.float16:
        print("note     fp16 on the CPU runs, slowly; --dtype fp32 (or bf16) is the CPU's usual choice", flush=True)

    # The file is memory-mapped, so its pages count once; tensors that change dtype are copied once more.
    host_needed = file_bytes + changing
    if quant:
        host_needed = params = _quant_plan(weights, expected, quant, dtype, found)
    free = host_available()
    if free is None:
        found.ok(f"host memory: about {gib(host_needed)} needed (cannot read what is free here)")
    elif host_needed > free:
        found.problem(f"host memory: about {gib(host_needed)} needed, {gib(free)} available")
    else:
        found.ok(f"host memory: about {gib(host_needed)} needed, {gib(free)} available")
    if dev.is_accelerator:
        # the weights and about 10% for activations and cache; an NPU keeps int4 weights a second time, repacked
        # for its kernel (porter.runtime.quant)
        held = params if quant else params * dtype.itemsize
        if quant == 4 and dev.name == "npu":
            held += _quant_plan_linear(weights, expected)
        device_needed = int(held * 1.1)
        device_free = dev.memory_free()
        if device_free is not None and device_needed > device_free:
            found.problem(f"{dev.name} memory: about {gib(device_needed)} needed, {gib(device_free)} free")
        else:
            found.ok(f"{dev.name} memory: about {gib(device_needed)} needed"
                     + (f", {gib(device_free)} free" if device_free is not None else ""))


def _quant_plan(weights, expected, quant: int, dtype, found: _Findings) -> int:
    """Bytes the model holds with --quant: the language model's linears in ``quant`` bits, the rest in ``dtype``.
    The file's mapped pages are page cache, read once and evictable, so they are not added."""
    from .checkpoint import STALE
    from .quantized import LM_LINEAR, memory_plan

    names = sorted({k.rsplit(".", 1)[0] for k in expected if LM_LINEAR.match(k.rsplit(".", 1)[0])})
    plan = memory_plan({k: t for k, t in weights.items() if k not in STALE}, names, quant, dtype)
    found.ok(f"--quant {quant}: language model's linears {gib(plan['quantized'])} in {quant} bits, the rest "
             f"{gib(plan['16-bit'])} in {str(dtype).removeprefix('torch.')} (image encoder, embeddings, lm_head)")
    return plan["quantized"] + plan["16-bit"]


def _quant_plan_linear(weights, expected) -> int:
    """Bytes of the language model's linears in 4 bits (what an NPU holds twice)."""
    from .quantized import LM_LINEAR

    return sum(t.numel() // 2 for k, t in weights.items()
               if k.endswith(".weight") and LM_LINEAR.match(k.rsplit(".", 1)[0]) and k in expected)


def _check_tokenizer(args, ckpt, found: _Findings) -> None:
    """The tokenizer the checkpoint names loads, with ChatGLM-6B's ids."""
    from .assets import tokenizer_for, tokenizer_type_of

    try:
        tokenizer = tokenizer_for(tokenizer_type_of(ckpt), args.chatglm_path)
        found.ok(f"tokenizer: {tokenizer.folder}: {tokenizer.pieces:,} pieces, ChatGLM-6B's ids ([gMASK] 130001, "
                 f"<sop> 130004, <eop> 130005, pad 3)")
    except InputError as exc:
        found.problem(f"tokenizer: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
