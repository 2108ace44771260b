"""The DALI backend: the protocol's crops decoded by NVIDIA DALI, on the GPU or on the CPU.

The input pipeline of (docs/performance.md, Input pipeline) for every
data source with ONE pipeline definition parameterised by the device:
- image files (ImageFolder, CSV): each path goes in through `external_source`, in the order of
  `sharding.shard_batches` (DALI never shuffles on its own), `fn.io.file.read` reads it and
  `fn.decoders.image` decodes it, `device='mixed'` (nvJPEG) on CUDA, `'cpu'` otherwise;
- npz arrays: the uint8 rows go in through `external_source` (to the GPU on CUDA);
- then one `fn.resize` per sample straight to (crop, crop) from the input region that
  Resize(resize) -> CenterCrop(crop) keeps (`crops.crop_roi`), bilinear with antialiasing like
  PIL's. Without CUDA the pipeline has `device_id=None` and runs on the CPU (the tests run it).
The uint8 HWC crops go on as in `crops.CropBatches` (channels-last view, normalise, dtype).
DALI has no bfloat16: the cast to the AMP dtype happens in torch, fused with normalisation.

Which files DALI decodes (`dali_route`, decided before the first epoch from the file's magic
bytes and PIL's header, no decoding): JPEG, PNG, BMP and TIFF whose PIL mode is 8-bit 'RGB'
or 'L', where DALI's RGB output is what `images.open_rgb` gives. Everything else (16-bit or
32-bit PNG/TIFF, CMYK JPEG, alpha, palette, GIF, WebP, unreadable headers, ...) goes through
the PIL path (`open_rgb` + the same resize and crop) one by one. A DALI batch that fails anyway
(a corrupt or truncated file: DALI's error does not reliably name the sample) is decoded again
sample by sample to find the culprits; those go to PIL too, which decodes them or names them
as bad (`Batch.skipped`, or an error with the name under on_bad_image='error'). Every decoded
sample is counted in `DaliCropDecoder.counts` ('dali', 'pil', 'skipped').
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch
from PIL import Image

from engine.config import DataConfig
from engine.data.batches import Loaders
from engine.data.crops import Decoded, PilCropDecoder, crop_loaders, crop_roi
from engine.data.dataset_index import SPLITS, DatasetIndex
from engine.data.images import sniff_image_format

DALI_FORMATS = frozenset({"jpeg", "png", "bmp", "tiff"})
DALI_MODES = frozenset({"RGB", "L"})  # 8 bits per channel, no alpha: DALI's RGB equals open_rgb's
_INSTALL = ("data.loader='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130 (or the build for "
            "your CUDA), or set data.loader=torchvision")
log = logging.getLogger(__name__)


def dali_available() -> bool:
    """True when nvidia.dali imports."""
    try:
        _import_dali()
    except ImportError:
        return False
    return True


def _import_dali():
    """The nvidia.dali modules this backend uses; ImportError with one clear message when absent."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn  # noqa: F401 (loads the operator namespace)
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as error:
        raise ImportError(f"{_INSTALL} ({error})") from error
    return dali, feed_ndarray


