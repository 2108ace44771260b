"""Tests of engine/data/check.py: the data check finds what is planted, and the real dataset."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from engine.config import DataConfig
from engine.data.check import check_dataset, format_report, main_data_check
from engine.data.sources import load_index
from tests.engine.conftest import BREASTMNIST, BUSI, CHEST_XRAY


def test_check_dataset_finds_planted_quirks(tiny_image_folder):
    odd = tiny_image_folder.odd
    report = check_dataset(DataConfig(path=str(tiny_image_folder.root)))
    assert report.format == "imagefolder" and report.carved_splits == ["val", "test"]
    assert report.counts == {"train": tiny_image_folder.expected_counts}
    assert report.extension_mismatches == [(str(odd["png_named_jpg"]), "png")]
    assert [path for path, _ in report.unreadable] == [str(odd["truncated"])]
    assert (str(odd["zero_byte"]), "zero-byte file") in report.skipped_files
    assert dict(report.skipped) == tiny_image_folder.expected_skips
    assert report.duplicates_across == [] and report.duplicates_within == []
    assert report.problems() == ["1 image(s) fail to decode"]


def test_check_dataset_finds_duplicates_across_and_within_splits(split_folder):
    original = split_folder / "train" / "circles" / "circles_0001.png"
    shutil.copy(original, split_folder / "val" / "circles" / "leaked.png")
    shutil.copy(original, split_folder / "train" / "circles" / "same_bytes.png")
    twin = split_folder / "test" / "checkers" / "checkers_0018.jpg"
    shutil.copy(twin, split_folder / "test" / "checkers" / "twin.jpg")
    report = check_dataset(DataConfig(path=str(split_folder)))
    assert report.carved_splits == []
    assert report.duplicates_across == [[("train", str(original)),
                                         ("train", str(split_folder / "train" / "circles" / "same_bytes.png")),
                                         ("val", str(split_folder / "val" / "circles" / "leaked.png"))]]
    assert report.duplicates_within == [[("test", str(twin)), ("test", str(twin.with_name("twin.jpg")))]]
    assert report.label_conflicts == []
    assert report.problems() == ["1 duplicate group(s) span two splits"]


def test_check_dataset_reports_one_image_under_two_labels_as_a_label_conflict(split_folder):
    original = split_folder / "train" / "circles" / "circles_0001.png"
    shutil.copy(original, split_folder / "val" / "stripes" / "relabelled.png")
    report = check_dataset(DataConfig(path=str(split_folder)))
    assert report.label_conflicts == [[("train", str(original), "circles"),
                                       ("val", str(split_folder / "val" / "stripes" / "relabelled.png"), "stripes")]]
    assert report.duplicates_across == []
    assert report.problems() == ["1 image(s) under two labels (skipped when training, data.on_label_conflict)"]
    assert "label conflicts (one image, several labels): 1\n  train:circles:train/circles/circles_0001.png = " \
           "val:stripes:val/stripes/relabelled.png" in format_report(report)


def test_check_dataset_does_not_flag_train_duplicates_that_splitting_keeps_together(tiny_image_folder, tmp_path):
    root = shutil.copytree(tiny_image_folder.root, tmp_path / "copy")
    shutil.copy(root / "circles" / "circles_0000.jpg", root / "circles" / "again.jpg")
    report = check_dataset(DataConfig(path=str(root)))
    assert len(report.duplicates_within) == 1
    assert report.problems() == ["1 image(s) fail to decode"]


def test_check_dataset_reports_groups_that_span_the_data_splits(split_folder):
    for split, name in (("train", "P7_a"), ("val", "P7_b")):  # one patient's two images, in two splits
        first = sorted((split_folder / split / "circles").iterdir())[0]
        first.rename(first.with_name(name + first.suffix))
    report = check_dataset(DataConfig(path=str(split_folder), group_pattern=r"(P\d+)_"))
    assert [(group, sorted(split for split, _ in found)) for group, found in report.groups_across] == \
        [("P7", ["train", "val"])]
    assert report.problems() == ["1 group(s) span two splits"]


def test_check_dataset_hashes_npz_images(make_npz, tmp_path):
    with np.load(make_npz()) as data:
        arrays = dict(data)
    arrays["val_images"][2] = arrays["train_images"][5]
    np.savez(tmp_path / "leaky.npz", **arrays)
    report = check_dataset(DataConfig(path=str(tmp_path / "leaky.npz")))
    assert report.format == "npz" and report.num_images == 42
    assert report.duplicates_across == [[("train", "train_images[5]"), ("val", "val_images[2]")]]
    assert report.unreadable == [] and report.extension_mismatches == []


def test_format_report_shows_counts_problems_and_relative_paths(tiny_image_folder):
    text = format_report(check_dataset(DataConfig(path=str(tiny_image_folder.root))))
    assert "3 classes, 36 images" in text
    assert "striped lines" in text and "not in the data: val, test" in text
    assert "unreadable images (full decode fails): 1\n  checkers/truncated.jpg: cannot decode" in text
    assert "content format differs from extension: 1\n  checkers/png_named.jpg: png data" in text
    assert "problems: 1 image(s) fail to decode" in text


def test_format_report_lists_at_most_limit_entries(tiny_image_folder):
    text = format_report(check_dataset(DataConfig(path=str(tiny_image_folder.root))), limit=2)
    assert "skipped while indexing: 7" in text and "  ... and 5 more" in text


def test_main_data_check_exit_codes(split_folder, tiny_image_folder, tmp_path, capsys):
    assert main_data_check(str(split_folder)) == 0
    assert "problems: none" in capsys.readouterr().out
    assert main_data_check(str(tiny_image_folder.root), "imagefolder") == 1
    assert main_data_check(str(tmp_path / "absent")) == 2
    assert "absent" in capsys.readouterr().err


@pytest.mark.skipif(not CHEST_XRAY.is_dir(), reason=f"real dataset not present at {CHEST_XRAY}")
def test_check_dataset_reports_the_real_chest_xray_dataset():
    report = check_dataset(DataConfig(path=str(CHEST_XRAY)))
    assert report.classes == ["Covid", "Normal", "Viral Pneumonia"]
    assert report.counts == {"train": {"Covid": 111, "Normal": 70, "Viral Pneumonia": 70},
                             "val": {"Covid": 26, "Normal": 20, "Viral Pneumonia": 20}}
    assert report.num_images == 317 and report.carved_splits == ["test"]
    assert report.skipped_files == [] and report.unreadable == []
    # The README says 11 PNG files under .jpeg/.jpg names; in this copy the 11 PNGs are named .png.
    assert report.extension_mismatches == []
    assert len(report.duplicates_across) == 6
    assert all({split for split, _ in group} == {"train", "val"} for group in report.duplicates_across)
    assert len(report.duplicates_within) == 4


@pytest.mark.skipif(not BUSI.is_dir(), reason=f"real dataset not present at {BUSI}")
def test_main_data_check_reports_the_busi_label_conflict_and_exits_non_zero(capsys):
    assert main_data_check(str(BUSI)) == 1
    out = capsys.readouterr().out
    assert "label conflicts (one image, several labels): 1\n" in out
    assert "train:benign:benign/benign (433).png = train:malignant:malignant/malignant (145).png" in out
    assert "780 images" in out


@pytest.mark.skipif(not BREASTMNIST.is_file(), reason=f"real dataset not present at {BREASTMNIST}")
def test_the_breastmnist_train_test_duplicate_is_a_label_conflict_skipped_when_indexing():
    report = check_dataset(DataConfig(path=str(BREASTMNIST)))
    assert report.label_conflicts == [[("train", "train_images[115]", "0"), ("test", "test_images[76]", "1")]]
    assert report.duplicates_across == []
    index = load_index(DataConfig(path=str(BREASTMNIST)))
    assert [len(index.splits[s]) for s in ("train", "val", "test")] == [545, 78, 155]
    assert index.skipped["label conflict"] == 2
