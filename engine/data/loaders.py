"""Batches of normalised image tensors from a DatasetIndex: the torchvision/PIL backend.

Implements the input of ../shared/spec/strategies.md (Shared protocol): Resize(resize) ->
CenterCrop(crop) -> ToTensor -> Normalize(mean, std), grayscale replicated to 3 channels (by
`images.open_rgb`), no augmentation unless `augment` (then a horizontal flip with p=0.5 and a
rotation of up to 10 degrees, on train only, after the crop).

The loop sees only the `Batches` protocol, which the DALI (`dali.py`) and GPU-cache
(`gpu_cache.py`) backends also implement; `build_loaders` picks one by `cfg.loader`.
Reproducibility does not depend on global RNG state or on the backend:
- train order is a permutation drawn from (seed, epoch);
- augmentation draws from (seed, epoch, sample position) (`augment_draw`), so it is the same
  whichever worker decodes the sample;
- DataLoader's worker base seed comes from a private generator seeded with `seed`.
So a run resumed at epoch e sees exactly the batches the uninterrupted run saw.

Sharding over several processes (`shard=(rank, world)`) is `sharding.py`'s, the same for every
backend.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from engine.config import DataConfig
from engine.data.images import BadImageError, open_rgb
from engine.data.sharding import check_shard, shard_batches
from engine.data.sources import SPLITS, DatasetIndex

LOADERS = ("auto", "torchvision", "dali", "gpu_cache")
MAX_ROTATION_DEG = 10.0  # the spec's "small rotations"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """One batch as the training loop receives it.

    Attributes:
        images: (B, 3, crop, crop), normalised with the config's mean and std: float32 on the host
            (torchvision backend), or on the device in the requested dtype with channels-last
            memory (dali, gpu_cache).
        labels: int64 (B,).
        skipped: paths of this batch's samples that failed to decode (dropped, so B may be
            smaller than the batch size, even 0: the loop skips a batch without rows).
    """

    images: torch.Tensor
    labels: torch.Tensor
    skipped: tuple[str, ...] = ()


class Batches(Protocol):
    """What the loop iterates each epoch; every data backend implements this.

    `__iter__` yields `Batch`es covering the split once; `__len__` is the number of batches;
    `num_samples` the number of samples in the split; `set_epoch(e)` selects the train order
    and augmentation of epoch e (a no-op for val and test, which are always in index order).
    """

    num_samples: int

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class Loaders:
    """The three splits, plus the train split in index order without augmentation (the LP feature
    cache runs the backbone over it once). With several processes,
    train/val/test are this rank's shards and `train_in_order` is the whole train split on every
    rank: a rank's train batches draw from all of it over the epochs."""

    train: Batches
    val: Batches
    test: Batches
    train_in_order: Batches


def build_loaders(index: DatasetIndex, cfg: DataConfig, seed: int, device: torch.device,
                  shard: tuple[int, int] = (0, 1), dtype: torch.dtype = torch.float32) -> Loaders:
    """Builds the three split loaders of `index` with the backend `cfg.loader` names.

    Args:
        index: from `sources.load_index`.
        cfg: transform, batch sizes, workers, loader backend and `on_bad_image`.
        seed: the cell's seed; fixes train order and augmentation per epoch.
        device: where batches go; pinned host memory when it is CUDA.
        shard: (rank, world): this process's share (`sharding.py`); `sharding.launcher_shard()`
            reads it from the launcher's environment.
        dtype: image dtype of the DALI and GPU-cache backends, which hand over tensors already
            on `device` (the AMP dtype on CUDA); the torchvision backend yields float32.

    Returns:
        Loaders whose train split is shuffled per epoch and val/test are in order, complete.

    Raises:
        ValueError: naming the field, for an unknown backend or a bad value.
        ImportError: for `loader='dali'` without nvidia-dali, saying what to install.
    """
    _check_config(cfg)
    check_shard(shard)
    loader, why = choose_loader(index, cfg, device)
    if cfg.loader == "auto":
        log.info("data.loader=auto -> %s: %s", loader, why)
    if loader == "dali":
        from engine.data.dali import build_dali_loaders
        return build_dali_loaders(index, cfg, seed, device, shard, dtype)
    if loader == "gpu_cache":
        from engine.data.gpu_cache import build_gpu_cache_loaders
        return build_gpu_cache_loaders(index, cfg, seed, device, shard, dtype)
    built = {}
    for split in SPLITS:
        is_train = split == "train"
        dataset = _SampleDataset(index, split, cfg, seed, augment=is_train and cfg.augment)
        batch_size = cfg.train_batch_size if is_train else cfg.eval_batch_size
        built[split] = TorchBatches(dataset, batch_size, seed, is_train, cfg, device, shard)
    in_order = TorchBatches(_SampleDataset(index, "train", cfg, seed, augment=False), cfg.eval_batch_size, seed,
                            False, cfg, device)
    return Loaders(**built, train_in_order=in_order)


def choose_loader(index: DatasetIndex, cfg: DataConfig, device: torch.device) -> tuple[str, str]:
    """The backend to use and why: `cfg.loader`, or for 'auto' the fastest that fits.

    'auto' picks gpu_cache on CUDA when the whole dataset's crops fit in free GPU memory, else
    dali when nvidia-dali imports, else torchvision.
    """
    if cfg.loader != "auto":
        return cfg.loader, "configured"
    from engine.data.dali import dali_available
    from engine.data.gpu_cache import cache_bytes, fits_on_device

    if device.type == "cuda":
        nbytes = sum(cache_bytes(len(index.splits[s]), cfg.crop) for s in SPLITS)
        if fits_on_device(nbytes, device):
            return "gpu_cache", f"CUDA device and the decoded crops ({nbytes / 2**20:.0f} MiB) fit in its free memory"
    if dali_available():
        return "dali", "nvidia-dali is importable" + (" (dataset too large for gpu_cache)" if device.type == "cuda"
                                                       else " (no CUDA device: CPU pipeline)")
    return "torchvision", "nvidia-dali is not installed"


