"""Tests of engine/data/layouts.py: split-folder names in their common forms, ambiguous layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import DataConfig
from engine.data.check import main_data_check
from engine.data.sources import load_index, load_index_as_found


def _write_images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(folder / f"img_{i}.png")


def _kaggle_mri_layout(root: Path, splits=("Training", "Testing")) -> Path:
    """The brain-tumour MRI set's layout: <Split>/<class>/..., 4 classes."""
    for s, split in enumerate(splits):
        for c, name in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
            _write_images(root / split / name, 3 + s, seed=10 * s + c)
    return root


@pytest.mark.parametrize("splits, found", [(("Training", "Testing"), ["train", "test"]),
                                           (("TRAIN", "Dev", "test"), ["train", "val", "test"]),
                                           (("training", "validation", "testing"), ["train", "val", "test"])])
def test_split_folders_in_common_forms_are_read_as_splits_of_n_classes(tmp_path, splits, found):
    _kaggle_mri_layout(tmp_path, splits)
    index = load_index_as_found(DataConfig(path=str(tmp_path)))
    assert index.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert sorted(index.splits) == sorted(found)
    assert [len(index.splits[s]) for s in found] == [4 * (3 + i) for i in range(len(found))]


def test_training_testing_layout_gets_val_carved_from_training_only(tmp_path):
    _kaggle_mri_layout(tmp_path)
    index = load_index(DataConfig(path=str(tmp_path)))
    testing = {str(p) for p in (tmp_path / "Testing").rglob("*.png")}
    assert {s.source for s in index.splits["test"]} == testing
    assert len(index.splits["train"]) + len(index.splits["val"]) == 12


def test_class_folders_holding_only_same_named_sub_folders_are_an_error_naming_them(tmp_path):
    _kaggle_mri_layout(tmp_path, ("Fold2019", "Holdout"))  # split folders under names medft does not know
    with pytest.raises(ValueError, match=r"\['Fold2019', 'Holdout'\].*look like split folders.*data.format=csv"):
        load_index(DataConfig(path=str(tmp_path)))


def test_class_folders_with_per_patient_sub_folders_are_classes(tmp_path):
    for name, patients in (("benign", ("P1", "P2")), ("malignant", ("P3", "P4"))):
        for i, patient in enumerate(patients):
            _write_images(tmp_path / name / patient, 2, seed=i + len(name))
    index = load_index_as_found(DataConfig(path=str(tmp_path)))
    assert index.classes == ["benign", "malignant"] and len(index.splits["train"]) == 8


def test_classes_that_are_all_split_names_are_an_error(tmp_path):
    for name in ("train", "test"):
        _write_images(tmp_path / "train" / name, 2, seed=len(name))
    with pytest.raises(ValueError, match=r"the classes \['test', 'train'\] are all split names"):
        load_index(DataConfig(path=str(tmp_path)))


def test_data_check_exits_non_zero_on_an_ambiguous_layout_naming_the_folders(tmp_path, capsys):
    _kaggle_mri_layout(tmp_path, ("Fold2019", "Holdout"))
    assert main_data_check(str(tmp_path)) == 2
    assert "Fold2019" in capsys.readouterr().err
