"""The GPU-cache backend: decode once, then every later epoch only indexes memory on the device.

Implements docs/performance.md (Input pipeline: "decode once and keep the uint8 images
on the GPU"). The first time a sample is asked for, its protocol crop (Resize(resize) ->
CenterCrop(crop), uint8 HWC, `crops.py`) is decoded by the inner decoder, DALI when it imports
else the PIL path, and stored; from then on a batch is a gather from that storage, then the
normalisation and, when `cfg.augment`, the flip/rotation of `crops.CropBatches`, on the device.
So the first epoch costs one decode of each sample it reads and later epochs cost no decoding.

Where the crops live is decided up front per split from its size, N * crop * crop * 3 bytes:
on the CUDA device while that is at most FREE_MEMORY_SHARE of its free memory
(`torch.cuda.mem_get_info`), else in pinned host memory (batches are copied to the device); on
a CPU device, in host memory.

Caches are module-level, keyed by dataset (root, split, a hash of the sample list), transform
(resize, crop), inner decoder and device, so the next cell of a grid in the same process (the
next seed or strategy) reuses them without decoding. Unreadable images are remembered by
position and reported (`Batch.skipped`) every time they come up.

Bound: the caches of at most MAX_CACHED_DATASETS dataset roots, the most recently used ones
(LRU). Before a new root's first split is allocated, the least recently used roots are
forgotten, so a grid worker going through six datasets holds the images of at most that many.
`release_dataset(root)` forgets one root's splits (the grid calls it when its own dataset cache
evicts that dataset), `clear_gpu_cache()` all of them. Forgotten images are freed once no loader
holds them any more (a cell's loaders go when the cell ends).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from engine.config import DataConfig
from engine.data.batches import Loaders
from engine.data.crops import CropDecoder, Decoded, PilCropDecoder, crop_loaders
from engine.data.dataset_index import SPLITS, DatasetIndex

# The cache may take this share of the free GPU memory: the model, its optimizer state and
# activations need the rest.
FREE_MEMORY_SHARE = 0.5
# Dataset roots whose decoded images stay cached: the grid's dataset cache keeps 1-2 datasets
# too, and one dataset of the study's size takes a large share of a GPU's free memory.
MAX_CACHED_DATASETS = 2
INNER_DECODERS = ("auto", "dali", "pil")
# cache_key -> cache, least recently used first; key[0] is the dataset root.
_CACHES: OrderedDict[tuple, "CachedCrops"] = OrderedDict()
log = logging.getLogger(__name__)


def clear_gpu_cache() -> None:
    """Forgets every cached split (their memory is freed once no loader holds them)."""
    _CACHES.clear()


def release_dataset(root: str) -> int:
    """Forgets every cached split of the dataset at `root` (its memory is freed once no loader
    holds them); returns how many were forgotten (0 when none was cached)."""
    forgotten = [key for key in _CACHES if _same_root(key[0], root)]
    for key in forgotten:
        del _CACHES[key]
    return len(forgotten)


def cached_roots() -> list[str]:
    """The dataset roots in the cache, least recently used first."""
    return list(reversed(dict.fromkeys(key[0] for key in reversed(_CACHES))))


def _same_root(cached: str, root: str | os.PathLike) -> bool:
    # The grid may name a dataset by another spelling of the path than the index it loaded.
    return cached == str(root) or os.path.realpath(cached) == os.path.realpath(os.path.expanduser(root))


def _make_room_for(root: str) -> None:
    """Forgets the least recently used roots until `root` fits in MAX_CACHED_DATASETS."""
    others = [r for r in cached_roots() if r != root]
    for old in others[:max(0, len(others) - (MAX_CACHED_DATASETS - 1))]:
        log.info("gpu_cache: forgetting %s (%d cached datasets at most)", old, MAX_CACHED_DATASETS)
        release_dataset(old)


def cache_bytes(num_samples: int, crop: int) -> int:
    """Bytes of `num_samples` uint8 (crop, crop, 3) crops."""
    return num_samples * crop * crop * 3


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """True when `nbytes` fit in FREE_MEMORY_SHARE of the CUDA device's free memory (False off CUDA)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= FREE_MEMORY_SHARE * free


