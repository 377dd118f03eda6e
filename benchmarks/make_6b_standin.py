"""A stand-in for the released VisualGLM-6B checkpoint: the release's exact layout with random weights, for benchmarks
(quantized loading, memory, speed) on a machine without the real 15.6 GB download.

    nice .venv/bin/python benchmarks/make_6b_standin.py [--force] [--out FOLDER]   # ~15.6 GB, minutes
    .venv/bin/python benchmarks/make_6b_standin.py --tiny                            # same structure, tiny sizes

The layout comes from ``porter_visualglm.release`` (models/visualglm/release.py), which wrote it down from
THUDM/VisualGLM-6B (model/visualglm.py, model/blip2.py) and THUDM/SwissArmyTransformer 0.3.6 (parameter naming,
the stale ``transformer.position_embeddings.weight``, the saved rotary ``inv_freq``): ``latest`` = "1",
``model_config.json`` = ``release_config()``, ``1/mp_rank_00_model_states.pt`` = ``{"module": state_dict,
"iteration": 1}`` (as ``make_release_folder`` saves it) with every key and shape of ``release_keys(config)`` in fp16.

Weights: every row (first dimension) is Student-t (df 3, 4 or 5, drawn per row) at unit variance, times a per-row
log-normal scale, so rows have outliers and unequal ranges and quantization is not trivially exact; ~0.02 std for
weights and embeddings, 1 + small for layernorm weights, small biases, ``inv_freq`` as SAT computes it. Each tensor
draws from its own generator seeded by (seed, key name), so the file is the same bytes from run to run (numpy's
Generator streams are stable within a numpy version; standin.json records it).

Streamed: values are drawn in chunks of rows and written to a scratch file; the state dict's tensors are memory maps
of that file (page cache, not anonymous memory) and torch.save reads them from there. Everything is written into a
hidden folder next to the output, which is renamed into place at the end, so an interrupted run leaves nothing that
looks like a checkpoint. A complete output (standin.json matching this generator's version, seed and key list) is
reused unless --force.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _shared import PeakAnon

VERSION = 1  # bump when the values or the file's layout change: a reused stand-in must be this generator's output
CHUNK = 1 << 22  # elements drawn at a time: ~32 MB of float64, so anonymous memory stays small
T_CLIP = 64.0  # t values are clipped at 64 std: outliers of tens of std, as real checkpoints have, and fp16-finite
STATES = "mp_rank_00_model_states.pt"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def key_list_sha(keys: dict[str, tuple]) -> str:
    return hashlib.sha256(json.dumps([[k, list(s)] for k, s in keys.items()]).encode()).hexdigest()


def _rng(seed: int, name: str) -> np.random.Generator:
    # keyed by name, not position: a tensor's values do not depend on which other keys the config has
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")])


def fill(name: str, shape: tuple[int, ...], out: np.ndarray, seed: int, config: dict) -> None:
    """Draw ``name``'s values into ``out`` (a float16 view of the scratch file), a chunk of rows at a time."""
    from porter_visualglm.release import INV_FREQ

    if name == INV_FREQ:  # SAT's rotary buffer: 1 / 10000^(2i / d) over half a head's dimensions
        head = config["hidden_size"] // config["num_attention_heads"] // 2
        out[:] = 1.0 / (10000 ** (np.arange(0, head, 2, dtype=np.float64) / head))
        return
    rows = shape[0] if len(shape) > 1 else 1  # a 1-D tensor is one row
    cols = math.prod(shape) // rows
    flat = out.reshape(rows, cols)
    rng = _rng(seed, name)
    df = rng.integers(3, 6, size=rows).astype(np.float64)
    scale = rng.lognormal(0.0, 0.5, size=rows) / np.sqrt(df / (df - 2))  # t(df) has variance df / (df - 2)
    is_norm = len(shape) == 1 and name.endswith(("norm.weight", "ln_vision.weight"))
    scale *= 0.05 if is_norm else 0.01 if len(shape) == 1 else 0.02  # layernorm 1 +- 0.05, biases ~0.01
    step = max(1, CHUNK // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        x = rng.standard_t(df[r0:r1, None], size=(r1 - r0, cols))
        np.clip(x, -T_CLIP, T_CLIP, out=x)
        x *= scale[r0:r1, None]
        if is_norm:
            x += 1.0
        flat[r0:r1] = x  # rounds to float16


def _progress_of_file(path: Path, total: int, start: float, stop: threading.Event) -> None:
    while not stop.wait(15):  # torch.save has no progress hook: report the file's size instead
        size = path.stat().st_size if path.exists() else 0
        _say(f"  saving: {size / 1e9:.2f}/{total / 1e9:.2f} GB, {time.perf_counter() - start:.0f} s")


def generate(folder: Path, config: dict, seed: int) -> dict:
    """Write the stand-in into ``folder`` (which must not exist); returns what standin.json records."""
    import torch
    from porter_visualglm.release import release_keys

    keys = release_keys(config)
    offsets, total = {}, 0
    for name, shape in keys.items():
        offsets[name] = total
        total += -(-math.prod(shape) * 2 // 4096) * 4096  # page-aligned, so each tensor maps on its own
    (folder / "1").mkdir(parents=True)
    scratch = folder / "scratch.bin"
    start = time.perf_counter()
    with open(scratch, "wb") as fh:
        fh.truncate(total)  # sparse: written tensor by tensor through the maps below
    weights, last, written = {}, 0.0, 0
    for i, (name, shape) in enumerate(keys.items(), 1):
        # written through a shared map, then handed to torch as a private (copy-on-write) map that is only read:
        # both are page cache, file-backed, so the whole model is never in anonymous memory
        out = np.memmap(scratch, dtype=np.float16, mode="r+", offset=offsets[name], shape=shape)
        fill(name, shape, out, seed, config)
        del out  # no flush: the kernel writes the pages back while the next tensors are drawn
        weights[name] = torch.from_numpy(
            np.memmap(scratch, dtype=np.float16, mode="c", offset=offsets[name], shape=shape))
        written += math.prod(shape) * 2
        if time.perf_counter() - last > 5 or i == len(keys):
            last = time.perf_counter()
            _say(f"[{i}/{len(keys)}] {written / 1e9:.2f} GB drawn, {last - start:.0f} s  {name}")
    target = folder / "1" / STATES
    stop = threading.Event()
    reporter = threading.Thread(target=_progress_of_file, args=(target, written, start, stop), daemon=True)
    reporter.start()
    try:
        torch.save({"module": weights, "iteration": 1}, target)
    finally:
        stop.set()
    del weights
    scratch.unlink()
    _say(f"saved {target.stat().st_size / 1e9:.2f} GB, {time.perf_counter() - start:.0f} s; hashing")
    sha = hashlib.sha256()
    with open(target, "rb") as fh:
        while block := fh.read(1 << 23):
            sha.update(block)
    (folder / "latest").write_text("1")
    (folder / "model_config.json").write_text(json.dumps(config, indent=4, ensure_ascii=False))
    return {"generator": "benchmarks/make_6b_standin.py", "version": VERSION, "seed": seed,
            "keys_sha256": key_list_sha(keys), "states_bytes": target.stat().st_size, "states_sha256": sha.hexdigest(),
            "numpy": np.__version__, "torch": torch.__version__}


def is_complete(folder: Path, config: dict, seed: int) -> bool:
    from porter_visualglm.release import release_keys

    try:
        meta = json.loads((folder / "standin.json").read_text())
        config_now = json.loads((folder / "model_config.json").read_text())
        size = (folder / "1" / STATES).stat().st_size
        latest = (folder / "latest").read_text()
    except (OSError, ValueError):
        return False
    return (meta.get("version") == VERSION and meta.get("seed") == seed and config_now == config and latest == "1"
            and meta.get("keys_sha256") == key_list_sha(release_keys(config)) and meta.get("states_bytes") == size)


def make_standin(out: Path, config: dict, seed: int = 0, force: bool = False) -> Path:
    from porter_visualglm.release import release_keys

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once would remove each other's partial folder
        if not force and is_complete(out, config, seed):
            _say(f"reusing {out} (complete, version {VERSION}, seed {seed}); --force writes it again")
            return out
        if out.exists() and not (out / "standin.json").is_file():  # replaced below: only if this generator made it
            raise SystemExit(f"make_6b_standin: {out} exists and is not a stand-in this generator wrote (no "
                             f"standin.json): it is left alone; name another --out")
        partial = out.parent / f".{out.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # an interrupted run's leftovers
        need = 2 * sum(math.prod(s) * 2 for s in release_keys(config).values()) + (1 << 30)  # scratch + file + 1 GiB
        free = shutil.disk_usage(out.parent).free
        if free < need:
            raise SystemExit(f"make_6b_standin: needs {need / 1e9:.1f} GB free in {out.parent} (scratch file and "
                             f"checkpoint), has {free / 1e9:.1f} GB")
        try:
            meta = generate(partial, config, seed)
            (partial / "standin.json").write_text(json.dumps(meta, indent=1) + "\n")
            if out.exists():  # --force or an incomplete one: out of the way first, since a rename cannot replace a folder
                old = out.parent / f".{out.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                out.rename(old)
                shutil.rmtree(old)
            partial.rename(out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return out


def main() -> None:
    import torch  # noqa: F401 - imported before the memory baseline, which then measures the generation only
    from porter_visualglm.release import release_config, tiny_release_config

    from porter.diskio import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="default: <porter cache>/standins/visualglm-{6b,tiny}-fp16")
    parser.add_argument("--tiny", action="store_true", help="tiny_release_config(): same structure, seconds to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write it again even if a complete one exists")
    args = parser.parse_args()
    config = tiny_release_config() if args.tiny else release_config()
    out = args.out or cache_dir("standins") / f"visualglm-{'tiny' if args.tiny else '6b'}-fp16"
    start = time.perf_counter()
    with PeakAnon() as mem:
        folder = make_standin(out, config, args.seed, args.force)
    _say(f"{time.perf_counter() - start:.1f} s, peak RssAnon {mem.peak / 2**20:.0f} MiB "
         f"({mem.peak_above_baseline / 2**20:.0f} MiB above start), peak RssFile {mem.peak_file / 2**20:.0f} MiB")
    print(folder)


if __name__ == "__main__":
    main()
