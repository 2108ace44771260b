"""Tests of engine/data/dicom.py and DICOM through the loaders, the data check and a cell.

The images are pydicom's bundled test files (plain, RLE, JPEG-LS and JPEG 2000 variants of
MR_small, CT_small, MR_truncated as the bad input) and copies written with pydicom where a case
needs one (shifted pixels for more samples, MONOCHROME1, a multi-frame file, no extension).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from engine.cell_files import RESULT_FILE, cell_dir  # noqa: E402
from engine.config import DataConfig  # noqa: E402
from engine.data.batches import protocol_resize_crop  # noqa: E402
from engine.data.check import check_dataset  # noqa: E402
from engine.data.dali import dali_available  # noqa: E402
from engine.data.dicom import DicomOptions, MultiFrameError, window_linear  # noqa: E402
from engine.data.images import BadImageError, open_rgb, sniff_image_format  # noqa: E402
from engine.data.loaders import build_loaders  # noqa: E402
from engine.data.sources import load_index  # noqa: E402
from engine.trainer import train_cell  # noqa: E402

CPU = torch.device("cpu")
MR_VARIANTS = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm")


def _gray(path, **options) -> np.ndarray:
    return np.asarray(open_rgb(path, dicom=DicomOptions(**options)))[..., 0].astype(np.int64)


def _write_variant(name: str, destination: Path, shift: int = 0, **attributes) -> Path:
    """A copy of a bundled uncompressed file with its pixels rolled by `shift` and attributes set."""
    ds = pydicom.dcmread(get_testdata_file(name))
    pixels = np.roll(ds.pixel_array, shift, axis=1)
    ds.PixelData = pixels.astype(pixels.dtype).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    destination.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(destination, enforce_file_format=True)
    return destination


@pytest.fixture
def dicom_folder(tmp_path) -> Path:
    """ct/ and mr/ class folders of DICOM files (10 each), one without extension, one truncated."""
    root = tmp_path / "dicom"
    (root / "mr").mkdir(parents=True)
    for name in MR_VARIANTS:
        shutil.copy(get_testdata_file(name), root / "mr" / name)
    for shift in (3, 7, 11):
        _write_variant("MR_small.dcm", root / "mr" / f"shift_{shift}.dcm", shift)
    _write_variant("MR_small.dcm", root / "mr" / "mono1.dcm", 5, PhotometricInterpretation="MONOCHROME1")
    _write_variant("MR_small.dcm", root / "mr" / "no_extension", 9)
    shutil.copy(get_testdata_file("MR_truncated.dcm"), root / "mr" / "MR_truncated.dcm")
    for shift in range(10):
        _write_variant("CT_small.dcm", root / "ct" / f"ct_{shift}.dcm", 4 * shift)
    return root


def test_dicom_is_recognised_by_content_with_or_without_extension(dicom_folder, tmp_path):
    assert sniff_image_format(dicom_folder / "mr" / "no_extension") == "dicom"
    assert sniff_image_format(dicom_folder / "ct" / "ct_0.dcm") == "dicom"
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 200)
    assert sniff_image_format(tmp_path / "fake.dcm") is None


def test_compressed_transfer_syntaxes_decode_to_the_plain_files_pixels():
    plain = _gray(get_testdata_file("MR_small.dcm"))
    for name in MR_VARIANTS[1:]:  # RLE, JPEG-LS lossless and JPEG 2000 lossless
        assert np.array_equal(_gray(get_testdata_file(name)), plain), name


def test_file_window_after_modality_lut_matches_the_dicom_linear_formula():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    x = ds.pixel_array.astype(np.float64)  # no rescale attributes: the modality LUT is the identity
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                        np.where(x > c - 0.5 + (w - 1) / 2, 1.0, (x - (c - 0.5)) / (w - 1) + 0.5))
    assert np.array_equal(_gray(get_testdata_file("MR_small.dcm")), np.rint(expected * 255))


def test_ct_without_window_applies_rescale_then_stretches_its_range():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    assert np.array_equal(_gray(get_testdata_file("CT_small.dcm")), expected)
    # A configured window (lung: -600/1500 HU) replaces it, on Hounsfield units.
    assert np.array_equal(_gray(get_testdata_file("CT_small.dcm"), window=(-600.0, 1500.0)),
                          np.rint(window_linear(hu, -600.0, 1500.0) * 255))


def test_monochrome1_is_inverted(dicom_folder, tmp_path):
    mono2 = _write_variant("MR_small.dcm", tmp_path / "mono2.dcm", 5)
    difference = _gray(dicom_folder / "mr" / "mono1.dcm") + _gray(mono2) - 255
    assert np.abs(difference).max() <= 1  # rint(255 (1 - u)) vs 255 - rint(255 u): ties only


def test_rgb_dicom_is_kept_in_colour():
    path = get_testdata_file("SC_rgb_rle.dcm") or pytest.skip("SC_rgb_rle.dcm not bundled")
    expected = pydicom.dcmread(path).pixel_array
    assert np.array_equal(np.asarray(open_rgb(path)), expected)


def test_multi_frame_file_is_an_error_unless_a_frame_is_picked(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    frames = np.stack([ds.pixel_array, ds.pixel_array[::-1]])
    ds.PixelData, ds.NumberOfFrames = frames.tobytes(), 2
    ds.save_as(tmp_path / "two.dcm", enforce_file_format=True)
    with pytest.raises(MultiFrameError, match="2 frames: set data.dicom_frame"):
        open_rgb(tmp_path / "two.dcm")
    flipped = _gray(tmp_path / "two.dcm", frame=1)
    assert np.array_equal(flipped, _gray(get_testdata_file("MR_small.dcm"))[::-1])
    with pytest.raises(MultiFrameError, match="data.dicom_frame=2 but the file has 2 frame"):
        open_rgb(tmp_path / "two.dcm", dicom=DicomOptions(frame=2))


def test_truncated_dicom_is_a_bad_image_named_in_the_data_check(dicom_folder):
    truncated = str(dicom_folder / "mr" / "MR_truncated.dcm")
    with pytest.raises(BadImageError, match="MR_truncated.dcm: cannot decode"):
        open_rgb(truncated)
    report = check_dataset(DataConfig(path=str(dicom_folder)))
    assert [path for path, _ in report.unreadable] == [truncated]
    # 10 CT, MR_small, 3 shifted, the one without extension and the truncated one
    assert report.dicom[("MONOCHROME2", 16, "Explicit VR Little Endian")] == 16
    assert report.dicom[("MONOCHROME2", 16, "RLE Lossless")] == 1
    assert report.dicom[("MONOCHROME2", 16, "JPEG-LS Lossless Image Compression")] == 1
    assert report.dicom[("MONOCHROME2", 16, "JPEG 2000 Image Compression (Lossless Only)")] == 1
    assert report.dicom[("MONOCHROME1", 16, "Explicit VR Little Endian")] == 1
    assert sum(report.dicom.values()) == 20 and report.extension_mismatches == []


def _all_batches(batches):
    images, skipped = [], []
    for batch in batches:
        images.append(batch.images.float().cpu())
        skipped += batch.skipped
    return torch.cat(images), skipped


@pytest.mark.parametrize("loader", ["torchvision", "dali", "gpu_cache"])
def test_dicom_through_every_backend_gives_the_pil_pixels_and_skips_the_truncated_file(dicom_folder, loader):
    if loader == "dali" and not dali_available():
        pytest.skip("nvidia-dali is not installed")
    cfg = DataConfig(path=str(dicom_folder), resize=36, crop=32, num_workers=0, train_batch_size=4,
                     eval_batch_size=8, split_fractions=(1.0, 0.0, 0.0), loader=loader)
    index = load_index(cfg)
    truncated = str(dicom_folder / "mr" / "MR_truncated.dcm")
    # The reference: each readable file through open_rgb and the protocol's resize, crop, ToTensor, Normalize.
    to_input = transforms.Compose([protocol_resize_crop(cfg), transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)])
    reference = torch.stack([to_input(open_rgb(s.source)) for s in index.splits["train"] if s.source != truncated])
    loaders = build_loaders(index, cfg, 0, CPU)
    images, skipped = _all_batches(loaders.train_in_order)
    assert skipped == [truncated]
    assert images.shape == (19, 3, 32, 32) and torch.equal(images, reference)
    if loader == "dali":  # DICOM goes through DALI's CPU (PIL) route, the truncated file named as bad
        assert loaders.train_in_order.decoder.counts == {"dali": 0, "pil": 19, "skipped": 1}


def test_one_epoch_cell_on_a_dicom_dataset_completes(dicom_folder, cpu_cell_config, tmp_path):
    cfg = cpu_cell_config(f"data.path={dicom_folder}", "trainer.epochs=1", "data.loader=torchvision")
    result = train_cell(cfg)
    assert result["status"] == "done"
    saved = json.loads((cell_dir(cfg) / RESULT_FILE).read_text())
    assert saved["class_counts"]["train"] and sum(map(sum, saved["class_counts"].values())) == 20
    assert saved["skipped_images"] >= (1 if any("MR_truncated" in s.source for s in load_index(cfg.data).splits["train"])
                                       else 0)
