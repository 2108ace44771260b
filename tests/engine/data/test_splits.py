"""Tests of engine/data/splits.py: stratified, group-aware splitting of what the data does not split."""
from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from engine.config import DataConfig
from engine.data.dataset_index import Sample
from engine.data.groups import linked_components
from engine.data.sources import load_index
from engine.data.splits import complete_splits, stratified_split
from engine.data.synthetic import make_demo_dataset

FRACTIONS = (0.7, 0.15, 0.15)


def _planted(seed: int, n: int = 240) -> list[Sample]:
    """Samples of 3 imbalanced classes in patients of 1-5 images, with duplicates planted across
    patients (a copy of a patient's image filed under another patient of the same class)."""
    rng = np.random.default_rng(seed)
    samples, patient = [], 0
    while len(samples) < n:
        label, size = int(rng.choice(3, p=[0.6, 0.3, 0.1])), int(rng.integers(1, 6))
        samples += [Sample(f"p{patient}_{i}.png", label, group=f"P{patient}", digest=f"d{patient}_{i}")
                    for i in range(size)]
        patient += 1
    for _ in range(20):  # duplicates: another patient's sample of the same class gets the same digest
        i, j = rng.integers(0, len(samples), 2)
        if samples[i].label == samples[j].label:
            samples[j] = Sample(samples[j].source, samples[j].label, samples[j].group, samples[i].digest)
    return samples


def _reference_components(samples: list[Sample]) -> list[set[int]]:
    """Linked sets by a plain fixed point: merge sets sharing a group id or a digest until none do."""
    sets = [{i} for i in range(len(samples))]
    changed = True
    while changed:
        changed = False
        for a in range(len(sets)):
            for b in range(a + 1, len(sets)):
                keys_a = {k for i in sets[a] for k in (samples[i].group, samples[i].digest)}
                if sets[b] and keys_a & {k for i in sets[b] for k in (samples[i].group, samples[i].digest)}:
                    sets[a] |= sets[b]
                    sets[b] = set()
                    changed = True
    return [s for s in sets if s]


def test_linked_components_join_groups_and_duplicates_transitively():
    samples = _planted(0, n=60)
    components = linked_components(samples)
    found = defaultdict(set)
    for i, root in enumerate(components):
        found[root].add(i)
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, _reference_components(samples)))


@pytest.mark.parametrize("seed", range(40))
def test_no_group_or_duplicate_crosses_a_carved_split_and_class_fractions_stay_within_tolerance(seed):
    samples = _planted(seed)
    splits, origin = complete_splits({"train": samples}, FRACTIONS, seed)
    assert origin == "stratified" and sorted(s.source for p in splits.values() for s in p) == \
        sorted(s.source for s in samples)
    for key in ("group", "digest"):
        split_of = defaultdict(set)
        for split, part in splits.items():
            for sample in part:
                split_of[getattr(sample, key)].add(split)
        assert all(len(where) == 1 for where in split_of.values()), key
    # Tolerance: per class and split, within the class's largest linked set (+1 for rounding) of
    # n_c * fraction: a whole group goes where it fits, else where the deficit is largest.
    components = linked_components(samples)
    for label in range(3):
        in_class = [i for i, s in enumerate(samples) if s.label == label]
        largest = max(np.bincount(components[in_class]))
        for fraction, part in zip(FRACTIONS, splits.values()):
            count = sum(s.label == label for s in part)
            assert abs(count - len(in_class) * fraction) <= largest + 1, (label, count, len(in_class), largest)


def test_stratified_split_without_groups_is_each_part_within_one_sample():
    labels = np.repeat([0, 1, 2], [50, 30, 7])
    parts = stratified_split(labels, list(FRACTIONS), 3, groups=np.arange(len(labels)))
    assert [p.tolist() for p in parts] == [p.tolist() for p in stratified_split(labels, list(FRACTIONS), 3)]
    for label, n in ((0, 50), (1, 30), (2, 7)):
        for fraction, part in zip(FRACTIONS, parts):
            assert abs((labels[part] == label).sum() - n * fraction) <= 1


def test_load_index_keeps_byte_identical_images_in_one_carved_split_over_seeds(tmp_path):
    root = make_demo_dataset(tmp_path / "data", classes=2, per_class=20, size=16, seed=1)
    originals = sorted((root / "circles").iterdir())[:6]
    for i, original in enumerate(originals):
        (root / "circles" / f"copy_{i}{original.suffix}").write_bytes(original.read_bytes())
    for seed in range(15):
        index = load_index(DataConfig(path=str(root), split_seed=seed))
        for i, original in enumerate(originals):
            copy = str(root / "circles" / f"copy_{i}{original.suffix}")
            where = {split for split, part in index.splits.items() for s in part if s.source in (str(original), copy)}
            assert len(where) == 1, (seed, original.name, where)


def test_load_index_keeps_a_manifest_group_and_a_group_pattern_in_one_split(tmp_path):
    root = make_demo_dataset(tmp_path / "data", classes=2, per_class=24, size=16, seed=2)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    patient = {f: f"P{i // 4}" for i, f in enumerate(files)}  # 4 images per patient, one class each
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group"])
        writer.writerows([f.relative_to(root).as_posix(), f.parent.name, patient[f]] for f in files)
    renamed = root.parent / "renamed"
    for f in files:  # the same patients, now in the file names: <class>/<patient>_<name>
        (renamed / f.parent.name).mkdir(parents=True, exist_ok=True)
        (renamed / f.parent.name / f"{patient[f]}_{f.name}").write_bytes(f.read_bytes())
    for cfg in (DataConfig(path=str(root / "manifest.csv")),
                DataConfig(path=str(renamed), group_pattern=r"^[^/]+/(P\d+)_")):
        for seed in range(10):
            index = load_index(DataConfig(**{**cfg.__dict__, "split_seed": seed}))
            where = defaultdict(set)
            for split, part in index.splits.items():
                for sample in part:
                    where[sample.group].add(split)
            assert len(where) == 12 and all(len(splits) == 1 for splits in where.values())


def test_group_pattern_without_a_capture_group_is_rejected_naming_the_field():
    with pytest.raises(ValueError, match="data.group_pattern needs a capture group"):
        DataConfig(group_pattern=r"P\d+")
    with pytest.raises(ValueError, match="data.group_pattern is not a regular expression"):
        DataConfig(group_pattern="(P")
