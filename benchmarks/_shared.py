"""What the benchmarks share: two copies of the installed SAT, original and patched, one way to summarise
samples, and where a result is written (``results/NAME.json``, which ``report.py`` reads)."""
from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def original_and_patched(folder: Path) -> tuple[Path, Path]:
    """Two site-packages folders in ``folder``: a copy of the installed SAT, and the same copy patched by the CLI."""
    from porter.testing import copy_distribution

    original = copy_distribution("SwissArmyTransformer", Path(folder) / "original")
    patched = Path(folder) / "patched"
    shutil.copytree(original, patched)
    subprocess.run([sys.executable, "-m", "porter.cli", "patch", "sat", "--site-packages", str(patched)],
                   check=True, capture_output=True)
    return original, patched


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


RESULTS = Path(__file__).parent / "results"


def save(name: str, result: dict) -> Path:
    """Write ``result`` to ``results/<name>.json``."""
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def bandwidth(threads: int, gib: float = 4, repeats: int = 5) -> dict:
    """Host memory bandwidth with ``threads`` torch threads: 2 x bytes / seconds of ``dst.copy_(src)`` on a ``gib`` GiB
    uint8 buffer (a copy reads and writes every byte), best of ``repeats``. Both buffers are touched first, so page
    faults are not timed; the old thread count is restored and the buffers freed afterwards."""
    import torch

    old = torch.get_num_threads()
    n = int(gib * 2**30)
    src = dst = None
    try:
        torch.set_num_threads(threads)
        src = torch.ones(n, dtype=torch.uint8)
        dst = torch.zeros(n, dtype=torch.uint8)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            dst.copy_(src)
            samples.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old)
        del src, dst
        gc.collect()
    return {"bytes_per_s": 2 * n / min(samples), "threads": threads, "buffer_bytes": n, "samples_s": samples}


def _status_kib(pid: int | str, *fields: str) -> list[int] | None:
    """``fields`` of /proc/<pid>/status in KiB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            values = dict(line.split(":", 1) for line in fh)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [int(values[f].split()[0]) if f in values else 0 for f in fields]


class PeakAnon:
    """Peak anonymous resident memory (``RssAnon``) of a process, the current one by default, sampled every 10 ms on a
    daemon thread while the ``with`` block runs: ``.baseline`` (at enter), ``.peak`` and ``.peak_above_baseline``, in
    bytes; ``.peak_file`` is the peak of ``RssFile``, for information.

    RssAnon is what a process itself allocated (heap, tensors, numpy arrays). A memory-mapped checkpoint's pages are
    file-backed (page cache): they count in RssFile, never in RssAnon, and the kernel can drop them under pressure,
    so RssAnon is the number to bound when a loader maps its file. Peaks shorter than 10 ms can be missed; a process
    that exits stops the sampling (the peak so far stays)."""

    INTERVAL_S = 0.01

    def __init__(self, pid: int | None = None):
        self.pid = pid or os.getpid()
        self.baseline = self.peak = self.peak_file = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> bool:
        values = _status_kib(self.pid, "RssAnon", "RssFile")
        if values is None:
            return False
        self.peak = max(self.peak, values[0] * 1024)
        self.peak_file = max(self.peak_file, values[1] * 1024)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S) and self._sample():
            pass

    def __enter__(self) -> PeakAnon:
        values = _status_kib(self.pid, "RssAnon", "RssFile")
        if values is None:
            raise ProcessLookupError(f"no process {self.pid}")
        self.baseline = self.peak = values[0] * 1024
        self.peak_file = values[1] * 1024
        self._thread = threading.Thread(target=self._run, name="PeakAnon", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()  # the state at exit, in case it peaked within the last interval

    @property
    def peak_above_baseline(self) -> int:
        return self.peak - self.baseline


def drop_page_cache(path: str | Path) -> bool:
    """Ask the kernel to evict ``path``'s pages from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)`` after an
    ``fsync``, since dirty pages are not dropped), so the next read comes from the disk; needs no root, unlike
    ``/proc/sys/vm/drop_caches``. True when the calls succeeded, False where they fail or the platform lacks them.

    True is not proof of eviction: DONTNEED is advice, and pages that some process still maps (this one's mmap of the
    file included) or that are under writeback stay cached. Nothing here checks (that would take ``mincore`` over a
    mapping); unmap the file first, and treat a suspiciously fast "cold" read as a warm one."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def step_bytes(model) -> int:
    """What one decode step reads, the numerator of a share of bandwidth: the language model's layers, the final
    norm, lm_head and one row of the input embedding."""
    total = 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith(("transformer.layers.", "transformer.final_layernorm")) or "lm_head" in name:
            total += t.numel() * t.element_size()
    emb = model.transformer.word_embeddings.weight
    return total + emb.shape[1] * emb.element_size()
