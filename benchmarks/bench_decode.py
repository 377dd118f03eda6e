"""Decode speed at batch 1: porter's ``Decoder`` against upstream VisualGLM-6B's own ``chat()`` on the same weights,
prompt and runtime; a mid-size model's decode as a share of the measured memory bandwidth; and a profile of one
porter decode step. Results in results/decode.json.

    .venv/bin/pip install -c constraints.txt torchvision==0.28.0     # upstream's model/blip2.py imports it
    git --git-dir=/work/.mirror/THUDM+VisualGLM-6B/repo archive e314fb9c4e778851414f39784317c72765acec47 -- . \\
        ':(exclude)fewshot-data.zip' | tar -x -C /tmp/VisualGLM-6B
    PORTER_VISUALGLM_UPSTREAM=/tmp/VisualGLM-6B .venv/bin/python benchmarks/bench_decode.py \\
        [--models small mid] [--tokens 32] [--rounds 3] [--modes greedy sampled] [--lengths 100 500 1000]

Without ``PORTER_VISUALGLM_UPSTREAM`` (or where it names no checkout) the upstream comparisons are skipped, and the
result says why; the bandwidth share and the profile still run.

Models (both in the release's layout: ChatGLM's 130,528-id vocabulary, width 4096, which upstream's
``model/blip2.py`` fixes with ``glm_proj = nn.Linear(768, 4096)``):
- ``small``: the config of the stand-in tests/upstream runs upstream's chat on (``upstream_standins.standin_config``:
  one layer, inner width 256; 1.2e9 parameters, nearly all of them the embeddings and ``lm_head``): per-token
  overhead shows most here;
- ``mid``: ``standin_config()`` with ``--mid-layers`` (4) full-width ChatGLM layers (inner 16384): 1.9e9 parameters,
  a step reads 2.7 GB; made once by make_6b_standin.make_standin under porter's cache
  (``standins/visualglm-mid<N>-fp16``), never in git.

How the two are run, one child process per model (one process: same threads, same in-memory SAT port):
- SAT is ported in memory (``porter.memory``, as ``porter run``'s workers and bench_quant_6b.py get it); porter's
  model and upstream's ``VisualGLMModel`` both import that one ported SAT.
- upstream's model is built as its ``model/infer_util.get_infer_setting`` builds it (``from_pretrained`` with
  ``fp16=True, skip_init=True``, the ``auto-regressive`` mixin, ``eval()``), minus its ``.cuda()`` and with the
  folder's path instead of the name ``visualglm-6b``; its tokenizer is tests/upstream's stand-in ``THUDM/chatglm-6b``
  (a local, offline Hugging Face cache). Upstream's code is imported from the checkout; nothing of it is copied.
- fp16 on both sides: upstream's own dtype (``chat()`` casts the image to fp16), and on this CPU (AVX-512 BF16, no
  FP16 arithmetic) torch's one-row fp16 linear runs at about twice the bytes/s of bf16's.
- the same prompt: upstream's ``chat(examples/1.jpeg, "Describe the image.", english=True)``; the ids and the
  image tensor upstream hands to SAT's ``filling_sequence`` are captured and porter's ``Decoder`` gets exactly
  those (the ids are checked against porter's own ``build_prompt``).
- the same number of new tokens: ``<eop>`` (130005) is banned on both sides (``invalid_slices``), so both run to
  the length limit: upstream's ``max_length`` = prompt + N, porter's ``Sampling.max_length`` = prompt + N.
- the same sampling settings: ``greedy`` (top_k 1, temperature 1, no repetition penalty; both take the argmax, so
  the token ids are compared too) and ``sampled`` (cli_demo.py's top_p 0.4, top_k 100, temperature 0.8, repetition
  penalty 1.2; different draws, same work).
- timed: the decode steps after the first token (tokens 2..N). Porter: its ``step()`` calls. Upstream: from the
  start of the model's second forward call (a forward pre-hook) to ``filling_sequence``'s return (a wrapper set on
  upstream's ``model.chat`` module while it runs): forwards, ``update_mems`` and ``BaseStrategy`` for N - 1 tokens.
- A and B alternate, ABBA by round, ``--rounds`` times per sampling mode; medians are reported.

Share of bandwidth (``mid``, porter, greedy): tokens/s x bytes one step reads (every tensor of the language
model's layers, the final norm, ``lm_head`` and one embedding row, as bench_quant_6b.py counts it) / the host
bandwidth ``_shared.bandwidth`` measures in the parent just before and after the child (the best of the two).

Profile (``mid``, porter): the Decoder's key/value cache is grown to each of ``--lengths`` (filler positions
appended to its cache, ids and ``generated``, so its masks and positions are those of an answer that long), then
steps run under torch.profiler with record_function labels on the model call, ``step_inputs`` (mask and positions)
and ``pick_rows`` (sampling). Ops are grouped: weight matmuls (``addmm``/``mm``/``linear`` with a weight), the
attention's products over the cache, SAT's key/value ``torch.cat((past_key, key_layer))`` (an ``aten::cat``
whose first input is the cache), other ops, and what is not in any op (Python). The cache concatenation is also
timed alone, without the profiler, at the same shapes and per layer, against an unprofiled step.
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
REPO = HERE.parent
TESTS_UPSTREAM = REPO / "tests" / "upstream"
UPSTREAM_ENV = "PORTER_VISUALGLM_UPSTREAM"
EOS = 130005  # <eop>: banned on both sides, so both decode exactly N new tokens
IMAGE = "examples/1.jpeg"  # upstream's own example image, relative to its checkout (as tests/upstream uses it)
QUERY = "Describe the image."
SAMPLED = {"top_p": 0.4, "top_k": 100, "temperature": 0.8, "repetition_penalty": 1.2}  # cli_demo.py's
GREEDY = {"top_p": 1.0, "top_k": 1, "temperature": 1.0, "repetition_penalty": 1.0}


# ---------------------------------------------------------------------------------------------------------------
# the models

def mid_config(layers: int) -> dict:
    """tests/upstream's stand-in config (the widths upstream's code fixes) with ``layers`` full-size ChatGLM layers."""
    sys.path.insert(0, str(TESTS_UPSTREAM))
    from upstream_standins import standin_config

    config = standin_config()
    config.update(num_layers=layers, inner_hidden_size=4 * config["hidden_size"])  # the 6B's 16384
    return config


def parameter_count(config: dict) -> int:
    import math

    from porter_visualglm.release import release_keys

    return sum(math.prod(shape) for shape in release_keys(config, stale=False).values())


def mid_folder(layers: int) -> Path:
    """The mid-size stand-in in porter's cache, made once (make_6b_standin's generator: reused when complete)."""
    from make_6b_standin import make_standin

    from porter.diskio import cache_dir

    config = mid_config(layers)
    return make_standin(cache_dir("standins") / f"visualglm-mid{layers}-fp16", config)


def small_folder() -> Path:
    """tests/upstream's stand-in config (one layer, inner width 256), its weights drawn by make_6b_standin into
    porter's cache. Not ``upstream_standins.write_sat_home``'s file: that one saves the two 130,528-row matrices
    (and any over 50M numbers) as overlapping strided views, which porter's loader keeps as they are (stride
    (1, 1), see the report) while SAT copies them into its own contiguous parameters, so the two sides would not
    compute on the same memory layout."""
    sys.path.insert(0, str(TESTS_UPSTREAM))
    from make_6b_standin import make_standin
    from upstream_standins import standin_config

    from porter.diskio import cache_dir

    return make_standin(cache_dir("standins") / "visualglm-small-fp16", standin_config())


def hf_environment(tmp: Path) -> dict:
    sys.path.insert(0, str(TESTS_UPSTREAM))
    from upstream_standins import write_hf_home

    return write_hf_home(tmp / "hf")


def upstream_checkout() -> tuple[Path | None, str | None]:
    """(the checkout, None) or (None, why the upstream comparison is skipped)."""
    value = os.environ.get(UPSTREAM_ENV, "")
    if not value:
        return None, f"{UPSTREAM_ENV} is not set: no checkout of THUDM/VisualGLM-6B to run upstream's chat() from"
    path = Path(value)
    if not (path / "model" / "chat.py").is_file() or not (path / IMAGE).is_file():
        return None, f"{UPSTREAM_ENV}={value} holds no model/chat.py and {IMAGE}: not a THUDM/VisualGLM-6B checkout"
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None, ("upstream's model/blip2.py imports torchvision, which is not installed "
                      "(.venv/bin/pip install -c constraints.txt torchvision==0.28.0)")
    return path, None


# ---------------------------------------------------------------------------------------------------------------
# the child: one process per model

DTYPES = {"fp16": "float16", "fp32": "float32"}
DTYPE_NAME = "fp16"  # the child's, from its spec (--dtype)


def _dtype():
    import torch

    return getattr(torch, DTYPES[DTYPE_NAME])


def _child_setup():
    """SAT ported in memory, as porter run's workers get it; must run before anything imports sat."""
    import contextlib

    from porter import memory, plugins

    memory.install(memory.prepare_for(plugins.load(lazy=True), "sat"))
    os.environ["PORTER_DEVICE"] = "cpu"
    with contextlib.redirect_stdout(sys.stderr):  # SAT and DeepSpeed print on import; stdout carries the JSON
        import sat  # noqa: F401


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Upstream:
    """Upstream's model and chat(), imported from the checkout, with the timing instrumentation described above."""

    def __init__(self, checkout: Path, folder: Path):
        import contextlib


        sys.path.insert(0, str(TESTS_UPSTREAM))
        from chat_turn import import_torchvision

        import_torchvision()  # PyPI's torchvision wheel needs two op schemas declared on a CPU-only torch
        sys.path.insert(0, str(checkout))
        os.chdir(checkout)  # chat() opens the image path it is given, as cli_demo.py passes it
        with contextlib.redirect_stdout(sys.stderr):
            import model as upstream  # upstream's package: model/__init__.py imports chat, infer_util, blip2
            from sat.model.mixins import CachedAutoregressiveMixin
            from transformers import AutoTokenizer

            # model/infer_util.py get_infer_setting(), minus CUDA_VISIBLE_DEVICES and .cuda()
            args = argparse.Namespace(fp16=DTYPE_NAME == "fp16", skip_init=True, device="cpu")
            self.model, _ = upstream.VisualGLMModel.from_pretrained(str(folder), args)
            self.model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
            self.model.eval()
            self.tokenizer = AutoTokenizer.from_pretrained("THUDM/chatglm-6b", trust_remote_code=True)
        assert next(self.model.parameters()).dtype == _dtype()
        self.chat = upstream.chat  # the function (model/__init__.py: from .chat import chat)
        self.chat_module = sys.modules["model.chat"]
        self.starts: list[float] = []
        self.model.register_forward_pre_hook(lambda module, args: self.starts.append(_now()))

    def run(self, new_tokens: int, prompt_length: int, settings: dict, seed: int) -> dict:
        import torch

        original = self.chat_module.filling_sequence
        seen: dict = {}

        def filling_sequence(model, seq, **kw):  # instrumentation only: upstream's own function runs unchanged
            seen["seq"], seen["image"] = seq.clone(), kw.get("image")
            out = original(model, seq, **kw)
            seen["end"] = _now()
            seen["tokens"] = out[0]
            return out

        self.starts.clear()
        self.chat_module.filling_sequence = filling_sequence
        torch.manual_seed(seed)
        try:
            with torch.no_grad():
                self.chat(IMAGE, self.model, self.tokenizer, QUERY, history=[],
                          max_length=prompt_length + new_tokens, invalid_slices=[slice(EOS, EOS + 1)], english=True,
                          **settings)
        finally:
            self.chat_module.filling_sequence = original
        context = int((seen["seq"] >= 0).sum())
        generated = seen["tokens"][0, context:].tolist()
        if len(self.starts) != len(generated) or len(generated) != new_tokens:
            raise RuntimeError(f"upstream: {len(self.starts)} forward calls for {len(generated)} new tokens, "
                               f"{new_tokens} asked")
        decode_s = seen["end"] - self.starts[1]
        return {"prefill_s": self.starts[1] - self.starts[0], "decode_s": decode_s, "decode_tokens": new_tokens - 1,
                "tokens_per_s": (new_tokens - 1) / decode_s, "tokens": generated,
                "prompt": seen["seq"][:context].tolist(), "image": seen["image"]}


