"""Tests of engine/data/images.py (content sniffing, decoding) and engine/data/sources.py."""
from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from engine.config import DataConfig
from engine.data.dataset_index import SPLITS, Sample
from engine.data.images import BadImageError, open_rgb, sniff_image_format, to_rgb
from engine.data.sources import load_index, load_index_as_found
from engine.data.splits import stratified_split
from tests.engine.conftest import encode, gradient


# --- images.py -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP"])
def test_sniff_image_format_reads_magic_bytes_whatever_the_extension(tmp_path, fmt):
    path = tmp_path / "image.txt"
    path.write_bytes(encode(Image.fromarray(gradient(16)).convert("RGB"), fmt))
    assert sniff_image_format(path) == fmt.lower()


def test_sniff_image_format_returns_none_for_non_images(tiny_image_folder):
    odd = tiny_image_folder.odd
    assert sniff_image_format(odd["png_named_jpg"]) == "png"
    for name in ("text", "thumbs_db", "zero_byte", "root_file"):
        assert sniff_image_format(odd[name]) is None, name


@pytest.mark.parametrize("quirk", ["gray", "cmyk", "rgba", "deep16", "png_named_jpg"])
def test_open_rgb_returns_8bit_rgb_for_every_mode(tiny_image_folder, quirk):
    image = open_rgb(tiny_image_folder.odd[quirk])
    assert image.mode == "RGB"
    assert np.asarray(image).shape == (32, 32, 3)


def test_open_rgb_scales_16bit_range_onto_8bit(tiny_image_folder):
    # The fixture stored gradient * 257, which spans 0..65535 exactly: scaling must undo it.
    pixels = np.asarray(open_rgb(tiny_image_folder.odd["deep16"]))
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], gradient(32))


def test_to_rgb_maps_32bit_integers_within_16bit_range_like_16bit():
    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    pixels = np.asarray(to_rgb(Image.fromarray(values * 257)))[..., 0]
    assert np.array_equal(pixels, values)


def test_to_rgb_stretches_32bit_integers_beyond_16bit_range():
    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    pixels = np.asarray(to_rgb(Image.fromarray(values * 100_000 + 7)))[..., 0]
    assert np.array_equal(pixels, values)  # min..max onto 0..255: 256 steps land on integers


def test_open_rgb_composites_alpha_over_black(tiny_image_folder):
    pixels = np.asarray(open_rgb(tiny_image_folder.odd["rgba"])).astype(np.int64)
    expected = gradient(32).astype(np.float64) * 128 / 255  # alpha 128 over black
    # atol 1: PIL's integer alpha blending rounds differently from float math.
    assert np.abs(pixels[..., 0] - expected).max() <= 1


def test_open_rgb_converts_cmyk_colours(tiny_image_folder):
    pixels = np.asarray(open_rgb(tiny_image_folder.odd["cmyk"]))
    # Pure magenta ink (C=0, M=255, Y=0, K=0) is RGB (255, 0, 255); atol for JPEG loss.
    assert np.abs(pixels.astype(int) - [255, 0, 255]).max() <= 8


def test_open_rgb_raises_bad_image_error_naming_file_when_truncated(tiny_image_folder):
    path = tiny_image_folder.odd["truncated"]
    with pytest.raises(BadImageError, match="truncated.jpg") as caught:
        open_rgb(path)
    assert caught.value.path == str(path)
    assert isinstance(caught.value, ValueError)


def test_open_rgb_raises_file_not_found_naming_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        open_rgb(tmp_path / "nothing.png")


def test_bad_image_error_keeps_path_and_reason_through_pickle():
    error = pickle.loads(pickle.dumps(BadImageError("a/b.jpg", "cannot decode")))
    assert (error.path, error.reason, str(error)) == ("a/b.jpg", "cannot decode", "a/b.jpg: cannot decode")


# --- image folders -----------------------------------------------------------------------

def _labels_per_class(index, split):
    return Counter(index.classes[s.label] for s in index.splits[split])


def test_load_index_image_folder_skips_and_counts_quirks(tiny_image_folder):
    index = load_index_as_found(DataConfig(path=str(tiny_image_folder.root)))
    assert index.classes == ["checkers", "circles", "striped lines"]
    assert dict(index.skipped) == tiny_image_folder.expected_skips
    assert _labels_per_class(index, "train") == tiny_image_folder.expected_counts
    skipped_paths = {path for path, _ in index.skipped_files}
    for quirk in ("hidden_root_file", "text", "thumbs_db", "zero_byte", "root_file", "hidden_image"):
        assert str(tiny_image_folder.odd[quirk]) in skipped_paths, quirk
    assert index.split_origin == "stratified" and list(index.splits) == ["train"]


