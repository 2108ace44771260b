"""Tests of engine/data/loaders.py: tensors, order, reproducibility and bad images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision import transforms

from engine.config import DataConfig
from engine.data.batches import Batch
from engine.data.dataset_index import SPLITS
from engine.data.images import BadImageError, open_rgb
from engine.data.loaders import build_loaders
from engine.data.sources import load_index

CPU = torch.device("cpu")


def _cfg(path, **overrides) -> DataConfig:
    values = dict(path=str(path), resize=36, crop=32, train_batch_size=8, eval_batch_size=8, num_workers=0,
                  loader="torchvision")  # the reference path; tests of other backends say so
    return DataConfig(**{**values, **overrides})


def _loaders(path, seed=684, **overrides):
    cfg = _cfg(path, **overrides)
    return build_loaders(load_index(cfg), cfg, seed, CPU)


def _epoch(batches, epoch) -> tuple[torch.Tensor, torch.Tensor]:
    batches.set_epoch(epoch)
    got = list(batches)
    assert all(isinstance(b, Batch) for b in got)
    return torch.cat([b.images for b in got]), torch.cat([b.labels for b in got])


def test_build_loaders_yields_normalised_crops_matching_the_protocol_transform(split_folder):
    cfg = _cfg(split_folder)
    index = load_index(cfg)
    loaders = build_loaders(index, cfg, 0, CPU)
    batch = next(iter(loaders.val))
    assert batch.images.shape == (8, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.labels.dtype == torch.int64 and batch.skipped == ()
    reference = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor(),
                                    transforms.Normalize(cfg.mean, cfg.std)])
    for row in (0, 7):
        expected = reference(open_rgb(index.splits["val"][row].source))
        assert torch.equal(batch.images[row], expected)
    assert batch.images.min() < 0 < batch.images.max()  # normalised, not in [0, 1]


def test_build_loaders_val_and_test_cover_every_sample_once_in_order(split_folder):
    index = load_index(_cfg(split_folder))
    loaders = _loaders(split_folder, eval_batch_size=4)
    for split in ("val", "test"):
        batches = getattr(loaders, split)
        images, labels = _epoch(batches, epoch=3)
        assert labels.tolist() == [s.label for s in index.splits[split]]
        assert batches.num_samples == len(index.splits[split]) == len(images)
        assert len(batches) == math.ceil(len(index.splits[split]) / 4)
        assert torch.equal(images, _epoch(batches, epoch=4)[0])  # never shuffled


@pytest.mark.parametrize("augment", [False, True])
def test_build_loaders_train_order_is_a_function_of_seed_and_epoch(split_folder, augment):
    first, again = _loaders(split_folder, augment=augment), _loaders(split_folder, augment=augment)
    epoch1, labels1 = _epoch(first.train, 1)
    assert torch.equal(epoch1, _epoch(again.train, 1)[0])
    assert not torch.equal(epoch1, _epoch(first.train, 2)[0])
    assert not torch.equal(epoch1, _epoch(_loaders(split_folder, seed=685, augment=augment).train, 1)[0])
    assert len(labels1) == first.train.num_samples == 42  # every train sample, once
    torch.manual_seed(0)
    assert torch.equal(epoch1, _epoch(again.train, 1)[0])  # global RNG state plays no part


def test_build_loaders_with_two_workers_gives_the_same_batches(split_folder):
    in_process = _loaders(split_folder, augment=True)
    workers = _loaders(split_folder, augment=True, num_workers=2)
    for epoch in (0, 1):
        assert torch.equal(_epoch(in_process.train, epoch)[0], _epoch(workers.train, epoch)[0])
    assert torch.equal(_epoch(in_process.val, 0)[0], _epoch(workers.val, 0)[0])


def test_build_loaders_leaves_global_rng_state_alone(split_folder):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    loaders = _loaders(split_folder, augment=True)
    _epoch(loaders.train, 0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_build_loaders_augments_train_only(split_folder):
    plain, augmented = _loaders(split_folder), _loaders(split_folder, augment=True)
    assert not torch.equal(_epoch(plain.train, 0)[0], _epoch(augmented.train, 0)[0])
    assert torch.equal(_epoch(plain.val, 0)[0], _epoch(augmented.val, 0)[0])


def test_build_loaders_redraws_augmentation_each_epoch(split_folder):
    plain, augmented = _loaders(split_folder), _loaders(split_folder, augment=True, num_workers=2)
    plain0, plain1 = _epoch(plain.train, 0)[0], _epoch(plain.train, 1)[0]
    aug0, aug1 = _epoch(augmented.train, 0)[0], _epoch(augmented.train, 1)[0]
    # Augmentation does not change the order, so the plain images tell where each sample went.
    was_at = [next(j for j in range(len(plain0)) if torch.equal(plain1[i], plain0[j])) for i in range(len(plain1))]
    assert not any(torch.equal(aug1[i], aug0[j]) for i, j in enumerate(was_at))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_build_loaders_skips_and_reports_bad_images_by_path(tiny_image_folder, num_workers):
    loaders = _loaders(tiny_image_folder.root, eval_batch_size=1, train_batch_size=1, num_workers=num_workers)
    skipped, rows, empty_batches = [], 0, 0
    for split in SPLITS:
        for batch in getattr(loaders, split):
            skipped.extend(batch.skipped)
            rows += len(batch.labels)
            empty_batches += len(batch.labels) == 0
            assert batch.images.shape[0] == len(batch.labels)
    assert skipped == [str(tiny_image_folder.odd["truncated"])]
    assert empty_batches == 1  # batch size 1: the bad image's batch has no rows
    assert rows == sum(getattr(loaders, s).num_samples for s in SPLITS) - 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_build_loaders_raises_naming_the_file_when_on_bad_image_is_error(tiny_image_folder, num_workers):
    loaders = _loaders(tiny_image_folder.root, on_bad_image="error", num_workers=num_workers)
    with pytest.raises(BadImageError, match="truncated.jpg"):
        for split in SPLITS:
            list(getattr(loaders, split))


def test_build_loaders_reads_npz_grayscale_as_three_equal_channels(make_npz):
    loaders = _loaders(make_npz(), resize=16, crop=16)
    batch = next(iter(loaders.test))
    assert batch.images.shape == (6, 3, 16, 16)
    assert batch.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # Normalisation differs per channel, so undo it before comparing the channels.
    mean, std = torch.tensor(DataConfig.mean)[:, None, None], torch.tensor(DataConfig.std)[:, None, None]
    pixels = batch.images * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])  # float round trip: default tolerance


def test_build_loaders_rejects_unknown_backend(split_folder):
    with pytest.raises(ValueError, match="data.loader='pillow' is not a backend"):
        _loaders(split_folder, loader="pillow")


def test_build_loaders_rejects_crop_larger_than_resize(split_folder):
    with pytest.raises(ValueError, match="data.crop"):
        _loaders(split_folder, resize=32, crop=40)
