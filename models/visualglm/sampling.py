"""The order training reads samples in: shuffled epochs, split across the workers, resumable at any step.

SAT's training_main wraps every training set in ``RandomMappingDataset``, which maps each index to a random
sample, drawn with replacement. On a large set that is as good as epochs; on the few hundred samples a
few-shot fine-tune has, some samples are seen three times as often as others in a run, and the shipped
shapes set ends at twice the loss and half the shape accuracy (``benchmarks/sweep_demo.py``, rows
``--sat-sampling`` and ``--replacement``). :class:`EpochBatches` is what ``--sampling epochs`` feeds
training_main's forward step instead: every sample once per epoch, a fresh order each epoch.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from porter.recipes import atomic_write


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(size)`` that epoch ``epoch`` reads; the same on every worker and every run."""
    return np.random.default_rng([seed, epoch]).permutation(size)


class EpochBatches(Iterator[Any]):
    """One worker's micro-batches of the global sample stream.

    The stream is epoch 0's order, then epoch 1's, and so on. Each global micro-batch is the next
    ``batch_size * world`` positions, and worker ``rank`` takes its ``batch_size`` slice of it, as SAT's
    ``DistributedBatchSampler`` splits a global batch; a batch may straddle two epochs. ``position`` is where in
    the stream the next global micro-batch starts: a resumed run starts where the run before stopped reading
    (``samples_read``), and so reads what the uninterrupted run would have read.
    """

    def __init__(self, dataset, batch_size: int, collate: Callable[[list], Any], *, rank: int = 0, world: int = 1,
                 seed: int = 0, position: int = 0):
        if not len(dataset):
            raise ValueError("EpochBatches needs at least one sample")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.rank, self.world, self.seed = rank, world, seed
        self.position = position
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def indices(self, position: int) -> list[int]:
        """The sample indices this worker reads for the global micro-batch that starts at stream ``position``."""
        first = position + self.rank * self.batch_size
        return [self._sample_at(p) for p in range(first, first + self.batch_size)]

    def _sample_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._epoch:  # positions are read in order, so this is once per epoch
            self._epoch, self._order = epoch, epoch_order(len(self.dataset), self.seed, epoch)
        return int(self._order[offset])

    def __next__(self):
        batch = self.collate([self.dataset[i] for i in self.indices(self.position)])
        self.position += self.batch_size * self.world
        return batch


def samples_read(stretches: list[dict], step: int, samples_per_step: int) -> int:
    """How far into the sample stream a run got before optimizer step ``step`` (counting from 0).

    ``stretches`` are the run's starts so far, each ``{"from_step", "samples_per_step"}`` (a resumed run may have
    other --batch-size, --npus or --grad-accum than the one before); steps before the first recorded one are
    taken at ``samples_per_step`` (a run folder from before porter kept this record). A step SAT skips for a
    non-finite loss is counted in full, though it read only one micro-batch: after one, a resumed run reads on
    from a slightly later place than the uninterrupted run would have.
    """
    read, at = 0, 0
    for stretch in sorted((s for s in stretches if s["from_step"] < step), key=lambda s: s["from_step"]):
        read += (stretch["from_step"] - at) * samples_per_step
        at, samples_per_step = stretch["from_step"], stretch["samples_per_step"]
    return read + (step - at) * samples_per_step


def resume_position(run_dir: Path, step: int, samples_per_step: int, *, seed: int, samples: int,
                    write: bool) -> int:
    """Where in the sample stream a run that starts at optimizer ``step`` reads on, from the record of its
    starts in ``run_dir/sampling.json``; with ``write`` (rank 0 only) this start is added to the record, and
    stretches at or after ``step`` (steps a resume from an earlier checkpoint does again) are dropped. The other
    ranks may read while rank 0 writes: the file is replaced whole, and what it adds is never read here."""
    path = Path(run_dir) / "sampling.json"
    stretches = json.loads(path.read_text())["stretches"] if path.exists() else []
    position = samples_read(stretches, step, samples_per_step)
    if write:
        kept = [s for s in stretches if s["from_step"] < step]
        record = {"stretches": kept + [{"from_step": step, "samples_per_step": samples_per_step, "seed": seed,
                                        "samples": samples}]}
        atomic_write(path, (json.dumps(record, indent=2) + "\n").encode())
    return position