def dali_route(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """Whether DALI decodes a file as `open_rgb` would (module docstring), from its header only.

    Returns:
        (None, (height, width)) for DALI, else (why it goes through PIL, None).
    """
    fmt = sniff_image_format(path)
    if fmt not in DALI_FORMATS:
        return f"{fmt or 'unrecognised'} format", None
    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
            frames = getattr(image, "n_frames", 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"unreadable header ({type(error).__name__})", None
    if mode not in DALI_MODES:
        return f"mode {mode}", None
    if frames > 1:
        return f"{frames} frames", None
    return None, (height, width)


def build_dali_loaders(index: DatasetIndex, cfg: DataConfig, seed: int, device: torch.device,
                       shard: tuple[int, int] = (0, 1), dtype: torch.dtype = torch.float32) -> Loaders:
    """The three split loaders (and train in order) decoded by DALI; see `loaders.build_loaders`.

    Raises:
        ImportError: when nvidia.dali is not installed, saying what to install.
    """
    _import_dali()
    decoders = {split: DaliCropDecoder(index, split, cfg, device) for split in SPLITS}
    return crop_loaders(index, cfg, seed, shard, dtype, decoders)


class DaliCropDecoder:
    """The protocol's uint8 crops of one split, by DALI, with the PIL path for what DALI cannot take.

    Args:
        index, split: the samples: files, or rows of `index.arrays[split]` (npz).
        cfg: resize, crop, batch sizes (the pipeline's largest batch) and num_workers (its threads).
        device: CUDA -> mixed decoding and GPU resize on that device; CPU -> a CPU-only pipeline.

    Attributes:
        counts: samples decoded so far by route: 'dali', 'pil', 'skipped' (bad images).
        pil_reasons: position -> why it goes through PIL (from `dali_route`, or DALI's failure).
    """

    def __init__(self, index: DatasetIndex, split: str, cfg: DataConfig, device: torch.device):
        self.device, self.crop = device, cfg.crop
        self.images = index.arrays[split] if index.arrays is not None else None
        self.sources = [sample.source for sample in index.splits[split]]
        self.max_batch = max(cfg.train_batch_size, cfg.eval_batch_size)
        self.num_threads = max(1, cfg.num_workers)
        self.counts: Counter = Counter()
        self.pil_reasons: dict[int, str] = {}
        self._pil = PilCropDecoder(index, split, cfg, device)
        self._roi = np.zeros((len(self.sources), 2, 2), np.float32)
        self._pipe = None
        if self.images is not None:
            self._roi[:] = crop_roi(*self.images.shape[1:3], cfg.resize, cfg.crop)
            return
        # fn.io.file.read takes each path as a 1-D uint8 array of its UTF-8 bytes.
        self._encoded_paths = [np.frombuffer(str(path).encode(), np.uint8) for path in self.sources]
        for position, path in enumerate(self.sources):
            reason, size = dali_route(path)
            if reason:
                self.pil_reasons[position] = reason
            else:
                self._roi[position] = crop_roi(*size, cfg.resize, cfg.crop)
        if self.pil_reasons:
            log.info("DALI %s split: %d of %d files go through PIL (%s)", split, len(self.pil_reasons),
                     len(self.sources), dict(Counter(self.pil_reasons.values())))

    def decode(self, positions: np.ndarray) -> Decoded:
        """Crops of `positions` (a batch), in their order; bad images are left out and named."""
        positions = np.asarray(positions, np.int64)
        to_dali = np.array([int(p) not in self.pil_reasons for p in positions], dtype=bool)
        crops, done, failed = self._run_checked(positions[to_dali])
        by_pil = self._pil.decode(positions[~to_dali | np.isin(positions, failed)])
        self.counts.update(dali=len(done), pil=len(by_pil.kept), skipped=len(by_pil.skipped))
        if not len(by_pil.kept):
            return Decoded(crops, done, by_pil.skipped)
        kept = np.concatenate([done, by_pil.kept])
        rank = {int(p): i for i, p in enumerate(positions)}
        order = np.argsort([rank[int(p)] for p in kept])
        crops = torch.cat([crops, by_pil.crops])[torch.as_tensor(order, device=self.device)]
        return Decoded(crops, kept[order], by_pil.skipped)

    def _run_checked(self, positions: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(crops, positions DALI decoded, positions it failed on)."""
        if not len(positions):
            return self._no_crops(), positions, positions
        try:
            return self._run(positions), positions, positions[:0]
        except RuntimeError as error:
            log.warning("DALI failed on a batch of %d; decoding it sample by sample (%s)",
                        len(positions), str(error).strip().splitlines()[-1][:200])
        # DALI pipelines have kept failing after a first error (NVIDIA/DALI#2380); 2.4's CPU pipeline
        # recovers, but rebuilding after each failure is cheap next to a bad batch and always safe.
        self._pipe = None
        crops, done, failed = [], [], []
        for i, position in enumerate(positions):
            try:
                crops.append(self._run(positions[i:i + 1]))
                done.append(position)
            except RuntimeError:
                self._pipe = None
                failed.append(position)
                self.pil_reasons[int(position)] = "DALI could not decode it"
        return torch.cat([self._no_crops(), *crops]), np.array(done, np.int64), np.array(failed, np.int64)

    def _no_crops(self) -> torch.Tensor:
        return torch.empty((0, self.crop, self.crop, 3), dtype=torch.uint8, device=self.device)

    def _run(self, positions: np.ndarray) -> torch.Tensor:
        """uint8 (K, crop, crop, 3) on the device for K positions DALI takes; RuntimeError on failure."""
        if self.images is None:
            source = [self._encoded_paths[p] for p in positions]
        else:
            rows = self.images[positions]
            rows = rows[..., None] if rows.ndim == 3 else rows
            # Gray (H,W) or (H,W,1) rows get three equal channels, as open_rgb gives them.
            source = np.ascontiguousarray(np.broadcast_to(rows, (*rows.shape[:3], 3)))
        roi = self._roi[positions]
        outputs = self._pipeline().run(source=source, roi_start=np.ascontiguousarray(roi[:, 0]),
                                       roi_end=np.ascontiguousarray(roi[:, 1]))
        crops = torch.empty((len(positions), self.crop, self.crop, 3), dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        _import_dali()[1](outputs[0].as_tensor(), crops, cuda_stream=stream)
        return crops

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = _build_pipeline(self.images is None, self.max_batch, self.num_threads, self.device,
                                         self.crop)
        return self._pipe


def _build_pipeline(from_files: bool, batch_size: int, num_threads: int, device: torch.device, crop: int):
    """The DALI pipeline: inputs 'source' (encoded paths or HWC rows), 'roi_start', 'roi_end'."""
    dali, _ = _import_dali()
    fn, types = dali.fn, dali.types
    gpu = device.type == "cuda"
    device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
    # prefetch_queue_depth=1: each run() consumes exactly the batch fed with it.
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                         prefetch_queue_depth=1)
    with pipe:
        if from_files:
            encoded = fn.io.file.read(fn.external_source(name="source", dtype=types.UINT8))
            # adjust_orientation=False: PIL (the reference) ignores EXIF orientation too.
            # jpeg_fancy_upsampling: nvJPEG upsamples chroma as libjpeg-turbo (CPU, PIL) does.
            images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                       adjust_orientation=False, jpeg_fancy_upsampling=True)
        else:
            images = fn.external_source(name="source", dtype=types.UINT8, layout="HWC",
                                        device="gpu" if gpu else "cpu")
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT)
        pipe.set_outputs(fn.resize(images, size=[crop, crop], roi_start=roi_start, roi_end=roi_end,
                                   interp_type=types.INTERP_LINEAR, antialias=True))
    pipe.build()
    return pipe
