"""Tests of engine/data/groups.py through load_index: label conflicts and cross-split copies."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from engine.config import DataConfig
from engine.data.sources import load_index
from engine.trainer import train_cell
from tests.engine.conftest import BUSI


def _plant_conflict(split_folder):
    original = sorted((split_folder / "train" / "circles").iterdir())[0]
    relabelled = split_folder / "train" / "stripes" / ("relabelled" + original.suffix)
    shutil.copy(original, relabelled)
    return str(original), str(relabelled)


def test_label_conflict_is_skipped_and_counted_by_default(split_folder):
    before = len(load_index(DataConfig(path=str(split_folder))).splits["train"])
    original, relabelled = _plant_conflict(split_folder)
    index = load_index(DataConfig(path=str(split_folder)))
    sources = {s.source for part in index.splits.values() for s in part}
    assert original not in sources and relabelled not in sources
    assert len(index.splits["train"]) == before - 1  # the original left out, the copy never counted in
    assert index.skipped["label conflict"] == 2
    assert {(original, "label conflict"), (relabelled, "label conflict")} <= set(index.skipped_files)


def test_label_conflict_error_names_the_files_and_keep_trains_on_them(split_folder):
    original, relabelled = _plant_conflict(split_folder)
    with pytest.raises(ValueError, match="relabelled"):
        load_index(DataConfig(path=str(split_folder), on_label_conflict="error"))
    index = load_index(DataConfig(path=str(split_folder), on_label_conflict="keep"))
    assert {original, relabelled} <= {s.source for s in index.splits["train"]}
    assert index.skipped["label conflict"] == 0


def test_drop_cross_split_duplicates_leaves_out_train_copies_of_val_and_test_images(split_folder):
    val_image = sorted((split_folder / "val" / "circles").iterdir())[0]
    test_image = sorted((split_folder / "test" / "stripes").iterdir())[0]
    copies = [split_folder / "train" / "circles" / "leak_a.png", split_folder / "train" / "stripes" / "leak_b.png"]
    shutil.copy(val_image, copies[0])
    shutil.copy(test_image, copies[1])
    kept = load_index(DataConfig(path=str(split_folder)))
    assert {str(c) for c in copies} <= {s.source for s in kept.splits["train"]}
    dropped = load_index(DataConfig(path=str(split_folder), drop_cross_split_duplicates=True))
    assert len(dropped.splits["train"]) == len(kept.splits["train"]) - 2
    assert not {str(c) for c in copies} & {s.source for s in dropped.splits["train"]}
    assert dropped.skipped["train copy of a val/test image"] == 2
    assert str(val_image) in {s.source for s in dropped.splits["val"]}


def test_npz_label_conflict_is_skipped_and_rows_stay_aligned(make_npz, tmp_path):
    with np.load(make_npz()) as data:
        arrays = dict(data)
    arrays["train_images"][7] = arrays["train_images"][3]
    arrays["train_labels"][7] = (arrays["train_labels"][3] + 1) % 3
    np.savez(tmp_path / "conflict.npz", **arrays)
    index = load_index(DataConfig(path=str(tmp_path / "conflict.npz")))
    assert index.skipped["label conflict"] == 2 and len(index.splits["train"]) == 28
    for split, part in index.splits.items():
        assert [s.source for s in part] == list(range(len(index.arrays[split])))


@pytest.mark.slow
@pytest.mark.skipif(not BUSI.is_dir(), reason=f"real dataset not present at {BUSI}")
def test_a_cell_on_busi_skips_the_image_under_two_labels_and_counts_it(cpu_cell_config):
    cfg = cpu_cell_config(f"data.path={BUSI}", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
                          "data.loader=torchvision")
    result = train_cell(cfg)
    assert result["status"] == "done"
    assert result["skipped_at_indexing"]["label conflict"] == 2  # benign (433).png = malignant (145).png
    assert sum(map(sum, result["class_counts"].values())) == 780 - 2
    index = load_index(cfg.data)
    assert not {s.source for part in index.splits.values() for s in part} & \
        {str(BUSI / "benign" / "benign (433).png"), str(BUSI / "malignant" / "malignant (145).png")}
