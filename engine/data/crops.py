"""uint8 crops and what follows them on the device: the common half of the DALI and GPU-cache
backends (`dali.py`, `gpu_cache.py`).

Both backends first make, per sample, the protocol's Resize(resize, shorter side) ->
CenterCrop(crop) as a uint8 (crop, crop, 3) HWC image (docs/protocol.md, Shared
protocol), with a `CropDecoder`: DALI, the PIL reference (`PilCropDecoder`, exactly the
torchvision backend's pixels) or the GPU cache. `CropBatches` then does the rest, on the device:
- the (B, H, W, 3) batch is permuted to (B, 3, H, W): a view, not a copy, because NHWC memory
  *is* NCHW channels-last (asserted);
- augmentation when asked: the horizontal flip and rotation of `batches.augment_draw`, the same
  draws as the torchvision backend, applied with `grid_sample` (bilinear, black fill);
- ToTensor's x / 255 and Normalize's (x - mean) / std with the same float32 operations as
  torchvision, so crops equal to PIL's give bit-identical tensors; then the requested dtype.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import DataConfig
from engine.data.images import BadImageError
from engine.data.balance import train_draw_weights
from engine.data.batches import Batch, Loaders, augment_draw, protocol_resize_crop, read_sample
from engine.data.dataset_index import DatasetIndex
from engine.data.dicom import DicomOptions
from engine.data.sharding import shard_batches


@dataclass(frozen=True)
class Decoded:
    """Crops of some positions of a split.

    Attributes:
        crops: uint8 (K, crop, crop, 3) on the decoder's device, one per kept position.
        kept: int64 (K,) the positions decoded, in the requested order.
        skipped: (position, path, reason) of each position that could not be decoded, in order.
    """

    crops: torch.Tensor
    kept: np.ndarray
    skipped: tuple[tuple[int, str, str], ...] = ()


class CropDecoder(Protocol):
    """Makes the protocol's uint8 crops of split positions; `device` is where they land."""

    device: torch.device

    def decode(self, positions: np.ndarray) -> Decoded: ...