def _now() -> float:
    import time

    return time.perf_counter()


def porter_run(model, prompt, image, new_tokens: int, settings: dict, seed: int) -> dict:
    from porter_visualglm.generate import Decoder, Request, Sampling

    sampling = Sampling(max_length=len(prompt.ids) + new_tokens, invalid_slices=[slice(EOS, EOS + 1)], seed=seed,
                        **settings)
    decoder = Decoder(model, [Request(prompt, image, sampling)], None)  # no `allowed` mask: upstream has none
    start = _now()
    tokens = [decoder.step()[0]]
    first = _now()
    while not decoder.done:
        token = decoder.step()[0]
        if token is None:
            break
        tokens.append(token)
    end = _now()
    if len(tokens) != new_tokens or None in tokens:
        raise RuntimeError(f"porter: {len(tokens)} new tokens, {new_tokens} asked")
    return {"prefill_s": first - start, "decode_s": end - first, "decode_tokens": new_tokens - 1,
            "tokens_per_s": (new_tokens - 1) / (end - first), "tokens": tokens}


def load_porter(folder: Path):
    from porter_visualglm.checkpoint import load_model

    model, ckpt = load_model(folder, dtype=_dtype(), say=say)
    model.eval()
    return model, ckpt.config


def porter_prompt(config):
    from porter_visualglm.assets import STANDIN, tokenizer_for
    from porter_visualglm.chat import build_prompt

    tokenizer = tokenizer_for(STANDIN, None)  # the stand-in ice_text.model, the same file the HF stand-in wraps
    return build_prompt(tokenizer, QUERY, [], image_length=config.image_length, has_image=True, english=True)


