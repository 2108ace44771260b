"""Image-folder layouts: class folders, split folders, and the layouts that are neither.

- `root/<class>/...`: one unsplit dataset; class folders are searched recursively.
- `root/<split>/<class>/...`: split folders named, in any case, train/training, val/valid/
  validation/dev or test/testing (`SPLIT_NAMES`); a 'train' folder is required and nothing
  else may sit beside them.
- Never trained silently (ValueError naming the folders and the fix): class folders that hold
  no image of their own, only sub-folders with the same names in each (a split layout under
  split names medft does not know, e.g. `Train2019/`, `Holdout/`), and classes that are all
  split names (a split folder inside a split folder).
"""
from __future__ import annotations

from pathlib import Path

from engine.data.dataset_index import DatasetIndex, Sample, require_two_classes
from engine.data.images import sniff_image_format

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}
_FIX = ("rename the split folders train/val/test, or describe the data in a CSV manifest "
        "(path,label[,split]) and set data.format=csv")


def file_problem(path: Path) -> str | None:
    """Why a file cannot be a sample (a cheap check: no decoding), or None."""
    if not path.is_file():
        return "missing file"
    if path.stat().st_size == 0:
        return "zero-byte file"
    if sniff_image_format(path) is None:
        return "not an image"
    return None


def scan_image_folder(root: Path, index: DatasetIndex) -> dict[str, list[Sample]]:
    """Image-folder samples per split present in the data ('train' alone when unsplit)."""
    folders = _sub_folders(root, index)
    split_dirs = _split_folders(root, folders)
    if split_dirs is None:
        _reject_nested_splits(root, folders)
        found = {"train": _scan_classes(folders, index)}
    else:
        found = {split: _scan_classes(_sub_folders(d, index), index) for split, d in split_dirs.items()}
    index.classes = sorted(set().union(*found.values()))
    require_two_classes(index.classes, root)
    if all(name.lower() in SPLIT_NAMES for name in index.classes):
        raise ValueError(f"{root}: the classes {index.classes} are all split names (a split folder inside "
                         f"a split folder?); {_FIX}")
    label = {name: i for i, name in enumerate(index.classes)}
    return {split: [Sample(str(p), label[c]) for c, paths in per_class.items() for p in paths]
            for split, per_class in found.items()}


def _list_dir(folder: Path, index: DatasetIndex) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) of `folder`, sorted by name; hidden entries are skipped."""
    folders, files = [], []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            index.skip(entry, "hidden")
        else:
            (folders if entry.is_dir() else files).append(entry)
    return folders, files


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


def _reject_nested_splits(root: Path, class_dirs: list[Path]) -> None:
    """Raises when every class folder holds only sub-folders, with the same names in each."""
    names = []
    for class_dir in class_dirs:
        entries = [e for e in class_dir.iterdir() if not e.name.startswith(".")]
        if not entries or any(not e.is_dir() for e in entries):
            return
        names.append(frozenset(e.name.lower() for e in entries))
    if names and len(names[0]) >= 2 and len(set(names)) == 1:
        raise ValueError(f"{root}: the folders {[d.name for d in class_dirs]} hold no images of their own, "
                         f"only sub-folders named {sorted(names[0])} in each: they look like split folders "
                         f"with class folders inside, not classes; {_FIX}")


def _scan_classes(class_dirs: list[Path], index: DatasetIndex) -> dict[str, list[Path]]:
    """Class name -> image files under each class folder (recursive, sorted)."""
    found = {}
    for class_dir in class_dirs:
        images, pending = [], [class_dir]
        while pending:
            sub_dirs, files = _list_dir(pending.pop(0), index)
            pending.extend(sub_dirs)
            for file in files:
                problem = file_problem(file)
                if problem:
                    index.skip(file, problem)
                else:
                    images.append(file)
        if not images:
            raise ValueError(f"class folder {class_dir} has no images (empty, or only "
                             "hidden, zero-byte or non-image files)")
        found[class_dir.name] = sorted(images)
    return found
