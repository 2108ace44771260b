"""Synthetic image-folder datasets: real JPEG and PNG files a small CNN can learn.

`make_demo_dataset` backs the demo and the tests' fixture data. Each class is a shape or
texture drawn at a random position, scale and orientation over a random background brightness
with pixel noise, so the classes are separable by texture but not by any single pixel. The
`target` task's classes are circles, stripes, checkers, rings and crosses; the `source` task
(the demo pretrains its backbones on it, engine/demo.py) has other ones: squares, waves, dots,
triangles and grids, which share the target's low-level statistics (edges, blobs, periodic
textures, the same brightness and noise) but none of its classes. Even-numbered images are RGB
JPEGs with a slight tint, odd ones grayscale PNGs, so both decoders and both colour paths are
exercised. Everything is drawn from `numpy.random.default_rng([seed, pattern id, image])`: the
same arguments always give the same pixels, and adding images does not change earlier ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PATTERNS = ("circles", "stripes", "checkers", "rings", "crosses")  # the target task's classes
SOURCE_PATTERNS = ("squares", "waves", "dots", "triangles", "grids")
TASKS = {"target": PATTERNS, "source": SOURCE_PATTERNS}
# Cumulative train and val shares for `with_splits` (the rest is test): the protocol's 70/15/15.
_SPLIT_EDGES = (("train", 0.70), ("val", 0.85), ("test", 1.0))


def make_demo_dataset(root: str | Path, classes: int = 3, per_class: int = 40, size: int = 64,
                      seed: int = 0, with_splits: bool = False, task: str = "target") -> Path:
    """Writes `classes * per_class` images as `root/<pattern>/<pattern>_<i>.{jpg,png}`.

    Args:
        root: output folder, created if missing; files of the same names are overwritten.
        classes: number of classes, 2..5 (the first `classes` patterns of the task).
        per_class: images per class.
        size: image side in pixels (at least 16).
        seed: makes the dataset; the same seed gives the same images.
        with_splits: write `root/{train,val,test}/<pattern>/...` instead, 70/15/15 per class.
        task: `target` (`PATTERNS`) or `source` (`SOURCE_PATTERNS`, disjoint from the target's).

    Returns:
        `root` as a Path.

    Raises:
        ValueError: naming the argument that is out of range.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    patterns = TASKS[task]
    if not 2 <= classes <= len(patterns):
        raise ValueError(f"classes must be in 2..{len(patterns)}, got {classes}")
    if per_class < 1 or size < 16:
        raise ValueError(f"per_class must be >= 1 and size >= 16, got {per_class} and {size}")
    root = Path(root)
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    for pattern in patterns[:classes]:
        for i in range(per_class):
            rng = np.random.default_rng([seed, _PATTERN_IDS[pattern], i])
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


def _squares(rng, x, y):
    shape = np.zeros_like(x)
    for _ in range(rng.integers(1, 4)):
        cx, cy, half, angle = *rng.uniform(0.2, 0.8, size=2), rng.uniform(0.07, 0.2), rng.uniform(0, np.pi / 2)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = (y - cy) * np.cos(angle) - (x - cx) * np.sin(angle)
        shape = np.maximum(shape, np.maximum(np.abs(u), np.abs(v)) < half)
    return shape


def _waves(rng, x, y):
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.15, 0.3)
    along, across = x * np.cos(angle) + y * np.sin(angle), y * np.cos(angle) - x * np.sin(angle)
    bend = rng.uniform(0.03, 0.08) * np.sin(2 * np.pi * across / rng.uniform(0.25, 0.5))
    return (np.sin(2 * np.pi * (along + bend) / period + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _dots(rng, x, y):
    cells, angle = rng.uniform(3, 6), rng.uniform(0, np.pi / 2)
    u = (x * np.cos(angle) + y * np.sin(angle)) * cells + rng.uniform()
    v = (y * np.cos(angle) - x * np.sin(angle)) * cells + rng.uniform()
    return (np.hypot(u % 1 - 0.5, v % 1 - 0.5) < rng.uniform(0.2, 0.35)).astype(np.float32)


def _triangles(rng, x, y):
    shape = np.zeros_like(x)
    for _ in range(rng.integers(1, 3)):
        cx, cy, r, turn = *rng.uniform(0.25, 0.75, size=2), rng.uniform(0.12, 0.25), rng.uniform(0, 2 * np.pi)
        inside = np.ones_like(x, dtype=bool)
        for k in range(3):  # inside all three edges' half-planes
            normal = turn + 2 * np.pi * k / 3
            inside &= (x - cx) * np.cos(normal) + (y - cy) * np.sin(normal) < r / 2
        shape = np.maximum(shape, inside)
    return shape


def _grids(rng, x, y):
    cells, width, angle = rng.uniform(3, 6), rng.uniform(0.1, 0.2), rng.uniform(0, np.pi / 2)
    u = (x * np.cos(angle) + y * np.sin(angle)) * cells + rng.uniform()
    v = (y * np.cos(angle) - x * np.sin(angle)) * cells + rng.uniform()
    return ((u % 1 < width) | (v % 1 < width)).astype(np.float32)


_DRAW = {"circles": _circles, "stripes": _stripes, "checkers": _checkers, "rings": _rings,
         "crosses": _crosses, "squares": _squares, "waves": _waves, "dots": _dots, "triangles": _triangles,
         "grids": _grids}
# A target pattern's id is its class index, as before the source task existed, so its pixels are unchanged.
_PATTERN_IDS = {pattern: i for i, pattern in enumerate(PATTERNS + SOURCE_PATTERNS)}