def child_compare(folder: Path, checkout: Path | None, new_tokens: int, rounds: int, modes: list[str]) -> dict:
    import torch
    from _shared import PeakAnon, step_bytes

    out: dict = {"threads": torch.get_num_threads(), "folder": str(folder)}
    with PeakAnon() as mem:
        model, config = load_porter(folder)
        out["bytes_per_token"] = step_bytes(model)
        out["parameters"] = sum(p.numel() for p in model.parameters())
        prompt = porter_prompt(config)
        upstream = Upstream(checkout, folder) if checkout else None
        if upstream is not None:
            # upstream's own prompt and image, once, so porter decodes from exactly what upstream's chat() built
            probe = upstream.run(2, len(prompt.ids), GREEDY, 0)
            if probe["prompt"] != prompt.ids:
                raise RuntimeError(f"upstream's prompt ids differ from porter's build_prompt:\n{probe['prompt']}\n"
                                   f"{prompt.ids}")
            image = probe["image"][0].to(_dtype())
            out["same_weights"] = _same_weights(model, upstream.model)
        else:
            from porter_visualglm.images import load_image
            from porter_visualglm.infer import default_image

            image = load_image(default_image(), config.vision.image_size).to(_dtype())
        out["prompt_tokens"] = len(prompt.ids)
        # porter's weights of an fp16 file loaded in fp16 are the file's memory map: the first pass faults its
        # pages in. One short untimed answer, as upstream's probe above is one for upstream.
        porter_run(model, prompt, image, 2, GREEDY, 0)
        runs: dict = {mode: {"porter": [], "upstream": []} for mode in modes}
        for r in range(rounds):
            for mode in modes:
                settings = GREEDY if mode == "greedy" else SAMPLED
                order = ["porter", "upstream"] if r % 2 == 0 else ["upstream", "porter"]  # ABBA against drift
                for side in order:
                    if side == "porter":
                        res = porter_run(model, prompt, image, new_tokens, settings, seed=r)
                    elif upstream is not None:
                        res = upstream.run(new_tokens, len(prompt.ids), settings, seed=r)
                        res.pop("prompt"), res.pop("image")
                    else:
                        continue
                    runs[mode][side].append(res)
                    say(f"round {r} {mode:7s} {side:8s}: {res['tokens_per_s']:.2f} tokens/s "
                        f"(prefill {res['prefill_s']:.2f} s)")
    out["peak_anon_bytes"] = mem.peak_above_baseline
    out["runs"] = runs
    return out


