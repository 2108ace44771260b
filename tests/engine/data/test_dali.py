"""Tests of engine/data/dali.py on DALI's CPU pipeline: parity with the torchvision backend, PIL
routing, bad files inside a DALI batch, npz input and the real chest X-ray folder."""
from __future__ import annotations

import logging
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import DataConfig
from engine.data.dali import dali_available
from engine.data.dataset_index import SPLITS
from engine.data.images import BadImageError
from engine.data.loaders import build_loaders
from engine.data.sources import load_index
from engine.data.synthetic import make_demo_dataset
from tests.engine.conftest import CHEST_XRAY, encode

skip_without_dali = pytest.mark.skipif(not dali_available(), reason="nvidia.dali is not importable")
DALI_MARKS = (pytest.mark.dali, skip_without_dali)
CPU = torch.device("cpu")
# Parity tolerance, in uint8 levels (the normalised difference times std * 255). DALI's and PIL's
# bilinear antialiased resize round differently: measured on the generated 40 px images at
# 36 -> 32 px, at most 1 level per pixel and a mean of at most 0.24 levels per image (0.08 on
# chest-xray at 64 -> 56 px, 0.12 at 232 -> 224 px, also never more than 1 level).
MAX_LEVELS, MEAN_LEVELS = 1.0 + 1e-3, 0.35
EPOCH_VIEWS = ("val", "test", "train_in_order", "train")


def _cfg(path, **overrides) -> DataConfig:
    values = dict(path=str(path), resize=36, crop=32, train_batch_size=8, eval_batch_size=8, num_workers=0)
    return DataConfig(**{**values, **overrides})


def _both(path, seed=684, **overrides):
    cfg = _cfg(path, **overrides)
    index = load_index(cfg)
    return (build_loaders(index, cfg, seed, CPU),
            build_loaders(index, DataConfig(**{**cfg.__dict__, "loader": "dali"}), seed, CPU))


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs() * torch.tensor(DataConfig.std).view(1, 3, 1, 1) * 255


def _assert_parity(reference, dali) -> None:
    images, labels = [], []
    for loader in (reference, dali):
        batches = list(loader)
        images.append(torch.cat([b.images for b in batches]))
        labels.append(torch.cat([b.labels for b in batches]))
    assert torch.equal(labels[0], labels[1])  # same samples, same order
    levels = _levels(*images)
    assert levels.max() <= MAX_LEVELS
    assert levels.mean(dim=(1, 2, 3)).max() <= MEAN_LEVELS


@pytest.mark.dali
@skip_without_dali
def test_dali_matches_torchvision_within_one_level_in_the_same_order(split_folder):
    reference, dali = _both(split_folder)
    for view in EPOCH_VIEWS:
        for epoch in (0, 1):
            getattr(reference, view).set_epoch(epoch)
            getattr(dali, view).set_epoch(epoch)
            _assert_parity(getattr(reference, view), getattr(dali, view))
            assert len(getattr(reference, view)) == len(getattr(dali, view))


