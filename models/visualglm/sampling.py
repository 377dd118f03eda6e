"""The order training reads samples in: shuffled epochs, split across the workers, resumable at any step.

SAT's training_main wraps every training set in ``RandomMappingDataset``, which maps each index to a random
sample, drawn with replacement. On a large set that is as good as epochs; on the few hundred samples a
few-shot fine-tune has, some samples are seen three times as often as others in a run, and the shipped
shapes set ends at twice the loss and half the shape accuracy (``benchmarks/sweep_demo.py``, rows
``--sat-sampling`` and ``--replacement``). :class:`EpochBatches` is what ``--sampling epochs`` feeds
training_main's forward step instead: every sample once per epoch, a fresh order each epoch.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(size)`` that epoch ``epoch`` reads; the same on every worker and every run."""
    return np.random.default_rng([seed, epoch]).permutation(size)


class EpochBatches(Iterator[Any]):
    """One worker's micro-batches of the global sample stream.

    The stream is epoch 0's order, then epoch 1's, and so on; global micro-batch ``m`` is stream positions
    ``m * batch_size * world`` onwards, and worker ``rank`` takes its ``batch_size`` slice of it, as SAT's
    ``DistributedBatchSampler`` splits a global batch. A batch may straddle two epochs. ``start`` is the first
    global micro-batch to read: a run resumed at optimizer step ``s`` with ``grad_accum`` micro-batches per step
    starts at ``s * grad_accum`` and reads what the uninterrupted run would have read.
    """

    def __init__(self, dataset, batch_size: int, collate: Callable[[list], Any], *, rank: int = 0, world: int = 1,
                 seed: int = 0, start: int = 0):
        if not len(dataset):
            raise ValueError("EpochBatches needs at least one sample")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.rank, self.world, self.seed = rank, world, seed
        self.micro_batch = start
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def indices(self, micro_batch: int) -> list[int]:
        """The sample indices this worker reads for global micro-batch ``micro_batch``."""
        first = (micro_batch * self.world + self.rank) * self.batch_size
        return [self._sample_at(position) for position in range(first, first + self.batch_size)]

    def _sample_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._epoch:  # positions are read in order, so this is once per epoch
            self._epoch, self._order = epoch, epoch_order(len(self.dataset), self.seed, epoch)
        return int(self._order[offset])

    def __next__(self):
        batch = self.collate([self.dataset[i] for i in self.indices(self.micro_batch)])
        self.micro_batch += 1
        return batch