def test_load_index_image_folder_splits_unsplit_data_70_15_15(tiny_image_folder):
    index = load_index(DataConfig(path=str(tiny_image_folder.root)))
    assert list(index.splits) == list(SPLITS) and index.split_origin == "stratified"
    for name, n in tiny_image_folder.expected_counts.items():
        label = index.classes.index(name)
        for split, fraction in zip(SPLITS, (0.7, 0.15, 0.15)):
            count = sum(s.label == label for s in index.splits[split])
            assert abs(count - n * fraction) <= 1, (name, split, count)
    all_sources = [s.source for split in SPLITS for s in index.splits[split]]
    assert len(all_sources) == len(set(all_sources)) == sum(tiny_image_folder.expected_counts.values())


def test_load_index_split_is_deterministic_and_seeded(tiny_image_folder):
    first = load_index(DataConfig(path=str(tiny_image_folder.root), split_seed=5))
    again = load_index(DataConfig(path=str(tiny_image_folder.root), split_seed=5))
    other = load_index(DataConfig(path=str(tiny_image_folder.root), split_seed=6))
    assert first.splits == again.splits
    assert first.splits["test"] != other.splits["test"]


def test_load_index_keeps_split_layout_of_the_data(split_folder):
    index = load_index(DataConfig(path=str(split_folder)))
    assert index.split_origin == "data"
    assert [len(index.splits[s]) for s in SPLITS] == [42, 9, 9]
    assert all(f"/{split}/" in s.source for split in SPLITS for s in index.splits[split])


def test_load_index_carves_test_from_train_when_data_has_train_and_val(split_folder):
    (split_folder / "val").rename(split_folder / "Validation")
    for folder in (split_folder / "test").iterdir():
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    (split_folder / "test").rmdir()
    index = load_index(DataConfig(path=str(split_folder)))
    assert index.split_origin == "stratified"
    assert all("/Validation/" in s.source for s in index.splits["val"]) and len(index.splits["val"]) == 9
    # 14 train images per class, test fraction 0.15 / (0.7 + 0.15) of them: round(2.47) = 2.
    assert _labels_per_class(index, "test") == {name: 2 for name in index.classes}
    assert all("/train/" in s.source for s in index.splits["test"] + index.splits["train"])


def test_load_index_takes_union_of_classes_across_splits(split_folder):
    extra = split_folder / "train" / "only in train"
    extra.mkdir()
    (extra / "a.png").write_bytes(encode(Image.fromarray(gradient(16)), "PNG"))
    index = load_index(DataConfig(path=str(split_folder)))
    assert index.classes == ["checkers", "circles", "only in train", "stripes"]
    assert _labels_per_class(index, "val") == {"checkers": 3, "circles": 3, "stripes": 3}
    assert _labels_per_class(index, "train")["only in train"] == 1


def test_load_index_rejects_empty_class_folder_naming_it(split_folder):
    (split_folder / "val" / "empty class").mkdir()
    with pytest.raises(ValueError, match="empty class"):
        load_index(DataConfig(path=str(split_folder)))


