"""Dataset indexes: which samples, which classes, which split, from three on-disk formats.

`load_index(cfg)` reads `cfg.path` (a `DataConfig`) as one of:
- **imagefolder**: `root/<class>/...` or `root/<split>/<class>/...`, split folder names in their
  common forms (`layouts.py`, which also rejects layouts that are neither). Class folders are
  searched recursively.
- **csv**: a manifest with a header `path,label[,split][,group]` (extra columns are ignored),
  paths relative to the manifest's folder, labels class names or non-negative integers, group
  a patient/study id whose samples stay in one split.
- **npz**: MedMNIST style, `{train,val,test}_images` (N,H,W) or (N,H,W,C) uint8 and
  `{train,val,test}_labels` (N,) or (N,1) (read by `npz.py`).
The index's types (`Sample`, `DatasetIndex`, `SPLITS`) are `dataset_index.py`'s.

Rules shared by all formats:
- Classes are sorted (integer labels numerically) and a label is the class's position.
  Classification needs at least two classes. npz classes are "0".."K-1".
- Files are recognised by content (`images.sniff_image_format`, DICOM included). Hidden entries
  (leading '.'), zero-byte files, non-images, files outside class folders and manifest rows
  naming missing files are skipped and counted in `DatasetIndex.skipped` / `skipped_files`,
  never fatal. Decoding is not attempted here: truncated images are found by `check.py` or at
  load time.
- An image folder class with no usable image is an error (ValueError naming the folder): an
  empty class would silently change the label set.
- Every sample's content is hashed (`groups.py`): one content under two labels is handled by
  `data.on_label_conflict` (skip, counted, by default).
- Missing splits are carved out of train, stratified by class, with `cfg.split_seed`, keeping
  every group (equal content, `Sample.group`) in one split (`splits.py`):
  no split at all -> train/val/test by `cfg.split_fractions`; train+val -> test carved from
  train (val stays the data's, so early stopping sees the authors' validation set, and test
  never reuses val); train+test -> val carved likewise. The carved fractions are the
  configured ones renormalised over the parts cut from train. `split_origin` is 'data' only
  when all three splits come from the data, else 'stratified'.
- `data.drop_cross_split_duplicates` leaves out the train copies of val/test images (counted).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from engine.config import DataConfig
from engine.data.dataset_index import SPLITS, DatasetIndex, Sample, require_two_classes
from engine.data.groups import drop_cross_split_copies_, resolve_label_conflicts_, with_digests
from engine.data.layouts import SPLIT_NAMES, file_problem, scan_image_folder
from engine.data.npz import regroup_arrays_, scan_npz
from engine.data.splits import complete_splits

FORMATS = ("imagefolder", "csv", "npz")
_INT_LABEL = re.compile(r"^[+-]?\d+$")


def load_index(cfg: DataConfig) -> DatasetIndex:
    """Indexes the dataset at `cfg.path` (see the module docstring for the rules).

    Args:
        cfg: uses `path`, `format`, `split_fractions`, `split_seed`, `group_pattern`,
            `on_label_conflict` and `drop_cross_split_duplicates`.

    Returns:
        The index, with splits 'train', 'val' and 'test'.

    Raises:
        FileNotFoundError: when `cfg.path` does not exist.
        ValueError: naming the file or field, for an unrecognised format, a malformed manifest
            or archive, an empty class folder, fewer than two classes or bad split fractions.
    """
    index = load_index_as_found(cfg)
    resolve_label_conflicts_(index, cfg.on_label_conflict)
    given = index.splits
    index.splits, index.split_origin = complete_splits(given, cfg.split_fractions, cfg.split_seed,
                                                       index.classes)
    if cfg.drop_cross_split_duplicates:
        drop_cross_split_copies_(index)
    if index.arrays is not None:
        regroup_arrays_(index, given)
    return index


def load_index_as_found(cfg: DataConfig) -> DatasetIndex:
    """As `load_index`, but `splits` holds only the splits the data itself has.

    An unsplit dataset comes back as 'train' alone; `split_origin` still says whether
    `load_index` will carve splits ('stratified') or not ('data'). Samples carry their digest and
    group; label conflicts are still in. For the data check.
    """
    if not cfg.path:
        raise ValueError("data.path is empty: set it to an image folder, a .csv manifest or a .npz file")
    path = Path(cfg.path).expanduser()
    _check_split_config(cfg)
    fmt = detect_format(path, cfg.format)
    index = DatasetIndex(root=path, classes=[], splits={})
    scan = {"imagefolder": scan_image_folder, "csv": _scan_manifest, "npz": scan_npz}[fmt]
    index.splits = scan(path, index)
    if cfg.group_pattern and fmt == "npz":
        raise ValueError(f"data.group_pattern matches file paths; {path} is an npz archive without any")
    with_digests(index, cfg.group_pattern)
    index.split_origin = "data" if set(index.splits) == set(SPLITS) else "stratified"
    return index


def detect_format(path: Path, requested: str = "auto") -> str:
    """The dataset format: `requested`, or for 'auto' a folder, a .csv or a .npz file.

    Raises:
        FileNotFoundError: when `path` does not exist.
        ValueError: when the format cannot be told or contradicts the path.
    """
    if requested not in ("auto", *FORMATS):
        raise ValueError(f"data.format must be one of {['auto', *FORMATS]}, got '{requested}'")
    if not path.exists():
        raise FileNotFoundError(f"data.path: dataset not found: '{path}'")
    if path.is_dir():
        detected = "imagefolder"
    else:
        detected = {".csv": "csv", ".npz": "npz"}.get(path.suffix.lower())
    if requested == "auto":
        if detected is None:
            raise ValueError(f"data.path: cannot tell the format of {path}: expected a folder, "
                             "a .csv manifest or a .npz archive (or set data.format)")
        return detected
    if (requested == "imagefolder") != path.is_dir():
        kind = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"data.format is '{requested}' but {path} is {kind}")
    return requested


def _check_split_config(cfg: DataConfig) -> None:
    fractions = cfg.split_fractions
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"data.split_fractions must be three non-negative fractions "
                         f"(train > 0) summing to 1, got {fractions}")
    if cfg.split_seed < 0:
        raise ValueError(f"data.split_seed must be >= 0, got {cfg.split_seed}")


def _scan_manifest(manifest: Path, index: DatasetIndex) -> dict[str, list[Sample]]:
    """Manifest samples per split named in it ('train' alone when it has no split column)."""
    rows = _read_manifest(manifest)
    index.classes, labels = _class_labels([row[1] for row in rows], manifest)
    given: dict[str, list[Sample]] = {}
    for (relative, _, split, group), label in zip(rows, labels):
        file = manifest.parent / relative
        problem = file_problem(file)
        if problem:
            index.skip(file, problem)
        else:
            given.setdefault(split, []).append(Sample(str(file), label, group))
    if "train" not in given:
        raise ValueError(f"{manifest}: no usable 'train' rows (splits found: {sorted(given)})")
    return given


def _read_manifest(manifest: Path) -> list[tuple[str, str, str, str]]:
    """(path, label, split, group) per row; split is 'train' without a split column, group "" without
    a group column."""
    with open(manifest, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        reader = csv.reader(f)
        header = [name.strip().lower() for name in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise ValueError(f"{manifest}: the header must name the columns path,label[,split][,group]; "
                             f"found {header}")
        columns = [header.index(name) if name in header else None for name in ("path", "label", "split", "group")]
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue  # blank lines, common at the end of hand-edited files
            cells = [values[i].strip() if i is not None and i < len(values) else "" for i in columns]
            rows.append(_manifest_row(cells, columns[2] is not None, f"{manifest}:{reader.line_num}"))
    if not rows:
        raise ValueError(f"{manifest}: the manifest has no rows")
    return rows


def _manifest_row(cells: list[str], has_split: bool, where: str) -> tuple[str, str, str, str]:
    path, label, split, group = cells
    if not path or not label:
        raise ValueError(f"{where}: every row needs a path and a label, got {cells[:2]}")
    if not has_split:
        return path, label, "train", group
    if split.lower() not in SPLIT_NAMES:
        raise ValueError(f"{where}: split must be one of {sorted(SPLIT_NAMES)}, got '{split}'")
    return path, label, SPLIT_NAMES[split.lower()], group


def _class_labels(raw: list[str], manifest: Path) -> tuple[list[str], list[int]]:
    """Class names (integers in numeric order, else strings sorted) and each row's label."""
    if all(_INT_LABEL.match(v) for v in raw):
        values = [int(v) for v in raw]
        if min(values) < 0:
            raise ValueError(f"{manifest}: integer labels must be >= 0, found {min(values)}")
        classes = [str(v) for v in sorted(set(values))]
        keys = [str(v) for v in values]
    else:
        classes, keys = sorted(set(raw)), raw
    require_two_classes(classes, manifest)
    position = {name: i for i, name in enumerate(classes)}
    return classes, [position[k] for k in keys]
