"""Dataset indexes: which samples, which classes, which split, from three on-disk formats.

`load_index(cfg)` reads `cfg.path` (a `DataConfig`) as one of:
- **imagefolder**: `root/<class>/...` or `root/{train,val,test}/<class>/...` ('valid' and
  'validation' also name val). Class folders are searched recursively.
- **csv**: a manifest with a header `path,label[,split]` (extra columns are ignored), paths
  relative to the manifest's folder, labels class names or non-negative integers.
- **npz**: MedMNIST style, `{train,val,test}_images` (N,H,W) or (N,H,W,C) uint8 and
  `{train,val,test}_labels` (N,) or (N,1) (read by `npz.py`).
The index's types (`Sample`, `DatasetIndex`, `SPLITS`) are `dataset_index.py`'s.

Rules shared by all formats:
- Classes are sorted (integer labels numerically) and a label is the class's position.
  Classification needs at least two classes. npz classes are "0".."K-1".
- Files are recognised by content (`images.sniff_image_format`). Hidden entries (leading '.'),
  zero-byte files, non-images, files outside class folders and manifest rows naming missing
  files are skipped and counted in `DatasetIndex.skipped` / `skipped_files`, never fatal.
  Decoding is not attempted here: truncated images are found by `check.py` or at load time.
- An image folder class with no usable image is an error (ValueError naming the folder): an
  empty class would silently change the label set.
- Missing splits are carved out of train, stratified by class, with `cfg.split_seed`:
  no split at all -> train/val/test by `cfg.split_fractions`; train+val -> test carved from
  train (val stays the data's, so early stopping sees the authors' validation set, and test
  never reuses val); train+test -> val carved likewise. The carved fractions are the
  configured ones renormalised over the parts cut from train. `split_origin` is 'data' only
  when all three splits come from the data, else 'stratified'.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from engine.config import DataConfig
from engine.data.dataset_index import SPLITS, DatasetIndex, Sample, require_two_classes
from engine.data.images import sniff_image_format
from engine.data.npz import regroup_arrays_, scan_npz
from engine.data.splits import complete_splits

FORMATS = ("imagefolder", "csv", "npz")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_INT_LABEL = re.compile(r"^[+-]?\d+$")


def load_index(cfg: DataConfig) -> DatasetIndex:
    """Indexes the dataset at `cfg.path` (see the module docstring for the rules).

    Args:
        cfg: uses `path`, `format`, `split_fractions` and `split_seed`.

    Returns:
        The index, with splits 'train', 'val' and 'test'.

    Raises:
        FileNotFoundError: when `cfg.path` does not exist.
        ValueError: naming the file or field, for an unrecognised format, a malformed manifest
            or archive, an empty class folder, fewer than two classes or bad split fractions.
    """
    index = load_index_as_found(cfg)
    given = index.splits
    index.splits, index.split_origin = complete_splits(given, cfg.split_fractions, cfg.split_seed)
    if index.arrays is not None:
        regroup_arrays_(index, given)
    return index


def load_index_as_found(cfg: DataConfig) -> DatasetIndex:
    """As `load_index`, but `splits` holds only the splits the data itself has.

    An unsplit dataset comes back as 'train' alone; `split_origin` still says whether
    `load_index` will carve splits ('stratified') or not ('data'). For the data check.
    """
    if not cfg.path:
        raise ValueError("data.path is empty: set it to an image folder, a .csv manifest or a .npz file")
    path = Path(cfg.path).expanduser()
    _check_split_config(cfg)
    fmt = detect_format(path, cfg.format)
    index = DatasetIndex(root=path, classes=[], splits={})
    scan = {"imagefolder": _scan_image_folder, "csv": _scan_manifest, "npz": scan_npz}[fmt]
    index.splits = scan(path, index)
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


def _file_problem(path: Path) -> str | None:
    """Why a file cannot be a sample (a cheap check: no decoding), or None."""
    if not path.is_file():
        return "missing file"
    if path.stat().st_size == 0:
        return "zero-byte file"
    if sniff_image_format(path) is None:
        return "not an image"
    return None


def _list_dir(folder: Path, index: DatasetIndex) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) of `folder`, sorted by name; hidden entries are skipped."""
    folders, files = [], []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            index.skip(entry, "hidden")
        else:
            (folders if entry.is_dir() else files).append(entry)
    return folders, files