def _same_weights(ours, theirs) -> dict:
    """Every parameter both models have (by name), compared exactly: the two loaders read one file."""
    mine = dict(ours.named_parameters())
    compared, differ = 0, []
    for name, t in theirs.named_parameters():
        if name in mine:
            compared += 1
            if not torch_equal(mine[name], t):
                differ.append(name)
    return {"compared": compared, "differ": differ}


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


# ---------------------------------------------------------------------------------------------------------------
# the profile

class _Labelled:
    """The model as the Decoder calls it, inside a record_function label (parameters() passes through)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kw):
        import torch

        with torch.profiler.record_function("model"):
            return self.model(*args, **kw)

    def parameters(self):
        return self.model.parameters()


def _labelled(function, label: str):
    import torch

    def call(*args, **kw):
        with torch.profiler.record_function(label):
            return function(*args, **kw)

    return call


def grow(decoder, length: int) -> None:
    """Make a one-row Decoder that has run its prompt look like it has decoded up to ``length`` positions: filler
    positions appended to its key/value cache (copies of the last position: realistic magnitudes), ids and
    ``generated``, so its masks and positions are those of a real answer that long. The values do not matter
    for the timing; the shapes do."""
    import torch

    missing = length - decoder.seq.shape[1]
    if missing <= 0:
        return
    decoder.past = [tuple(torch.cat([t, t[-1:].expand(missing, *t.shape[1:])]) for t in kv) for kv in decoder.past]
    filler = [5] * missing  # any ordinary id
    decoder.seq = torch.cat([decoder.seq, torch.tensor([filler], device=decoder.seq.device)], dim=1)
    decoder.generated[0].extend(filler)


def _first_shape(event) -> list:
    return next((shape for shape in (event.input_shapes or []) if shape), [])


def _touches_cache(shape: list, cache_length: int, steps: int) -> bool:
    """A tensor with a dimension as long as the key/value cache during the profiled steps ([positions, batch, heads,
    dim], [batch, heads, positions, dim], SAT's [batch, heads, 1, positions, dim] expansion)."""
    return len(shape) >= 4 and any(cache_length - 2 <= d <= cache_length + steps + 2 for d in shape)


def classify(events, cache_length: int, steps: int) -> dict:
    """Self CPU time (s) of the profiled ops by group; ``cache_length`` tells the cache's tensors apart.

    ``aten::cat`` of a tensor list records no input shapes: SAT's key/value cat is told by its children
    (``narrow``/``slice`` of the [cache + 1, 1, heads, dim] result) and counted with them (``cpu_time_total``)."""
    groups = {"weight_matmuls": 0.0, "attention_products": 0.0, "kv_cache_cat": 0.0,
              "other_kv_length_copies": 0.0, "rotary_table": 0.0, "other_ops": 0.0}
    by_op: dict[str, float] = {}
    skip: set[int] = set()
    kv_cats = 0
    for e in events:
        if id(e) in skip or e.name in ("model", "step_inputs", "sampling"):
            continue
        t = e.self_cpu_time_total / 1e6
        shape = _first_shape(e)
        if e.name == "aten::cat" and any(_touches_cache(_first_shape(c), cache_length, steps) for c in e.cpu_children):
            stack = list(e.cpu_children)
            while stack:  # the cat's own narrow/slice/copy children belong to it
                child = stack.pop()
                skip.add(id(child))
                stack.extend(child.cpu_children)
            groups["kv_cache_cat"] += e.cpu_time_total / 1e6
            kv_cats += 1
            key = "aten::cat (key/value cache)"
            t = e.cpu_time_total / 1e6
        elif e.name in ("aten::addmm", "aten::mm", "aten::_addmm_activation", "mkldnn::_linear"):
            groups["weight_matmuls"] += t
            key = e.name
        elif e.name in ("aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                        "aten::_softmax"):
            groups["attention_products"] += t
            key = e.name
        elif e.name in ("aten::copy_", "aten::clone", "aten::contiguous") and _touches_cache(shape, cache_length,
                                                                                           steps):
            # SAT's attention_fn_default: key/value .unsqueeze(2).expand(...).contiguous() (multi-query expansion,
            # a full copy of the permuted cache per layer per step even when there are as many key heads as query)
            groups["other_kv_length_copies"] += t
            key = f"{e.name} [1, heads, 1, cache, dim]" if len(shape) == 5 else f"{e.name} {shape}"
        elif e.name in ("aten::cos", "aten::sin", "aten::einsum") or (
                e.name in ("aten::copy_", "aten::_to_copy") and len(shape) == 3 and shape[1] == 1):
            # SAT's RotaryEmbedding rebuilds its cos/sin table whenever the position passes the cached maximum:
            # on every decode step, over every position so far
            groups["rotary_table"] += t
            key = e.name if e.name != "aten::copy_" else "aten::copy_ [positions, 1, dim] (rotary table)"
        else:
            groups["other_ops"] += t
            key = e.name if e.name not in ("aten::copy_", "aten::cat") else f"{e.name} {shape}"
        by_op[key] = by_op.get(key, 0.0) + t
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:15]
    return {"groups": groups, "top_ops": top, "kv_cats": kv_cats}


def child_profile(folder: Path, lengths: list[int], steps: int) -> dict:
    import torch
    from _shared import step_bytes
    from porter_visualglm import generate
    from porter_visualglm.generate import Decoder, Request, Sampling
    from porter_visualglm.images import load_image
    from porter_visualglm.infer import default_image

    model, config = load_porter(folder)
    prompt = porter_prompt(config)
    image = load_image(default_image(), config.vision.image_size).to(_dtype())
    layers = config.lm.layers
    weight_bytes = step_bytes(model)
    original_pick = generate.pick_rows
    pick_rows = _labelled(original_pick, "sampling")
    out: dict = {"threads": torch.get_num_threads(), "layers": layers, "steps": steps, "lengths": {}}
    generate.pick_rows = pick_rows  # step() looks the module's global up at each call
    try:
        for length in lengths:
            sampling = Sampling(max_length=length + 2 * steps + 8, invalid_slices=[slice(EOS, EOS + 1)], seed=0,
                                **SAMPLED)  # cli_demo's settings: the sampling a user gets
            decoder = Decoder(model, [Request(prompt, image, sampling)], None)
            decoder.step()
            grow(decoder, length)
            decoder.step_inputs = _labelled(decoder.step_inputs, "step_inputs")
            decoder.model = _Labelled(model)
            for _ in range(2):  # warm: first use of these shapes
                decoder.step()
            plain = []
            for _ in range(steps):  # unprofiled step times, the reference for the shares
                t = _now()
                decoder.step()
                plain.append(_now() - t)
            cache = decoder.past[0][0].shape[0]
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
                t = _now()
                for _ in range(steps):
                    decoder.step()
                profiled_step = (_now() - t) / steps
            events = prof.events()
            labels = {name: sum(e.cpu_time_total for e in events if e.name == name) / 1e6 / steps
                      for name in ("model", "step_inputs", "sampling")}
            ops = classify(events, cache, steps)
            ops["groups"] = {k: v / steps for k, v in ops["groups"].items()}
            ops["kv_cats"] /= steps
            ops["top_ops"] = [(name, t / steps) for name, t in ops["top_ops"]]
            alone = time_kv_cat(decoder.past, 20)
            # the cat's memory traffic (reads the old cache, writes the new one) against the weights' per step: on
            # a bandwidth-bound decode the share it can take, independent of how loaded the machine is
            cat_bytes = 2 * sum(t.numel() * t.element_size() for kv in decoder.past for t in kv)
            cat = alone["cat"]
            step_s = statistics.median(plain)
            out["lengths"][str(length)] = {
                "cache_positions": cache, "step_s": step_s, "labels_s": labels, "ops_s": ops,
                "profiled_step_s": profiled_step,
                "not_in_any_op_s": profiled_step - sum(ops["groups"].values()),
                "kv_cat_alone_s": cat, "kv_cat_share_of_step": cat / step_s, "kv_cat_bytes": cat_bytes,
                "kv_cat_share_of_traffic": cat_bytes / (cat_bytes + weight_bytes),
                "sat_expand_copy_alone_s": alone["expand_copy"],
                "sat_expand_copy_share_of_step": alone["expand_copy"] / step_s,
                "kv_cat_share_in_profile": ops["groups"]["kv_cache_cat"] / max(
                    sum(ops["groups"].values()), 1e-12)}
            say(f"length {length}: step {step_s * 1e3:.1f} ms; key/value cat alone {cat * 1e3:.2f} ms "
                f"({cat / step_s:.1%}), SAT's expand().contiguous() alone {alone['expand_copy'] * 1e3:.2f} ms "
                f"({alone['expand_copy'] / step_s:.1%}); profile groups (ms/step) "
                + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in ops["groups"].items())
                + "; labels (ms/step) " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in labels.items()))
            del decoder
    finally:
        generate.pick_rows = original_pick
    return out


