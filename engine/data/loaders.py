"""`build_loaders`: the three split loaders of a DatasetIndex from the backend `cfg.loader` names.

The backends: torchvision/PIL (`torchvision_loader.py`), NVIDIA DALI (`dali.py`) and the GPU
cache (`gpu_cache.py`); 'auto' picks the fastest that is installed and fits (`choose_loader`).
Each yields the `Batches` of `batches.py`, the only thing the loop sees, with the same train
order (`sharding.shard_batches`), augmentation draws (`batches.augment_draw`) and sharding
over processes (`shard=(rank, world)`), so the backend never changes which samples a batch holds
and a run resumed at epoch e sees exactly the batches the uninterrupted run saw.
"""
from __future__ import annotations

import logging

import torch

from engine.config import DataConfig
from engine.data.batches import Loaders
from engine.data.dataset_index import SPLITS, DatasetIndex
from engine.data.sharding import check_shard
from engine.data.torchvision_loader import build_torchvision_loaders

LOADERS = ("auto", "torchvision", "dali", "gpu_cache")
log = logging.getLogger(__name__)


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
    return build_torchvision_loaders(index, cfg, seed, device, shard)


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
