"""Tests of engine/data/sharding.py and of sharded loaders: every rank's share, for each backend."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import DataConfig
from engine.data.loaders import build_loaders
from engine.data.sharding import epoch_order, launcher_shard, shard_batches
from engine.data.sources import load_index
from tests.engine.data.test_dali import DALI_MARKS

CPU = torch.device("cpu")
WORLDS = (1, 2, 3)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("num_samples", [23, 25, 7])
def test_shard_batches_eval_shards_cover_every_sample_once(num_samples, world):
    seen = [p for rank in range(world) for b in shard_batches(num_samples, 0, 3, 4, False, (rank, world)) for p in b]
    assert sorted(seen) == list(range(num_samples))


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("num_samples", [23, 25, 50, 13])
def test_shard_batches_train_shards_are_disjoint_cover_the_epoch_and_run_equal_steps(num_samples, world):
    batch_size, seed, epoch = 4, 684, 2
    shards = [shard_batches(num_samples, seed, epoch, batch_size, True, (rank, world)) for rank in range(world)]
    seen = np.concatenate([b for shard in shards for b in shard])
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    permutation = epoch_order(num_samples, seed, epoch, batch_size * world, shuffle=True)
    assert set(seen.tolist()) <= set(permutation.tolist())
    assert len(permutation) - len(seen) < 2 * world  # only a tail too short for every rank is left out
    assert len({len(shard) for shard in shards}) == 1  # every rank runs the same number of steps
    assert all(2 <= len(b) <= batch_size for shard in shards for b in shard)


@pytest.mark.parametrize("num_samples", [23, 25, 24])
def test_shard_batches_with_one_process_are_the_unsharded_batches(num_samples):
    for shuffle in (False, True):
        order = epoch_order(num_samples, 5, 1, 8, shuffle)
        expected = [order[i:i + 8].tolist() for i in range(0, len(order), 8)]
        assert [b.tolist() for b in shard_batches(num_samples, 5, 1, 8, shuffle)] == expected


def test_shard_batches_train_order_changes_with_the_epoch_only():
    first = [b.tolist() for b in shard_batches(23, 1, 0, 4, True, (1, 2))]
    assert first == [b.tolist() for b in shard_batches(23, 1, 0, 4, True, (1, 2))]
    assert first != [b.tolist() for b in shard_batches(23, 1, 1, 4, True, (1, 2))]


def test_launcher_shard_reads_rank_and_world_size():
    assert launcher_shard({}) == (0, 1)
    assert launcher_shard({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        launcher_shard({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK/WORLD_SIZE"):
        launcher_shard({"RANK": "3", "WORLD_SIZE": "3"})


def test_build_loaders_rejects_a_bad_shard(make_npz):
    cfg = DataConfig(path=str(make_npz()), resize=16, crop=16, num_workers=0)
    with pytest.raises(ValueError, match="shard must be"):
        build_loaders(load_index(cfg), cfg, 0, CPU, shard=(2, 2))


def _sample_ids(batches) -> list[int]:
    """Which npz rows a loader yielded: rows 0 and 1 of each fixture image encode its number."""
    ids = []
    for batch in batches:
        mean = torch.tensor(DataConfig.mean).view(1, 3, 1, 1)
        std = torch.tensor(DataConfig.std).view(1, 3, 1, 1)
        pixels = torch.round((batch.images.float() * std + mean) * 255)
        ids.extend((pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 1, 0]).long().tolist())
    return ids


# 'gpu_cache' decodes with PIL when DALI is absent, so it runs everywhere.
BACKENDS = ["torchvision", pytest.param("dali", marks=DALI_MARKS), "gpu_cache"]


@pytest.mark.parametrize("loader", BACKENDS)
@pytest.mark.parametrize("world", WORLDS)
def test_sharded_loaders_cover_each_eval_split_once_and_the_train_epoch_disjointly(make_npz, loader, world):
    # 25 train, 7 val, 7 test samples: no world size here divides them.
    cfg = DataConfig(path=str(make_npz(sizes=(25, 7, 7))), resize=16, crop=16, num_workers=0,
                     train_batch_size=4, eval_batch_size=3, loader=loader)
    index = load_index(cfg)
    ranks = [build_loaders(index, cfg, 684, CPU, shard=(rank, world)) for rank in range(world)]
    for split, offset in (("val", 1000), ("test", 2000)):
        seen = [i for loaders in ranks for i in _sample_ids(getattr(loaders, split))]
        assert sorted(seen) == [offset + i for i in range(len(index.splits[split]))]
    for loaders in ranks:  # every rank's LP feature cache needs the whole train split
        assert _sample_ids(loaders.train_in_order) == list(range(25))
    for epoch in (0, 1):
        for loaders in ranks:
            loaders.train.set_epoch(epoch)
        shards = [_sample_ids(loaders.train) for loaders in ranks]
        seen = [i for shard in shards for i in shard]
        assert len(set(seen)) == len(seen)
        assert len(seen) > 25 - 2 * world
        assert len({len(loaders.train) for loaders in ranks}) == 1
