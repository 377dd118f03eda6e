"""--sampling epochs: the workers between them read every sample once per epoch, a fresh order each epoch, and
a resumed run reads on from where it stopped."""
import json
from collections import Counter

import pytest
from porter_visualglm.sampling import EpochBatches, epoch_order, resume_position, samples_read


def batches(size=10, batch_size=3, world=2, seed=5, position=0):
    data = list(range(size))
    return [EpochBatches(data, batch_size, list, rank=r, world=world, seed=seed, position=position)
            for r in range(world)]


@pytest.mark.parametrize("size,batch_size,world", [(10, 3, 2), (12, 2, 3), (7, 4, 1), (5, 1, 4)])
def test_each_epoch_reads_every_sample_once_across_the_workers(size, batch_size, world):
    workers = batches(size, batch_size, world)
    stream = []
    for _ in range(size * 3):  # 3 epochs' worth of global micro-batches, and more
        for worker in workers:  # a global micro-batch is rank 0's slice, then rank 1's, ...
            stream += next(worker)
    for epoch in range(3):
        seen = stream[epoch * size:(epoch + 1) * size]
        assert sorted(seen) == list(range(size)), f"epoch {epoch}: {Counter(seen)}"
        assert seen == [int(i) for i in epoch_order(size, 5, epoch)]


def test_epochs_are_shuffled_afresh_and_the_seed_decides_the_order():
    orders = [tuple(epoch_order(50, 5, e)) for e in range(4)]
    assert len(set(orders)) == 4 and orders[0] != tuple(range(50))
    assert tuple(epoch_order(50, 5, 0)) == orders[0]
    assert tuple(epoch_order(50, 6, 0)) != orders[0]


def test_a_run_started_where_another_stopped_reads_what_the_uninterrupted_run_read():
    whole = batches(size=10, batch_size=3, world=2)
    for _ in range(7):
        for worker in whole:
            next(worker)
    resumed = batches(size=10, batch_size=3, world=2, position=7 * 3 * 2)
    for _ in range(9):  # across the epoch boundaries that follow
        assert [next(w) for w in resumed] == [next(w) for w in whole]
    # the same stream read by 3 workers of 2 from there on: the same samples, in the same order
    stream = [i for w in whole for i in next(w)]
    wider = batches(size=10, batch_size=2, world=3, position=whole[0].position - 6)
    assert [i for w in wider for i in next(w)] == stream


@pytest.mark.parametrize("stretches,step,per_step,read", [
    ([], 10, 8, 80),  # one start: every step at today's batch
    ([{"from_step": 0, "samples_per_step": 8}], 10, 32, 80),
    ([{"from_step": 0, "samples_per_step": 8}, {"from_step": 10, "samples_per_step": 16}], 15, 32, 160),
    ([{"from_step": 5, "samples_per_step": 16}], 7, 8, 5 * 8 + 2 * 16),  # steps before the record: today's batch
    ([{"from_step": 0, "samples_per_step": 8}, {"from_step": 12, "samples_per_step": 99}], 10, 4, 80),  # redone
])
def test_samples_read_follows_each_stretch_of_the_run(stretches, step, per_step, read):
    assert samples_read(stretches, step, per_step) == read


def test_the_record_of_starts_is_kept_in_the_run_folder(tmp_path):
    assert resume_position(tmp_path, 0, 8, seed=1, samples=10, write=True) == 0
    assert resume_position(tmp_path, 10, 16, seed=1, samples=10, write=False) == 80  # another rank reads only
    assert resume_position(tmp_path, 10, 16, seed=1, samples=10, write=True) == 80
    assert resume_position(tmp_path, 12, 16, seed=1, samples=10, write=True) == 80 + 2 * 16
    assert resume_position(tmp_path, 4, 16, seed=1, samples=10, write=True) == 32  # back to an earlier checkpoint
    record = json.loads((tmp_path / "sampling.json").read_text())
    assert [s["from_step"] for s in record["stretches"]] == [0, 4] and not list(tmp_path.glob(".*tmp"))


def test_the_batch_goes_through_the_collate_function_and_the_dataset():
    data = [{"id": i} for i in range(4)]
    worker = EpochBatches(data, 2, lambda items: tuple(item["id"] for item in items), seed=0)
    first = next(worker)
    assert isinstance(first, tuple) and len(first) == 2 and set(first) <= set(range(4))
    assert set(first) | set(next(worker)) == set(range(4))


def test_impossible_splits_are_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        EpochBatches([], 2, list)
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        EpochBatches([1], 2, list, rank=2, world=2)