def test_load_index_rejects_one_class_naming_path(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.png").write_bytes(encode(Image.fromarray(gradient(16)), "PNG"))
    with pytest.raises(ValueError, match=f"{tmp_path}.*at least 2 classes"):
        load_index(DataConfig(path=str(tmp_path)))


def test_load_index_rejects_split_folders_mixed_with_class_folders(split_folder):
    (split_folder / "stray class").mkdir()
    with pytest.raises(ValueError, match="stray class"):
        load_index(DataConfig(path=str(split_folder)))


def test_load_index_raises_file_not_found_naming_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        load_index(DataConfig(path=str(tmp_path / "no_such_dataset")))


@pytest.mark.parametrize("field, value", [("split_fractions", (0.5, 0.3, 0.1)), ("split_seed", -1)])
def test_load_index_rejects_bad_split_config_naming_field(split_folder, field, value):
    with pytest.raises(ValueError, match=f"data.{field}"):
        load_index(DataConfig(path=str(split_folder), **{field: value}))


def test_load_index_rejects_unknown_file_type_and_contradicting_format(tmp_path, split_folder):
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(ValueError, match="data.json"):
        load_index(DataConfig(path=str(tmp_path / "data.json")))
    with pytest.raises(ValueError, match="data.format"):
        load_index(DataConfig(path=str(split_folder), format="csv"))


# --- stratified split ----------------------------------------------------------------------

def test_stratified_split_proportions_per_class_within_one_sample():
    labels = [0] * 40 + [1] * 27 + [2] * 3 + [3] * 101
    parts = stratified_split(labels, [0.7, 0.15, 0.15], seed=684)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    for label, n in Counter(labels).items():
        for part, fraction in zip(parts, (0.7, 0.15, 0.15)):
            count = int(np.sum(np.asarray(labels)[part] == label))
            assert count >= 1, (label, fraction)  # every class in every part (n >= 3)
            if n >= 10:
                assert abs(count - n * fraction) <= 1, (label, fraction, count)


def test_stratified_split_ignores_class_order_of_other_classes():
    # Each class is shuffled from (seed, class) alone, so adding a class leaves others alone.
    two = stratified_split([0] * 20 + [1] * 20, [0.7, 0.3], seed=1)
    three = stratified_split([0] * 20 + [1] * 20 + [2] * 20, [0.7, 0.3], seed=1)
    assert np.array_equal(three[1][three[1] < 40], two[1])


# --- CSV manifests ---------------------------------------------------------------------------

def test_load_index_csv_resolves_paths_and_string_labels(write_manifest):
    manifest = write_manifest(["path,label"] + [f"{c}/{c}_{i:04d}.{'jpg' if i % 2 == 0 else 'png'},{c}"
                                                for c in ("circles", "stripes") for i in range(6)])
    index = load_index_as_found(DataConfig(path=str(manifest)))
    assert index.classes == ["circles", "stripes"]
    assert len(index.splits["train"]) == 12 and not index.skipped
    assert all(sniff_image_format(s.source) for s in index.splits["train"])


def test_load_index_csv_skips_and_reports_missing_files(write_manifest):
    manifest = write_manifest(["Path, Label ,split", "circles/circles_0000.jpg,1,train",
                               "circles/gone.jpg,1,train", "stripes/stripes_0000.jpg,0,val",
                               "stripes/stripes_0002.jpg,0,train", "circles/circles_0002.jpg,1,test"])
    index = load_index(DataConfig(path=str(manifest)))
    assert index.skipped == Counter({"missing file": 1})
    assert index.skipped_files == [(str(manifest.parent / "circles/gone.jpg"), "missing file")]
    assert index.classes == ["0", "1"] and index.split_origin == "data"
    assert [[s.label for s in index.splits[split]] for split in SPLITS] == [[1, 0], [0], [1]]


def test_load_index_csv_orders_integer_labels_numerically(write_manifest):
    rows = [f"circles/circles_{i:04d}.jpg,{label}" for i, label in zip((0, 2, 4), (10, 2, 2))]
    index = load_index_as_found(DataConfig(path=str(write_manifest(["path,label"] + rows))))
    assert index.classes == ["2", "10"]
    assert [s.label for s in index.splits["train"]] == [1, 0, 0]


@pytest.mark.parametrize("lines, message", [
    (["file,class", "circles/circles_0000.jpg,a"], "header"),
    (["path,label,split", "circles/circles_0000.jpg,a,holdout"], "holdout"),
    (["path,label", "circles/circles_0000.jpg,"], "path and a label"),
    (["path,label"], "no rows"),
])
def test_load_index_csv_rejects_malformed_manifest_naming_file(write_manifest, lines, message):
    manifest = write_manifest(lines, name="bad.csv")
    with pytest.raises(ValueError, match=f"bad.csv.*{message}"):
        load_index(DataConfig(path=str(manifest)))


# --- npz archives ------------------------------------------------------------------------------

@pytest.mark.parametrize("labels_2d, channels", [(True, 0), (False, 3)])
def test_load_index_npz_reads_medmnist_layout(make_npz, labels_2d, channels):
    index = load_index(DataConfig(path=str(make_npz(labels_2d=labels_2d, channels=channels))))
    assert index.classes == ["0", "1", "2"] and index.split_origin == "data"
    assert [len(index.splits[s]) for s in SPLITS] == [30, 6, 6]
    assert index.splits["val"][4].source == 4 and index.splits["val"][4].label == 1
    assert index.arrays["train"].shape == ((30, 16, 16, 3) if channels else (30, 16, 16))


def test_load_index_npz_carves_missing_splits_with_their_own_arrays(make_npz):
    path = make_npz(splits=("train",), sizes=(60,))
    index = load_index(DataConfig(path=str(path)))
    original = np.load(path)["train_images"]
    assert index.split_origin == "stratified"
    seen = []
    for split in SPLITS:
        images = index.arrays[split]
        assert len(images) == len(index.splits[split])
        for sample in index.splits[split]:
            row = int(images[sample.source, 0, 0])  # the fixture writes the row number here
            assert np.array_equal(images[sample.source], original[row]) and row % 3 == sample.label
            seen.append(row)
    assert sorted(seen) == list(range(60))


@pytest.mark.parametrize("drop", [("val_labels",), ("train_images",)])
def test_load_index_npz_rejects_missing_keys_naming_them(make_npz, drop):
    with pytest.raises(ValueError, match=drop[0]):
        load_index(DataConfig(path=str(make_npz(drop=drop))))


def test_load_index_npz_rejects_non_uint8_images(tmp_path):
    path = tmp_path / "floats.npz"
    np.savez(path, train_images=np.zeros((4, 8, 8), np.float32), train_labels=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="train_images must be uint8"):
        load_index(DataConfig(path=str(path)))


def test_load_index_rejects_empty_path_naming_field():
    with pytest.raises(ValueError, match="data.path"):
        load_index(DataConfig(path=""))
