"""Tests of engine/data/gpu_cache.py on the CPU device: exact equality with the path it decodes
with, decoding once, reuse across cells, on-device augmentation, bad images and the cache's bound."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from engine.config import DataConfig
from engine.data import gpu_cache
from engine.data.dataset_index import SPLITS
from engine.data.gpu_cache import build_gpu_cache_loaders, clear_gpu_cache
from engine.data.images import BadImageError
from engine.data.loaders import build_loaders, choose_loader
from engine.data.sources import load_index
from engine.data.synthetic import make_demo_dataset
from tests.engine.data.test_dali import DALI_MARKS

CPU = torch.device("cpu")
VIEWS = ("val", "test", "train_in_order", "train")
# On-device flip + grid_sample rotation vs torchvision's PIL rotate of the same crops with the same
# draws: measured at most 4.1 levels mean per image (0.0 to 120 at single border pixels, where PIL
# and grid_sample treat the black fill differently); an unaugmented image differs by far more.
AUGMENT_MEAN_LEVELS = 6.0


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_gpu_cache()
    yield
    clear_gpu_cache()


def _cfg(path, **overrides) -> DataConfig:
    values = dict(path=str(path), resize=36, crop=32, train_batch_size=8, eval_batch_size=8, num_workers=0,
                  loader="torchvision")  # the reference path; tests of other backends say so
    return DataConfig(**{**values, **overrides})


def _epoch(batches, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    batches.set_epoch(epoch)
    got = list(batches)
    return torch.cat([b.images for b in got]), torch.cat([b.labels for b in got])


def _mean_levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b).abs() * torch.tensor(DataConfig.std).view(1, 3, 1, 1) * 255).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("inner", ["pil", pytest.param("dali", marks=DALI_MARKS)])
def test_gpu_cache_equals_the_uncached_path_it_decodes_with_exactly(split_folder, inner):
    # inner='pil' decodes exactly as the torchvision backend; inner='dali' as the DALI backend.
    cfg = _cfg(split_folder)
    index = load_index(cfg)
    uncached = build_loaders(index, _cfg(split_folder, loader="torchvision" if inner == "pil" else "dali"), 684, CPU)
    cached = build_gpu_cache_loaders(index, cfg, 684, CPU, inner=inner)
    for view in VIEWS:
        for epoch in (0, 1, 2):  # epoch 0 fills the cache, later ones read it
            images, labels = _epoch(getattr(cached, view), epoch)
            expected_images, expected_labels = _epoch(getattr(uncached, view), epoch)
            assert torch.equal(labels, expected_labels)
            assert torch.equal(images, expected_images)
            assert images.is_contiguous(memory_format=torch.channels_last)


def test_gpu_cache_decodes_each_sample_once_and_the_next_cell_reuses_it(split_folder):
    cfg = _cfg(split_folder)
    index = load_index(cfg)
    first = build_gpu_cache_loaders(index, cfg, 684, CPU, inner="pil")
    cache = first.train.decoder
    _epoch(first.train, 0)
    assert cache.decoded == first.train.num_samples
    _epoch(first.train, 1)
    _epoch(first.train_in_order, 0)
    assert cache.decoded == first.train.num_samples  # later epochs only index
    next_cell = build_gpu_cache_loaders(index, cfg, 559, CPU, inner="pil")
    assert next_cell.train.decoder is cache and next_cell.val.decoder is first.val.decoder
    assert torch.equal(_epoch(next_cell.train_in_order, 0)[0], _epoch(first.train_in_order, 0)[0])
    assert cache.decoded == first.train.num_samples
    other_crop = build_gpu_cache_loaders(index, _cfg(split_folder, crop=28), 684, CPU, inner="pil")
    assert other_crop.train.decoder is not cache  # the transform is part of the key
    clear_gpu_cache()
    assert build_gpu_cache_loaders(index, cfg, 684, CPU, inner="pil").train.decoder is not cache


def test_gpu_cache_augments_on_the_device_with_the_torchvision_draws(split_folder):
    cfg = _cfg(split_folder, augment=True)
    index = load_index(cfg)
    reference = build_loaders(index, cfg, 684, CPU)
    cached = build_gpu_cache_loaders(index, cfg, 684, CPU, inner="pil")
    plain = build_gpu_cache_loaders(index, _cfg(split_folder), 684, CPU, inner="pil")
    for epoch in (0, 1):
        images, labels = _epoch(cached.train, epoch)
        expected, expected_labels = _epoch(reference.train, epoch)
        assert torch.equal(labels, expected_labels)
        assert _mean_levels(images, expected).max() <= AUGMENT_MEAN_LEVELS
        assert _mean_levels(images, _epoch(plain.train, epoch)[0]).max() > AUGMENT_MEAN_LEVELS  # it did augment
        assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(_epoch(cached.train, 1)[0], images)  # a function of (seed, epoch, position)
    assert not torch.equal(_epoch(cached.train, 0)[0], images)
    assert torch.equal(_epoch(cached.val, 0)[0], _epoch(reference.val, 0)[0])  # train only


def test_gpu_cache_names_a_bad_image_every_epoch_without_decoding_it_again(tiny_image_folder):
    cfg = _cfg(tiny_image_folder.root)
    loaders = build_gpu_cache_loaders(load_index(cfg), cfg, 0, CPU, inner="pil")
    for epoch in (0, 1):
        skipped = [p for split in ("train_in_order", "val", "test") for b in getattr(loaders, split) for p in b.skipped]
        assert skipped == [str(tiny_image_folder.odd["truncated"])]
    assert sum(getattr(loaders, split).decoder.decoded for split in SPLITS) == sum(
        getattr(loaders, split).num_samples for split in SPLITS)
    error_cfg = _cfg(tiny_image_folder.root, on_bad_image="error")
    clear_gpu_cache()
    with pytest.raises(BadImageError, match="truncated.jpg"):
        loaders = build_gpu_cache_loaders(load_index(error_cfg), error_cfg, 0, CPU, inner="pil")
        for split in SPLITS:
            list(getattr(loaders, split))


def test_fits_on_device_compares_with_a_share_of_free_cuda_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    cuda = torch.device("cuda", 0)
    assert gpu_cache.fits_on_device(int(1000 * gpu_cache.FREE_MEMORY_SHARE), cuda)
    assert not gpu_cache.fits_on_device(int(1000 * gpu_cache.FREE_MEMORY_SHARE) + 1, cuda)
    assert not gpu_cache.fits_on_device(1, CPU)
    assert gpu_cache.cache_bytes(10, 224) == 10 * 224 * 224 * 3


@pytest.mark.parametrize("fits", [True, False])
def test_auto_loader_on_cuda_picks_gpu_cache_only_when_the_dataset_fits(split_folder, monkeypatch, fits):
    monkeypatch.setattr(gpu_cache, "fits_on_device", lambda nbytes, device: fits)
    monkeypatch.setattr("engine.data.dali.dali_available", lambda: True)
    cfg = _cfg(split_folder, loader="auto")
    loader, why = choose_loader(load_index(cfg), cfg, torch.device("cuda", 0))
    assert loader == ("gpu_cache" if fits else "dali") and why
    assert choose_loader(load_index(cfg), _cfg(split_folder, loader="gpu_cache"), CPU) == ("gpu_cache", "configured")


def test_gpu_cache_rejects_an_unknown_inner_decoder(split_folder):
    cfg = _cfg(split_folder)
    with pytest.raises(ValueError, match="inner decoder"):
        build_gpu_cache_loaders(load_index(cfg), cfg, 0, CPU, inner="nvjpeg")


@pytest.fixture
def four_datasets(tmp_path):
    """Four small unsplit image folders (6 images each, so each split has at least one)."""
    return [make_demo_dataset(tmp_path / f"d{i}", classes=2, per_class=3, size=32, seed=i) for i in range(4)]


def _use(root) -> object:
    """Builds a cell's gpu_cache loaders for `root` and reads one epoch of each split (fills the cache)."""
    cfg = _cfg(root, resize=32, crop=32)
    loaders = build_gpu_cache_loaders(load_index(cfg), cfg, 0, CPU, inner="pil")
    for view in ("train", "val", "test"):
        _epoch(getattr(loaders, view), 0)
    return loaders


