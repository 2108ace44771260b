"""Fixture data for the engine/data tests: small image folders with real-world quirks,
CSV manifests and MedMNIST-style .npz archives, all generated (32 px, a few dozen files)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.synthetic import make_demo_dataset

CHEST_XRAY = Path(__file__).parents[2].parent / "shared/datasets/chest-xray-3class"
BUSI = Path(__file__).parents[2].parent / "shared/datasets/busi"
BREASTMNIST = Path(__file__).parents[2].parent / "shared/datasets/npz/breastmnist.npz"
PER_CLASS = 10


@dataclass(frozen=True)
class TinyFolder:
    """A generated image folder and where each planted quirk is.

    Classes: 'checkers', 'circles', 'striped lines' (a space on purpose), PER_CLASS clean
    images each plus the decodable quirks. `odd` maps a quirk's name to its file.
    """

    root: Path
    odd: dict[str, Path]
    # reason -> count that indexing must report for the planted files
    expected_skips: dict[str, int]
    # class -> number of files indexing must keep (clean + decodable-looking quirks)
    expected_counts: dict[str, int]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """The bytes of `image` saved as `fmt` ('JPEG', 'PNG', ...)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(size: int = 32) -> np.ndarray:
    """A uint8 (size, size) ramp: a non-constant image with a known content."""
    return (np.add.outer(np.arange(size), np.arange(size)) * (255 / (2 * size - 2))).astype(np.uint8)


def _quirk_files(size: int) -> dict[str, tuple[str, bytes]]:
    """Quirk name -> (relative path, bytes)."""
    ramp = gradient(size)
    big_jpeg = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), np.uint8)), "JPEG")
    deep = (ramp.astype(np.uint16) * 257)  # spans 0..65535, so 8-bit scaling must restore `ramp`
    rgba = np.dstack([ramp, ramp, ramp, np.full_like(ramp, 128)])
    return {
        "hidden_root_file": (".DS_Store", b"\x00\x00\x00\x01Bud1"),
        "hidden_image": ("circles/.copy_of_image.jpg", encode(Image.fromarray(ramp), "JPEG")),
        "hidden_folder": ("circles/.ipynb_checkpoints/x.png", encode(Image.fromarray(ramp), "PNG")),
        "text": ("circles/notes.txt", b"scanned on 2024-01-01\n"),
        "thumbs_db": ("checkers/Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64)),
        "root_file": ("README.md", b"# tiny\n"),
        "zero_byte": ("circles/empty.jpg", b""),
        "truncated": ("checkers/truncated.jpg", big_jpeg[: len(big_jpeg) // 2]),
        "png_named_jpg": ("checkers/png_named.jpg", encode(Image.fromarray(ramp), "PNG")),
        "cmyk": ("checkers/cmyk.jpg", encode(Image.new("CMYK", (size, size), (0, 255, 0, 0)), "JPEG")),
        "rgba": ("circles/rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG")),
        "gray": ("striped lines/gray.jpg", encode(Image.fromarray(ramp), "JPEG", quality=95)),
        "deep16": ("striped lines/deep16.png", encode(Image.fromarray(deep), "PNG")),
    }


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> TinyFolder:
    """An unsplit image folder with every quirk of `_quirk_files` (read-only: shared)."""
    root = make_demo_dataset(tmp_path_factory.mktemp("tiny") / "data", classes=3,
                             per_class=PER_CLASS, size=32, seed=1)
    (root / "stripes").rename(root / "striped lines")
    odd = {}
    for name, (relative, data) in _quirk_files(32).items():
        odd[name] = root / relative
        odd[name].parent.mkdir(parents=True, exist_ok=True)
        odd[name].write_bytes(data)
    return TinyFolder(
        root=root, odd=odd,
        expected_skips={"hidden": 3, "not an image": 2, "outside class folders": 1, "zero-byte file": 1},
        expected_counts={"checkers": PER_CLASS + 3, "circles": PER_CLASS + 1, "striped lines": PER_CLASS + 2},
    )


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """A train/val/test image folder, 20 images per class (14/3/3), 3 classes."""
    return make_demo_dataset(tmp_path / "split", classes=3, per_class=20, size=32, seed=2, with_splits=True)


@pytest.fixture
def write_manifest(tmp_path):
    """Factory: writes `lines` (header first) to tmp_path/images/<name> next to generated images.

    The folder holds `circles/…` and `stripes/…` from make_demo_dataset (6 per class), so
    rows can name real files; returns the manifest path.
    """
    images = make_demo_dataset(tmp_path / "images", classes=2, per_class=6, size=32, seed=3)

    def write(lines: list[str], name: str = "manifest.csv") -> Path:
        path = images / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return write


@pytest.fixture
def make_npz(tmp_path):
    """Factory: writes a MedMNIST-style archive; returns its path.

    Images are 16x16 with a class-dependent constant plus the sample index, so every image
    is distinct unless the caller copies one. `splits` names the splits to write;
    `drop` leaves out keys; `labels_2d` writes labels shaped (N,1); `channels` 0 = (N,H,W).
    """

    def make(splits=("train", "val", "test"), sizes=(30, 6, 6), classes=3, drop=(),
             labels_2d=True, channels=0, name="data.npz") -> Path:
        arrays = {}
        for split, n, offset in zip(splits, sizes, (0, 1000, 2000)):
            labels = np.arange(n) % classes
            images = np.zeros((n, 16, 16), np.uint8) + (labels * 60).astype(np.uint8)[:, None, None]
            images[:, 0, :] = ((np.arange(n) + offset) % 256)[:, None]
            images[:, 1, :] = ((np.arange(n) + offset) // 256)[:, None]
            if channels:
                images = np.repeat(images[..., None], channels, axis=3)
            arrays[f"{split}_images"] = images
            arrays[f"{split}_labels"] = labels[:, None] if labels_2d else labels
        path = tmp_path / name
        np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
        return path

    return make
