"""The torchvision/PIL backend: `Batches` over a torch DataLoader that decodes with PIL.

Implements the input of docs/protocol.md (Shared protocol): Resize(resize) ->
CenterCrop(crop) -> ToTensor -> Normalize(mean, std), grayscale replicated to 3 channels (by
`images.open_rgb`), no augmentation unless `augment` (then the flip and rotation of
`batches.augment_draw`, on train only, after the crop). Reproducibility does not depend on
global RNG state:
- train order is `sharding.shard_batches` of (seed, epoch);
- augmentation draws from (seed, epoch, sample position), so it is the same whichever worker
  decodes the sample;
- DataLoader's worker base seed comes from a private generator seeded with `seed`.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from engine.config import DataConfig
from engine.data.balance import train_draw_weights
from engine.data.batches import Batch, Loaders, augment_draw, protocol_resize_crop, read_sample
from engine.data.dataset_index import SPLITS, DatasetIndex
from engine.data.dicom import DicomOptions
from engine.data.images import BadImageError
from engine.data.sharding import shard_batches


def build_torchvision_loaders(index: DatasetIndex, cfg: DataConfig, seed: int, device: torch.device,
                              shard: tuple[int, int] = (0, 1)) -> Loaders:
    """The three split loaders (and train in order, not sharded) of float32 host batches; see
    `loaders.build_loaders`."""
    built = {}
    for split in SPLITS:
        is_train = split == "train"
        dataset = _SampleDataset(index, split, cfg, seed, augment=is_train and cfg.augment)
        batch_size = cfg.train_batch_size if is_train else cfg.eval_batch_size
        built[split] = TorchBatches(dataset, batch_size, seed, is_train, cfg, device, shard)
    in_order = TorchBatches(_SampleDataset(index, "train", cfg, seed, augment=False), cfg.eval_batch_size, seed,
                            False, cfg, device)
    return Loaders(**built, train_in_order=in_order)


class _EpochBatchSampler(Sampler):
    """Yields each batch of `shard_batches` as a list of (epoch, position) keys."""

    def __init__(self, num_samples: int, seed: int, batch_size: int, shuffle: bool, shard: tuple[int, int],
                 draw_weights: np.ndarray | None = None):
        self.num_samples, self.seed, self.batch_size, self.shuffle, self.shard, self.epoch = (
            num_samples, seed, batch_size, shuffle, shard, 0)
        self.draw_weights = draw_weights

    def _batches(self) -> list[np.ndarray]:
        return shard_batches(self.num_samples, self.seed, self.epoch, self.batch_size, self.shuffle, self.shard,
                             self.draw_weights)

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
        self.dicom = DicomOptions.of(cfg)
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        epoch, position = key
        sample = self.samples[position]
        try:
            image = self.resize_crop(read_sample(sample.source, self.images, self.dicom))
        except BadImageError as error:
            return None, sample.label, error.path, error.reason
        if self.augment:
            image = _augment(image, *augment_draw(self.seed, epoch, position))
        return self.to_tensor(image), sample.label, "", ""


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
        weights = train_draw_weights([s.label for s in dataset.samples], cfg.sampler) if shuffle else None
        self._sampler = _EpochBatchSampler(len(dataset), seed, batch_size, shuffle, shard, weights)
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
