"""A synthetic image-folder dataset: real JPEG and PNG files a small CNN can learn.

`make_demo_dataset` backs the demo and the tests' fixture data. Each class is a shape or
texture (circles, stripes, checkers, rings, crosses) drawn at a random position, scale and
orientation over a random background brightness with pixel noise, so the classes are
separable by texture but not by any single pixel. Even-numbered images are RGB JPEGs with a
slight tint, odd ones grayscale PNGs, so both decoders and both colour paths are exercised.
Everything is drawn from `numpy.random.default_rng([seed, class, image])`: the same
arguments always give the same pixels, and adding images does not change earlier ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PATTERNS = ("circles", "stripes", "checkers", "rings", "crosses")
# Cumulative train and val shares for `with_splits` (the rest is test): the protocol's 70/15/15.
_SPLIT_EDGES = (("train", 0.70), ("val", 0.85), ("test", 1.0))


def make_demo_dataset(root: str | Path, classes: int = 3, per_class: int = 40, size: int = 64,
                      seed: int = 0, with_splits: bool = False) -> Path:
    """Writes `classes * per_class` images as `root/<pattern>/<pattern>_<i>.{jpg,png}`.

    Args:
        root: output folder, created if missing; files of the same names are overwritten.
        classes: number of classes, 2..5 (the first `classes` of `PATTERNS`).
        per_class: images per class.
        size: image side in pixels (at least 16).
        seed: makes the dataset; the same seed gives the same images.
        with_splits: write `root/{train,val,test}/<pattern>/...` instead, 70/15/15 per class.

    Returns:
        `root` as a Path.

    Raises:
        ValueError: naming the argument that is out of range.
    """
    if not 2 <= classes <= len(PATTERNS):
        raise ValueError(f"classes must be in 2..{len(PATTERNS)}, got {classes}")
    if per_class < 1 or size < 16:
        raise ValueError(f"per_class must be >= 1 and size >= 16, got {per_class} and {size}")
    root = Path(root)
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    for label, pattern in enumerate(PATTERNS[:classes]):
        for i in range(per_class):
            rng = np.random.default_rng([seed, label, i])
            gray = _render(_DRAW[pattern](rng, x, y), rng)
            split = next(name for name, edge in _SPLIT_EDGES if i < edge * per_class)
            folder = root / split / pattern if with_splits else root / pattern
            folder.mkdir(parents=True, exist_ok=True)
            _save(gray, folder / f"{pattern}_{i:04d}", rng, as_jpeg=i % 2 == 0)
    return root


def _render(shape: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pattern in [0,1] -> uint8 image with random brightness, contrast and noise."""
    low = rng.uniform(0.05, 0.4)
    high = low + rng.uniform(0.35, 0.6)
    if rng.random() < 0.5:  # dark shapes on a bright background as often as the reverse
        low, high = high, low
    image = low + (high - low) * shape + rng.normal(0.0, rng.uniform(0.02, 0.08), shape.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _save(gray: np.ndarray, stem: Path, rng: np.random.Generator, as_jpeg: bool) -> None:
    if as_jpeg:
        tint = rng.uniform(0.9, 1.0, size=3)
        rgb = (gray[..., None] * tint).astype(np.uint8)
        Image.fromarray(rgb).save(stem.with_suffix(".jpg"), quality=90)
    else:
        Image.fromarray(gray).save(stem.with_suffix(".png"))


def _circles(rng, x, y):
    shape = np.zeros_like(x)
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.22)
        shape = np.maximum(shape, (x - cx) ** 2 + (y - cy) ** 2 < r * r)
    return shape


def _stripes(rng, x, y):
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.12, 0.3)
    phase = x * np.cos(angle) + y * np.sin(angle)
    return (np.sin(2 * np.pi * phase / period + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _checkers(rng, x, y):
    cells = rng.uniform(3, 7)
    return ((np.floor(x * cells + rng.uniform()) + np.floor(y * cells + rng.uniform())) % 2).astype(np.float32)


def _rings(rng, x, y):
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    radius, width = np.hypot(x - cx, y - cy), rng.uniform(0.08, 0.16)
    return ((radius // width) % 2 == 0).astype(np.float32)


def _crosses(rng, x, y):
    cx, cy, half = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.09)
    return ((np.abs(x - cx) < half) | (np.abs(y - cy) < half)).astype(np.float32)


_DRAW = {"circles": _circles, "stripes": _stripes, "checkers": _checkers, "rings": _rings,
         "crosses": _crosses}