def _check_config(cfg: DataConfig) -> None:
    if cfg.loader not in LOADERS:
        raise ValueError(f"data.loader='{cfg.loader}' is not a backend; use one of {list(LOADERS)}")
    if cfg.num_workers < 0 or cfg.train_batch_size < 1 or cfg.eval_batch_size < 1:
        raise ValueError("data.num_workers must be >= 0 and data.train_batch_size, "
                         f"data.eval_batch_size >= 1, got {cfg.num_workers}, "
                         f"{cfg.train_batch_size}, {cfg.eval_batch_size}")
    if cfg.on_bad_image not in ("skip", "error"):
        raise ValueError(f"data.on_bad_image must be 'skip' or 'error', got '{cfg.on_bad_image}'")
    if not 0 < cfg.crop <= cfg.resize:
        raise ValueError(f"data.crop must be in 1..data.resize ({cfg.resize}), got {cfg.crop}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        raise ValueError(f"data.mean and data.std need 3 values, std > 0; got {cfg.mean}, {cfg.std}")


def augment_draw(seed: int, epoch: int, position: int) -> tuple[bool, float]:
    """(horizontal flip, rotation in degrees counter-clockwise) of one sample in one epoch."""
    rng = np.random.default_rng([seed, epoch, position])
    flip = bool(rng.random() < 0.5)
    return flip, float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))


class _EpochBatchSampler(Sampler):
    """Yields each batch of `shard_batches` as a list of (epoch, position) keys."""

    def __init__(self, num_samples: int, seed: int, batch_size: int, shuffle: bool, shard: tuple[int, int]):
        self.num_samples, self.seed, self.batch_size, self.shuffle, self.shard, self.epoch = (
            num_samples, seed, batch_size, shuffle, shard, 0)

    def _batches(self) -> list[np.ndarray]:
        return shard_batches(self.num_samples, self.seed, self.epoch, self.batch_size, self.shuffle, self.shard)

    def __iter__(self):
        # The epoch travels with each key because persistent workers keep their own
        # copy of the dataset: this is how they learn it.
        return ([(self.epoch, int(i)) for i in batch] for batch in self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class _SampleDataset(Dataset):
    """Decodes and transforms one sample; a bad image yields (None, label, path, reason)."""

    def __init__(self, index: DatasetIndex, split: str, cfg: DataConfig, seed: int, augment: bool):
        self.samples = index.splits[split]
        self.images = index.arrays[split] if index.arrays is not None else None
        self.origin = f"{index.root}:{split}_images"
        self.seed, self.augment = seed, augment
        self.resize_crop = protocol_resize_crop(cfg)
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        epoch, position = key
        sample = self.samples[position]
        try:
            image = self.resize_crop(read_sample(sample.source, self.images))
        except BadImageError as error:
            return None, sample.label, error.path, error.reason
        if self.augment:
            image = _augment(image, *augment_draw(self.seed, epoch, position))
        return self.to_tensor(image), sample.label, "", ""


def protocol_resize_crop(cfg: DataConfig) -> transforms.Compose:
    """The protocol's Resize(resize, shorter side) -> CenterCrop(crop) on PIL images."""
    return transforms.Compose([transforms.Resize(cfg.resize), transforms.CenterCrop(cfg.crop)])


def read_sample(source: str | int, images: np.ndarray | None) -> Image.Image:
    """A sample as an 8-bit RGB PIL image: the file `source`, or row `source` of `images` (npz).

    Raises:
        BadImageError: naming the file when it cannot be decoded.
    """
    if images is None:
        return open_rgb(source)
    pixels = images[source]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]  # PIL has no (H,W,1) mode
    return Image.fromarray(pixels).convert("RGB")


def _augment(image: Image.Image, flip: bool, angle: float) -> Image.Image:
    if flip:
        image = TF.hflip(image)
    return TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR)


def _collate(items: list[tuple], crop: int):
    """Stacks the decoded samples; returns (images, labels, bad paths, bad reasons)."""
    good = [item for item in items if item[0] is not None]
    images = torch.stack([item[0] for item in good]) if good else torch.empty(0, 3, crop, crop)
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    bad = [item for item in items if item[0] is None]
    return images, labels, tuple(item[2] for item in bad), tuple(item[3] for item in bad)


class TorchBatches:
    """`Batches` over a torch DataLoader (num_workers processes; 0 = the main process)."""

    def __init__(self, dataset: _SampleDataset, batch_size: int, seed: int, shuffle: bool,
                 cfg: DataConfig, device: torch.device, shard: tuple[int, int] = (0, 1)):
        self.num_samples = len(dataset)
        self.on_bad_image = cfg.on_bad_image
        self._sampler = _EpochBatchSampler(len(dataset), seed, batch_size, shuffle, shard)
        self._loader = DataLoader(
            dataset, batch_sampler=self._sampler, num_workers=cfg.num_workers,
            collate_fn=partial(_collate, crop=cfg.crop), pin_memory=device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
            generator=torch.Generator().manual_seed(seed))  # keeps global RNG state untouched

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        self._sampler.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, bad_paths, reasons in self._loader:
            if bad_paths and self.on_bad_image == "error":
                raise BadImageError(bad_paths[0], reasons[0])
            yield Batch(images, labels, bad_paths)