def build_gpu_cache_loaders(index: DatasetIndex, cfg: DataConfig, seed: int, device: torch.device,
                            shard: tuple[int, int] = (0, 1), dtype: torch.dtype = torch.float32,
                            inner: str = "auto") -> Loaders:
    """The three split loaders (and train in order) served from the cache; see `loaders.build_loaders`.

    Args:
        inner: what decodes on a miss: 'dali', 'pil' (exactly the torchvision backend's pixels)
            or 'auto' (dali when nvidia.dali imports, else pil).

    Raises:
        ValueError: for an unknown `inner`.
    """
    from engine.data.dali import dali_available

    if inner not in INNER_DECODERS:
        raise ValueError(f"inner decoder must be one of {list(INNER_DECODERS)}, got '{inner}'")
    if inner == "auto":
        inner = "dali" if dali_available() else "pil"
    decoders = {split: cached_crops(index, split, cfg, device, inner) for split in SPLITS}
    return crop_loaders(index, cfg, seed, shard, dtype, decoders)


def cached_crops(index: DatasetIndex, split: str, cfg: DataConfig, device: torch.device, inner: str) -> "CachedCrops":
    """The cache of one split: the one already in this process when the key matches, else a new one
    (after forgetting the least recently used datasets beyond MAX_CACHED_DATASETS)."""
    key = cache_key(index, split, cfg, device, inner)
    if key not in _CACHES:
        _make_room_for(key[0])
        if inner == "dali":
            from engine.data.dali import DaliCropDecoder
            decoder = DaliCropDecoder(index, split, cfg, device)
        else:
            decoder = PilCropDecoder(index, split, cfg, device)
        _CACHES[key] = CachedCrops(decoder, len(index.splits[split]), cfg.crop)
    _CACHES.move_to_end(key)
    return _CACHES[key]


def cache_key(index: DatasetIndex, split: str, cfg: DataConfig, device: torch.device, inner: str) -> tuple:
    """(root, split, sample-list hash, npz array shape, resize, crop, inner decoder, device)."""
    digest = hashlib.sha1()
    for sample in index.splits[split]:
        digest.update(f"{sample.source}\t{sample.label}\n".encode())
    shape = tuple(index.arrays[split].shape) if index.arrays is not None else None
    return (str(index.root), split, digest.hexdigest(), shape, cfg.resize, cfg.crop, inner, str(device))


class CachedCrops:
    """A `CropDecoder` that decodes each position once with `inner` and serves it from memory after.

    Args:
        inner: the decoder used on a miss; its device is where batches go.
        num_samples, crop: the split's size and the crop side (the storage's shape).

    Attributes:
        storage: uint8 (num_samples, crop, crop, 3), on the device or in pinned host memory.
        filled: bool (num_samples,), which rows hold a decoded crop.
        bad: position -> (position, path, reason) of images that could not be decoded.
        decoded: how many samples `inner` has decoded for this cache.
    """

    def __init__(self, inner: CropDecoder, num_samples: int, crop: int):
        self.inner, self.device = inner, inner.device
        nbytes = cache_bytes(num_samples, crop)
        on_device = self.device.type != "cuda" or fits_on_device(nbytes, self.device)
        if not on_device:
            log.info("gpu_cache: %.0f MiB of crops exceed %.0f%% of the free GPU memory; keeping them in "
                     "pinned host memory", nbytes / 2**20, 100 * FREE_MEMORY_SHARE)
        self.storage = torch.empty((num_samples, crop, crop, 3), dtype=torch.uint8,
                                   device=self.device if on_device else "cpu", pin_memory=not on_device)
        self.filled = np.zeros(num_samples, dtype=bool)
        self.bad: dict[int, tuple[int, str, str]] = {}
        self.decoded = 0

    def decode(self, positions: np.ndarray) -> Decoded:
        positions = np.asarray(positions, np.int64)
        known_bad = np.array([int(p) in self.bad for p in positions], dtype=bool)
        missing = positions[~self.filled[positions] & ~known_bad]
        if len(missing):
            self._fill(missing)
        kept = positions[self.filled[positions]]
        index = torch.as_tensor(kept, device=self.storage.device)
        crops = self.storage[index].to(self.device, non_blocking=True)
        return Decoded(crops, kept, tuple(self.bad[int(p)] for p in positions if int(p) in self.bad))

    def _fill(self, positions: np.ndarray) -> None:
        decoded = self.inner.decode(positions)
        self.storage[torch.as_tensor(decoded.kept, device=self.storage.device)] = decoded.crops.to(self.storage.device)
        self.filled[decoded.kept] = True
        self.bad.update({entry[0]: entry for entry in decoded.skipped})
        self.decoded += len(positions)