def crop_roi(height: int, width: int, resize: int, crop: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The input region that torchvision's Resize(resize) -> CenterCrop(crop) keeps.

    Resampling this region straight to (crop, crop) maps every output pixel to the input point
    the full resize maps it to, with the same filter scale, so one fused resize replaces
    resize-then-crop (and computes crop^2 pixels instead of the whole resized image).

    Returns:
        ((y0, x0), (y1, x1)) in input pixels.
    """
    # torchvision's Resize: the shorter side becomes `resize`, the longer one int(resize * long / short).
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))  # CenterCrop's rounding
    scale_y, scale_x = height / new_h, width / new_w
    return (top * scale_y, left * scale_x), ((top + crop) * scale_y, (left + crop) * scale_x)


class PilCropDecoder:
    """The reference decoder: PIL (`images.open_rgb`) and torchvision's Resize + CenterCrop, per sample.

    Args:
        index, split: the samples (file paths, or rows of `index.arrays[split]` for npz).
        cfg: resize and crop.
        device: where the crops go (through pinned memory to a CUDA device).
    """

    def __init__(self, index: DatasetIndex, split: str, cfg: DataConfig, device: torch.device):
        self.sources = [sample.source for sample in index.splits[split]]
        self.images = index.arrays[split] if index.arrays is not None else None
        self.resize_crop, self.crop, self.device = protocol_resize_crop(cfg), cfg.crop, device
        self.dicom = DicomOptions.of(cfg)

    def crop_of(self, position: int) -> np.ndarray:
        """uint8 (crop, crop, 3) of one position. Raises BadImageError naming the file."""
        return np.asarray(self.resize_crop(read_sample(self.sources[position], self.images, self.dicom)))

    def decode(self, positions: np.ndarray) -> Decoded:
        crops, kept, skipped = [], [], []
        for position in positions:
            try:
                crops.append(self.crop_of(int(position)))
                kept.append(int(position))
            except BadImageError as error:
                skipped.append((int(position), error.path, error.reason))
        return Decoded(stack_crops(crops, self.crop, self.device), np.array(kept, np.int64), tuple(skipped))


def stack_crops(crops: list[np.ndarray], crop: int, device: torch.device) -> torch.Tensor:
    """uint8 (K, crop, crop, 3) on `device` from K host crops."""
    if not crops:
        return torch.empty((0, crop, crop, 3), dtype=torch.uint8, device=device)
    stacked = torch.from_numpy(np.stack(crops))
    if device.type == "cuda":
        return stacked.pin_memory().to(device, non_blocking=True)
    return stacked


def to_model_input(crops: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype,
                   flips: torch.Tensor | None = None, angles_deg: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised model input from uint8 HWC crops, on their device.

    Args:
        crops: uint8 (B, H, W, 3), contiguous.
        mean, std: float32 (1, 3, 1, 1) on the crops' device, in the 0..1 scale.
        dtype: output dtype.
        flips, angles_deg: bool (B,) and float32 (B,) on the device: augment when given
            (flip first, then rotate counter-clockwise, as the torchvision backend).

    Returns:
        (B, 3, H, W) in `dtype`, channels-last memory.
    """
    images = crops.permute(0, 3, 1, 2)  # NHWC memory read as NCHW: channels-last, no copy
    assert images.is_contiguous(memory_format=torch.channels_last), "crops must be contiguous NHWC"
    images = images.float().div(255)  # ToTensor
    if flips is not None:
        images = _flip_rotate(images, flips, angles_deg)
    images = images.sub(mean).div(std)  # Normalize, the same float32 ops in the same order
    return images.to(dtype=dtype, memory_format=torch.channels_last)


def _flip_rotate(images: torch.Tensor, flips: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    radians = angles_deg * (math.pi / 180)
    cos, sin, zero = radians.cos(), radians.sin(), torch.zeros_like(radians)
    # Crops are square, so a rotation of normalised grid coordinates is a rotation about the centre.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class CropBatches:
    """`Batches` from a `CropDecoder`: sharded epoch order -> uint8 crops -> model input on the device.

    Args:
        decoder: makes the crops (DALI, PIL or the GPU cache).
        labels: int64 (N,) the split's labels.
        batch_size, seed, shuffle, shard: the batches, as `sharding.shard_batches`.
        augment: flip/rotate with `batches.augment_draw` (train only).
        cfg: mean, std and on_bad_image.
        dtype: image dtype handed to the model.
    """

    def __init__(self, decoder: CropDecoder, labels: np.ndarray, batch_size: int, seed: int, shuffle: bool,
                 augment: bool, shard: tuple[int, int], cfg: DataConfig, dtype: torch.dtype):
        self.decoder, self.labels = decoder, np.asarray(labels, np.int64)
        self.num_samples = len(self.labels)
        self.batch_size, self.seed, self.shuffle, self.augment, self.shard = batch_size, seed, shuffle, augment, shard
        self.on_bad_image, self.dtype, self.epoch = cfg.on_bad_image, dtype, 0
        self.draw_weights = train_draw_weights(self.labels, cfg.sampler) if shuffle else None
        device = decoder.device
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def _batches(self) -> list[np.ndarray]:
        return shard_batches(self.num_samples, self.seed, self.epoch, self.batch_size, self.shuffle, self.shard,
                             self.draw_weights)

    def __len__(self) -> int:
        return len(self._batches())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        device = self.decoder.device
        for positions in self._batches():
            decoded = self.decoder.decode(positions)
            if decoded.skipped and self.on_bad_image == "error":
                raise BadImageError(*decoded.skipped[0][1:])
            flips = angles = None
            if self.augment:
                draws = [augment_draw(self.seed, self.epoch, int(p)) for p in decoded.kept]
                flips = torch.tensor([d[0] for d in draws], dtype=torch.bool).to(device, non_blocking=True)
                angles = torch.tensor([d[1] for d in draws], dtype=torch.float32).to(device, non_blocking=True)
            images = to_model_input(decoded.crops, self.mean, self.std, self.dtype, flips, angles)
            labels = torch.from_numpy(self.labels[decoded.kept]).to(device, non_blocking=True)
            yield Batch(images, labels, tuple(path for _, path, _ in decoded.skipped))


def crop_loaders(index: DatasetIndex, cfg: DataConfig, seed: int, shard: tuple[int, int], dtype: torch.dtype,
                 decoders: dict[str, CropDecoder]) -> Loaders:
    """`Loaders` of `CropBatches` over one decoder per split (train_in_order shares train's and,
    as in `loaders.build_loaders`, is not sharded)."""
    def batches(split: str, batch_size: int, shuffle: bool, augment: bool, split_shard=shard) -> CropBatches:
        labels = [sample.label for sample in index.splits[split]]
        return CropBatches(decoders[split], labels, batch_size, seed, shuffle, augment, split_shard, cfg, dtype)

    return Loaders(train=batches("train", cfg.train_batch_size, True, cfg.augment),
                   val=batches("val", cfg.eval_batch_size, False, False),
                   test=batches("test", cfg.eval_batch_size, False, False),
                   train_in_order=batches("train", cfg.eval_batch_size, False, False, (0, 1)))
