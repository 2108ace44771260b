"""The data contract every backend implements and the training loop reads, and what the backends share.

- `Batch`, `Batches` (the protocol the loop iterates), `Loaders` (the three splits);
- the input of docs/protocol.md (Shared protocol): `protocol_resize_crop`, i.e.
  Resize(resize, shorter side) -> CenterCrop(crop), on a sample read by `read_sample` (8-bit
  RGB, grayscale replicated to 3 channels by `images.open_rgb`);
- the augmentation draws (`augment_draw`): a horizontal flip with p=0.5 and a rotation of up to
  MAX_ROTATION_DEG, drawn from (seed, epoch, sample position), so they are the same whichever
  backend (`torchvision_loader.py`, `dali.py`, `gpu_cache.py`) or worker handles the sample.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from engine.config import DataConfig
from engine.data.dicom import DicomOptions
from engine.data.images import open_rgb

MAX_ROTATION_DEG = 10.0  # the spec's "small rotations"


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


def augment_draw(seed: int, epoch: int, position: int) -> tuple[bool, float]:
    """(horizontal flip, rotation in degrees counter-clockwise) of one sample in one epoch."""
    rng = np.random.default_rng([seed, epoch, position])
    flip = bool(rng.random() < 0.5)
    return flip, float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))


def protocol_resize_crop(cfg: DataConfig) -> transforms.Compose:
    """The protocol's Resize(resize, shorter side) -> CenterCrop(crop) on PIL images."""
    return transforms.Compose([transforms.Resize(cfg.resize), transforms.CenterCrop(cfg.crop)])


def read_sample(source: str | int, images: np.ndarray | None, dicom: DicomOptions = DicomOptions()) -> Image.Image:
    """A sample as an 8-bit RGB PIL image: the file `source` (DICOM read with `dicom`'s window and
    frame), or row `source` of `images` (npz).

    Raises:
        BadImageError: naming the file when it cannot be decoded.
    """
    if images is None:
        return open_rgb(source, dicom=dicom)
    pixels = images[source]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]  # PIL has no (H,W,1) mode
    return Image.fromarray(pixels).convert("RGB")