def _scan_image_folder(root: Path, index: DatasetIndex) -> dict[str, list[Sample]]:
    """Image-folder samples per split present in the data ('train' alone when unsplit)."""
    folders = _sub_folders(root, index)
    split_dirs = _split_folders(root, folders)
    if split_dirs is None:
        found = {"train": _scan_classes(folders, index)}
    else:
        found = {split: _scan_classes(_sub_folders(d, index), index) for split, d in split_dirs.items()}
    index.classes = sorted(set().union(*found.values()))
    require_two_classes(index.classes, root)
    label = {name: i for i, name in enumerate(index.classes)}
    return {split: [Sample(str(p), label[c]) for c, paths in per_class.items() for p in paths]
            for split, per_class in found.items()}


def _sub_folders(folder: Path, index: DatasetIndex) -> list[Path]:
    """Sub-folders of a dataset or split folder; files there are skipped and counted."""
    folders, files = _list_dir(folder, index)
    for stray in files:
        index.skip(stray, "outside class folders")
    return folders


def _split_folders(root: Path, folders: list[Path]) -> dict[str, Path] | None:
    """Split name -> folder for a split layout, or None when `folders` are class folders."""
    split_of = {d: SPLIT_NAMES.get(d.name.lower()) for d in folders}
    if not any(split_of.values()):
        return None
    names = [s for s in split_of.values() if s]
    if None in split_of.values() or len(set(names)) != len(names) or "train" not in names:
        raise ValueError(f"{root}: a split layout needs a 'train' folder, at most one folder per "
                         f"split and nothing else beside them; found {[d.name for d in folders]}")
    return {split: d for d, split in split_of.items()}


def _scan_classes(class_dirs: list[Path], index: DatasetIndex) -> dict[str, list[Path]]:
    """Class name -> image files under each class folder (recursive, sorted)."""
    found = {}
    for class_dir in class_dirs:
        images, pending = [], [class_dir]
        while pending:
            sub_dirs, files = _list_dir(pending.pop(0), index)
            pending.extend(sub_dirs)
            for file in files:
                problem = _file_problem(file)
                if problem:
                    index.skip(file, problem)
                else:
                    images.append(file)
        if not images:
            raise ValueError(f"class folder {class_dir} has no images (empty, or only "
                             "hidden, zero-byte or non-image files)")
        found[class_dir.name] = sorted(images)
    return found


def _scan_manifest(manifest: Path, index: DatasetIndex) -> dict[str, list[Sample]]:
    """Manifest samples per split named in it ('train' alone when it has no split column)."""
    rows = _read_manifest(manifest)
    index.classes, labels = _class_labels([row[1] for row in rows], manifest)
    given: dict[str, list[Sample]] = {}
    for (relative, _, split), label in zip(rows, labels):
        file = manifest.parent / relative
        problem = _file_problem(file)
        if problem:
            index.skip(file, problem)
        else:
            given.setdefault(split, []).append(Sample(str(file), label))
    if "train" not in given:
        raise ValueError(f"{manifest}: no usable 'train' rows (splits found: {sorted(given)})")
    return given


def _read_manifest(manifest: Path) -> list[tuple[str, str, str]]:
    """(path, label, split) per row; split is 'train' when the manifest has no split column."""
    with open(manifest, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        reader = csv.reader(f)
        header = [name.strip().lower() for name in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise ValueError(f"{manifest}: the header must name the columns path,label[,split]; "
                             f"found {header}")
        columns = [header.index(name) if name in header else None for name in ("path", "label", "split")]
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue  # blank lines, common at the end of hand-edited files
            cells = [values[i].strip() if i is not None and i < len(values) else "" for i in columns]
            rows.append(_manifest_row(cells, columns[2] is not None, f"{manifest}:{reader.line_num}"))
    if not rows:
        raise ValueError(f"{manifest}: the manifest has no rows")
    return rows


def _manifest_row(cells: list[str], has_split: bool, where: str) -> tuple[str, str, str]:
    path, label, split = cells
    if not path or not label:
        raise ValueError(f"{where}: every row needs a path and a label, got {cells[:2]}")
    if not has_split:
        return path, label, "train"
    if split.lower() not in SPLIT_NAMES:
        raise ValueError(f"{where}: split must be one of {sorted(SPLIT_NAMES)}, got '{split}'")
    return path, label, SPLIT_NAMES[split.lower()]


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