@pytest.mark.parametrize("bound", [1, 2])
def test_gpu_cache_holds_at_most_the_bound_of_datasets_least_recently_used_forgotten(four_datasets, monkeypatch,
                                                                                      bound):
    monkeypatch.setattr(gpu_cache, "MAX_CACHED_DATASETS", bound)
    order = [0, 1, 0, 2, 3, 2, 1]  # revisits: a dataset used again is the most recent one again
    recent: list[str] = []  # the reference: roots by last use, most recent last
    for i in order:
        root = str(four_datasets[i])
        _use(root)
        recent = [r for r in recent if r != root] + [root]
        assert gpu_cache.cached_roots() == recent[-bound:]
        assert {key[0] for key in gpu_cache._CACHES} == set(recent[-bound:])
        assert len(gpu_cache._CACHES) == len(SPLITS) * min(bound, len(recent))


def test_gpu_cache_reuses_a_dataset_still_within_the_bound(four_datasets, monkeypatch):
    monkeypatch.setattr(gpu_cache, "MAX_CACHED_DATASETS", 2)
    first = _use(four_datasets[0]).train.decoder
    second = _use(four_datasets[1]).train.decoder
    assert _use(four_datasets[0]).train.decoder is first  # kept: no decoding again
    decoded = first.decoded
    _use(four_datasets[2])  # forgets dataset 1, the least recently used
    assert _use(four_datasets[0]).train.decoder is first and first.decoded == decoded
    again = _use(four_datasets[1]).train.decoder
    assert again is not second and again.decoded == second.decoded  # decoded again from scratch


def test_release_dataset_forgets_its_splits_and_frees_their_images(four_datasets):
    loaders = _use(four_datasets[0])
    _use(four_datasets[1])
    stored = weakref.ref(loaders.train.decoder.storage)
    del loaders
    gc.collect()
    assert stored() is not None  # the cache alone keeps the decoded images alive
    assert gpu_cache.release_dataset(f"{four_datasets[0]}/.") == len(SPLITS)  # another spelling of the root
    gc.collect()
    assert stored() is None
    assert gpu_cache.cached_roots() == [str(four_datasets[1])]
    assert gpu_cache.release_dataset(str(four_datasets[0])) == 0  # nothing left to forget
    assert gpu_cache.release_dataset(str(four_datasets[1])) == len(SPLITS) and not gpu_cache._CACHES