def time_kv_cat(past, repeats: int) -> dict:
    """Seconds per step, best of ``repeats``, without the profiler, at the cache's current shapes and for every
    layer: ``cat``, SAT's ``torch.cat((past_key, key_layer), dim=0)`` and the same for values; ``expand_copy``, SAT
    attention_fn_default's ``.unsqueeze(2).expand(...).contiguous()`` of the permuted keys and values."""
    import torch

    new = [tuple(t[-1:].clone() for t in kv) for kv in past]
    best = {"cat": float("inf"), "expand_copy": float("inf")}
    for _ in range(repeats + 1):
        t = _now()
        for (k, v), (k1, v1) in zip(past, new):
            torch.cat((k, k1), dim=0)
            torch.cat((v, v1), dim=0)
        best["cat"] = min(best["cat"], _now() - t)
        t = _now()
        for k, v in past:
            for x in (k, v):
                x = x.permute(1, 2, 0, 3)  # [b, heads, positions, dim], as ChatGLM's attention hands it on
                x.unsqueeze(2).expand(-1, -1, 1, -1, -1).contiguous()
        best["expand_copy"] = min(best["expand_copy"], _now() - t)
    return best


def child_main(argv: list[str]) -> None:
    global DTYPE_NAME
    spec = json.loads(argv[0])
    DTYPE_NAME = spec.get("dtype", "fp16")
    _child_setup()
    if spec["what"] == "compare":
        result = child_compare(Path(spec["folder"]), Path(spec["upstream"]) if spec["upstream"] else None,
                               spec["tokens"], spec["rounds"], spec["modes"])
    else:
        result = child_profile(Path(spec["folder"]), spec["lengths"], spec["steps"])
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
# the parent