@pytest.mark.dali
@skip_without_dali
def test_dali_matches_torchvision_on_non_square_and_exif_rotated_images(tmp_path):
    # Sizes whose resized long side truncates (torchvision: int(36 * long / short)) and an EXIF
    # orientation tag, which PIL (the reference) does not apply.
    rng = np.random.default_rng(7)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    for i, (height, width) in enumerate([(50, 37), (37, 50), (61, 40), (40, 61), (45, 45), (39, 58)]):
        ramp = np.add.outer(np.arange(height), 2 * np.arange(width)).astype(np.float64)
        pixels = np.clip(ramp[..., None] * [1.5, 1.0, 0.5] + rng.normal(0, 12, (height, width, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        for label in ("a", "b"):
            (tmp_path / label).mkdir(exist_ok=True)
            data = encode(image, "JPEG", quality=95, exif=exif) if i % 2 else encode(image, "PNG")
            (tmp_path / label / f"{i}.{'jpg' if i % 2 else 'png'}").write_bytes(data)
    # The same images under both labels: a label conflict the test keeps, to decode each file twice.
    reference, dali = _both(tmp_path, split_fractions=(1.0, 0.0, 0.0), on_label_conflict="keep")
    _assert_parity(reference.train_in_order, dali.train_in_order)
    assert dali.train_in_order.decoder.counts["dali"] == 12


@pytest.mark.dali
@skip_without_dali
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dali_batches_are_channels_last_views_in_the_requested_dtype(split_folder, dtype):
    cfg = _cfg(split_folder, loader="dali")
    batch = next(iter(build_loaders(load_index(cfg), cfg, 0, CPU, dtype=dtype).val))
    assert batch.images.shape == (8, 3, 32, 32) and batch.images.dtype == dtype
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert batch.images.min() < 0 < batch.images.max()  # normalised


@pytest.mark.dali
@skip_without_dali
def test_dali_routes_undecodable_formats_to_pil_and_names_the_corrupt_file(tiny_image_folder):
    reference, dali = _both(tiny_image_folder.root)
    views = ("train_in_order", "val", "test")  # train_in_order shares train's decoder
    for view in views:
        _assert_parity(getattr(reference, view), getattr(dali, view))
    decoders = {split: getattr(dali, split).decoder for split in SPLITS}
    reasons = {decoders[s].sources[p]: why for s in SPLITS for p, why in decoders[s].pil_reasons.items()}
    odd = {name: str(path) for name, path in tiny_image_folder.odd.items()}
    assert reasons[odd["deep16"]].startswith("mode I") and reasons[odd["cmyk"]] == "mode CMYK"
    assert reasons[odd["rgba"]] == "mode RGBA"
    # The truncated JPEG has a sound header, so it went into a DALI batch and failed there.
    assert reasons[odd["truncated"]] == "DALI could not decode it"
    skipped = [path for view in views for batch in getattr(dali, view) for path in batch.skipped]
    assert skipped == [odd["truncated"]]
    counts = sum((d.counts for d in decoders.values()), start=Counter())
    total = sum(getattr(dali, split).num_samples for split in SPLITS)
    assert counts["pil"] >= 3 and counts["skipped"] == 2  # the truncated file, in both passes
    assert counts["dali"] + counts["pil"] + counts["skipped"] == 2 * total


@pytest.mark.dali
@skip_without_dali
def test_dali_names_and_skips_bad_files_inside_a_batch_and_keeps_the_rest(tmp_path):
    root = make_demo_dataset(tmp_path / "data", classes=2, per_class=6, size=40, seed=4)
    jpeg = (root / "circles" / "circles_0000.jpg").read_bytes()
    header_only = root / "circles" / "header_only.jpg"
    scan = jpeg.index(b"\xff\xda")
    header_only.write_bytes(jpeg[:scan + 2 + int.from_bytes(jpeg[scan + 2:scan + 4], "big")])  # no pixel data
    cfg = _cfg(root, loader="dali", eval_batch_size=16, split_fractions=(1.0, 0.0, 0.0))
    loaders = build_loaders(load_index(cfg), cfg, 0, CPU)
    emptied = root / "stripes" / "stripes_0002.jpg"
    emptied.write_bytes(b"")  # a file emptied after indexing: DALI's reader fails on it
    batches = list(loaders.train_in_order)
    assert len(batches) == 1 and set(batches[0].skipped) == {str(header_only), str(emptied)}
    assert len(batches[0].labels) == 11 and batches[0].images.shape[0] == 11
    decoder = loaders.train_in_order.decoder
    assert decoder.counts == {"dali": 11, "pil": 0, "skipped": 2}
    assert {decoder.sources[p] for p, why in decoder.pil_reasons.items() if why == "DALI could not decode it"} == {
        str(header_only), str(emptied)}  # both went into the DALI batch first
    error_cfg = DataConfig(**{**cfg.__dict__, "on_bad_image": "error"})
    with pytest.raises(BadImageError, match="header_only.jpg"):
        list(build_loaders(load_index(error_cfg), error_cfg, 0, CPU).train_in_order)


@pytest.mark.dali
@skip_without_dali
@pytest.mark.parametrize("channels", [0, 1, 3])
def test_dali_reads_npz_rows_like_torchvision(make_npz, channels):
    reference, dali = _both(make_npz(channels=channels), resize=12, crop=10)
    for split in SPLITS:
        _assert_parity(getattr(reference, split), getattr(dali, split))


@pytest.mark.dali
@skip_without_dali
@pytest.mark.skipif(not CHEST_XRAY.is_dir(), reason="../shared/datasets/chest-xray-3class is absent")
def test_dali_decodes_or_routes_every_chest_xray_file(tmp_path):
    cfg = _cfg(CHEST_XRAY, resize=64, crop=56, eval_batch_size=64, num_workers=2, loader="dali")
    loaders = build_loaders(load_index(cfg), cfg, 0, CPU)
    rows = sum(len(b.labels) for view in ("train_in_order", "val", "test") for b in getattr(loaders, view))
    counts = sum((getattr(loaders, view).decoder.counts for view in ("train", "val", "test")),
                 start=Counter())
    assert rows == counts["dali"] + counts["pil"] == 317 and counts["skipped"] == 0


def test_dali_loader_without_dali_says_what_to_install(split_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    assert not dali_available()
    cfg = _cfg(split_folder, loader="dali")
    with pytest.raises(ImportError, match="pip install nvidia-dali"):
        build_loaders(load_index(cfg), cfg, 0, CPU)


@pytest.mark.parametrize("installed", [True, False])
def test_auto_loader_on_cpu_picks_dali_when_importable_and_logs_why(split_folder, monkeypatch, caplog, installed):
    if installed and not dali_available():
        pytest.skip("nvidia.dali is not importable")
    if not installed:
        monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    cfg = _cfg(split_folder, loader="auto")
    with caplog.at_level(logging.INFO, logger="engine.data.loaders"):
        loaders = build_loaders(load_index(cfg), cfg, 0, CPU)
    expected = "dali" if installed else "torchvision"
    lines = [r.getMessage() for r in caplog.records if r.name == "engine.data.loaders"]
    assert len(lines) == 1 and lines[0].startswith(f"data.loader=auto -> {expected}: ")
    assert hasattr(loaders.val, "decoder") == installed