def run_child(spec: dict, env: dict) -> dict:
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], env=env,
                       stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_decode: the {spec['what']} child failed (exit {r.returncode}); its stderr is above")
    return json.loads(r.stdout.strip().splitlines()[-1])


def summarise(child: dict) -> dict:
    """Medians per side and mode, the porter/upstream ratio, and whether greedy tokens agree."""
    out = {}
    for mode, sides in child["runs"].items():
        row: dict = {}
        for side, runs in sides.items():
            if runs:
                rates = [r["tokens_per_s"] for r in runs]
                row[side] = {"tokens_per_s_median": statistics.median(rates), "tokens_per_s": rates,
                             "prefill_s_median": statistics.median(r["prefill_s"] for r in runs)}
        if "porter" in row and "upstream" in row:
            row["ratio_porter_over_upstream"] = (row["porter"]["tokens_per_s_median"]
                                                 / row["upstream"]["tokens_per_s_median"])
            # each round's two runs are adjacent in time: their ratio is less exposed to the machine's load
            # drifting between rounds than the ratio of the medians
            pairs = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(sides["porter"], sides["upstream"])]
            row["ratio_per_round"] = pairs
            row["ratio_median_of_rounds"] = statistics.median(pairs)
            if mode == "greedy":
                a, b = sides["porter"][0]["tokens"], sides["upstream"][0]["tokens"]
                same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
                row["greedy_tokens_equal_prefix"] = same
                row["greedy_tokens"] = {"porter": a, "upstream": b}
        out[mode] = row
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", default=["small", "mid"], choices=("small", "mid"))
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer (N; N - 1 are timed)")
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds per sampling mode")
    parser.add_argument("--modes", nargs="+", default=["greedy", "sampled"], choices=("greedy", "sampled"))
    parser.add_argument("--mid-layers", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="*", default=[100, 500, 1000],
                        help="cache lengths the profile runs at (none: no profile)")
    parser.add_argument("--profile-steps", type=int, default=6)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16",
                        help="both sides' dtype: fp16 (default: upstream's own, fp16=True) or fp32 (porter's CPU "
                             "default; upstream then loads with fp16=False)")
    args = parser.parse_args()
    if args.child:
        child_main([args.child])
        return {}
    import torch
    from _shared import bandwidth, save

    checkout, why = upstream_checkout()
    if args.dtype != "fp16" and not why:  # upstream's model/chat.py casts the image to torch.float16 itself
        checkout, why = None, f"upstream's chat() runs in fp16 only (it casts the image to fp16): not at --dtype {args.dtype}"
    if why:
        print(f"upstream comparison skipped: {why}", flush=True)
    threads = torch.get_num_threads()
    result: dict = {"machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": threads, "dtype": DTYPES[args.dtype], "tokens": args.tokens, "rounds": args.rounds,
                    "upstream": str(checkout) if checkout else None, "upstream_skipped": why,
                    "command": " ".join([sys.executable, *sys.argv]), "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, **hf_environment(tmp_path), "PYTHONPATH": os.pathsep.join(
            [str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), "PYTHONDONTWRITEBYTECODE": "1"}
        folders = {}
        if "small" in args.models:
            folders["small"] = small_folder()
        if "mid" in args.models or args.lengths:
            folders["mid"] = mid_folder(args.mid_layers)
        for name in args.models:
            config = mid_config(args.mid_layers) if name == "mid" else None
            before = bandwidth(threads)
            child = run_child({"what": "compare", "folder": str(folders[name]),
                               "upstream": str(checkout) if checkout else "", "tokens": args.tokens,
                               "rounds": args.rounds, "modes": args.modes, "dtype": args.dtype}, env)
            after = bandwidth(threads)
            best = max(before["bytes_per_s"], after["bytes_per_s"])
            entry = {"child": child, "summary": summarise(child), "bandwidth": [before, after]}
            if config is not None:
                entry["parameters_in_file"] = parameter_count(config)
            porter_greedy = entry["summary"].get("greedy", {}).get("porter")
            if porter_greedy:
                rate = porter_greedy["tokens_per_s_median"]
                entry["bandwidth_share"] = rate * child["bytes_per_token"] / best
            result["models"][name] = entry
            _print_model(name, entry, best)
        if args.lengths:
            result["profile"] = run_child({"what": "profile", "folder": str(folders["mid"]), "lengths": args.lengths,
                                           "steps": args.profile_steps, "dtype": args.dtype}, env)
    result["goals"] = {"porter / upstream decode": ">= 1.5", "mid-size decode": ">= 50% of bandwidth"}
    path = save("decode" if args.dtype == "fp16" else f"decode_{args.dtype}", result)
    print(f"wrote {path}")
    return result


def _print_model(name: str, entry: dict, best: float) -> None:
    child = entry["child"]
    print(f"{name}: {child['parameters'] / 1e9:.2f}e9 parameters, {child['bytes_per_token'] / 1e9:.2f} GB read per "
          f"token, prompt {child['prompt_tokens']} tokens, peak RssAnon {child['peak_anon_bytes'] / 2**30:.1f} GiB",
          flush=True)
    for mode, row in entry["summary"].items():
        parts = [f"{side} {row[side]['tokens_per_s_median']:.2f} tokens/s" for side in ("porter", "upstream")
                 if side in row]
        if "ratio_porter_over_upstream" in row:
            parts.append(f"ratio {row['ratio_porter_over_upstream']:.2f}x (median of the rounds' ratios "
                         f"{row['ratio_median_of_rounds']:.2f}x)")
        if "greedy_tokens_equal_prefix" in row:
            parts.append(f"greedy tokens equal for the first {row['greedy_tokens_equal_prefix']}")
        print(f"  {mode}: " + ", ".join(parts), flush=True)
    if "bandwidth_share" in entry:
        print(f"  porter greedy: {entry['bandwidth_share']:.0%} of {best / 1e9:.1f} GB/s", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
