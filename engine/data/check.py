"""`medft data check PATH`: what a dataset really contains, before any training.

Reports, for the splits as they are in the data (before `load_index` carves missing ones):
- images per class and split;
- entries skipped while indexing (hidden, zero-byte, non-image, missing) with reasons;
- images that fail a full decode (truncated or corrupt), which training would skip or fail on;
- files whose content format differs from their extension (e.g. PNG data named .jpeg):
  medft reads them correctly (it sniffs content), but other tools may not;
- label conflicts: one content (sha256 of the file bytes; for npz, of the image array) under
  two or more labels; training skips them by default (`data.on_label_conflict`);
- exact duplicates by content hash with one label: groups spanning two splits of the data leak
  evaluation data into training (`data.drop_cross_split_duplicates` drops the train copies);
  groups within a split stay together when `load_index` carves splits out of it;
- groups (`Sample.group`: a manifest's group column or `data.group_pattern`) found in two splits
  of the data: a patient in train and test;
- DICOM files by photometric interpretation, bit depth and transfer syntax (`dicom.py`); those
  that fail to decode are among the unreadable images.

Exit code of `main_data_check`: 0 clean, 1 problems found (unreadable images, label conflicts,
duplicates or groups across splits), 2 the dataset could not be indexed (an unknown or ambiguous
layout among them: the message names the folders).
"""
from __future__ import annotations

import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from engine.config import DataConfig
from engine.data.dataset_index import SPLITS, DatasetIndex, Sample
from engine.data.dicom import DicomOptions, MultiFrameError, dicom_header
from engine.data.groups import groups_across_splits
from engine.data.images import FORMAT_EXTENSIONS, SNIFF_BYTES, BadImageError, open_rgb, sniff_bytes
from engine.data.sources import detect_format, load_index_as_found

MAX_LISTED = 20  # entries printed per list; the report object keeps all of them


@dataclass
class CheckReport:
    """What `check_dataset` found. Sources are file paths, or 'split_images[i]' for npz.

    Attributes:
        root, format, classes: the dataset, its detected format and its sorted classes.
        counts: split -> class -> images, for the splits the data has.
        carved_splits: splits `load_index` will carve out of train (empty when none).
        skipped: reason -> count, and skipped_files: (path, reason), from indexing.
        unreadable: (source, reason) for images that fail a full decode.
        extension_mismatches: (path, content format) where the extension says otherwise.
        label_conflicts: groups of (split, source, class) with equal content and two labels or more.
        duplicates_across: groups of (split, source) with equal content and label in several splits.
        duplicates_within: groups of (split, source) with equal content and label in one split.
        groups_across: (group id, [(split, source)]) for groups found in several splits.
        dicom: (photometric interpretation, bits stored, transfer syntax) -> DICOM files.
    """

    root: str
    format: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    carved_splits: list[str]
    skipped: Counter
    skipped_files: list[tuple[str, str]]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    extension_mismatches: list[tuple[str, str]] = field(default_factory=list)
    duplicates_across: list[list[tuple[str, str]]] = field(default_factory=list)
    duplicates_within: list[list[tuple[str, str]]] = field(default_factory=list)
    label_conflicts: list[list[tuple[str, str, str]]] = field(default_factory=list)
    groups_across: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    dicom: Counter = field(default_factory=Counter)

    @property
    def num_images(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def problems(self) -> list[str]:
        """One line per problem that makes training fail or its evaluation unsound."""
        found = []
        if self.unreadable:
            found.append(f"{len(self.unreadable)} image(s) fail to decode")
        if self.label_conflicts:
            found.append(f"{len(self.label_conflicts)} image(s) under two labels (skipped when training, "
                         "data.on_label_conflict)")
        if self.duplicates_across:
            found.append(f"{len(self.duplicates_across)} duplicate group(s) span two splits")
        if self.groups_across:
            found.append(f"{len(self.groups_across)} group(s) span two splits")
        return found


def check_dataset(cfg: DataConfig) -> CheckReport:
    """Indexes the dataset at `cfg.path` and inspects every image (full decode and hash).

    Args:
        cfg: uses `path`, `format`, `split_fractions`, `split_seed`, `group_pattern` and the
            DICOM options.

    Returns:
        The report.

    Raises:
        FileNotFoundError, ValueError: as `sources.load_index`, when the data cannot be indexed.
    """
    index = load_index_as_found(cfg)
    report = CheckReport(
        root=str(index.root), format=detect_format(index.root, cfg.format), classes=index.classes,
        counts={split: _class_counts(index, split) for split in index.splits},
        carved_splits=[s for s in SPLITS if s not in index.splits],
        skipped=index.skipped, skipped_files=index.skipped_files, groups_across=groups_across_splits(index))
    dicom = DicomOptions.of(cfg)
    by_hash: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for split, samples in index.splits.items():
        for sample in samples:
            by_hash[sample.digest].append((split, _inspect(index, split, sample, report, dicom), sample.label))
    for group in (g for g in by_hash.values() if len(g) > 1):
        if len({label for *_, label in group}) > 1:
            report.label_conflicts.append([(split, source, index.classes[label]) for split, source, label in group])
            continue
        spans_splits = len({split for split, *_ in group}) > 1
        (report.duplicates_across if spans_splits else report.duplicates_within).append(
            [(split, source) for split, source, _ in group])
    return report


def _class_counts(index: DatasetIndex, split: str) -> dict[str, int]:
    counts = Counter(sample.label for sample in index.splits[split])
    return {name: counts[label] for label, name in enumerate(index.classes)}


def _inspect(index: DatasetIndex, split: str, sample: Sample, report: CheckReport, dicom: DicomOptions) -> str:
    """Decodes one sample, recording what is wrong; returns how the report names it."""
    if index.arrays is not None:
        return f"{split}_images[{sample.source}]"
    source = str(sample.source)
    data = Path(source).read_bytes()
    content = sniff_bytes(data[:SNIFF_BYTES])
    if content and Path(source).suffix.lower() not in FORMAT_EXTENSIONS[content]:
        report.extension_mismatches.append((source, content))
    if content == "dicom":
        report.dicom[dicom_header(data)] += 1
    try:
        open_rgb(data, name=source, dicom=dicom)
    except (BadImageError, MultiFrameError) as error:
        report.unreadable.append((source, getattr(error, "reason", str(error))))
    return source


def format_report(report: CheckReport, limit: int = MAX_LISTED) -> str:
    """The report as text for a terminal; lists show at most `limit` entries each."""
    shown = partial(_relative, root=report.root)
    lines = [f"{report.root} ({report.format}): {len(report.classes)} classes, {report.num_images} images"]
    lines += _count_table(report)
    if report.carved_splits:
        lines.append(f"not in the data: {', '.join(report.carved_splits)} (carved out of train when "
                     "training, stratified, with data.split_seed, groups and duplicates kept in one split)")
    reasons = "".join(f", {reason}: {n}" for reason, n in sorted(report.skipped.items()))
    lines += _section(f"skipped while indexing: {sum(report.skipped.values())}{reasons}",
                      [f"{shown(path)}: {reason}" for path, reason in report.skipped_files], limit)
    lines += _section(f"unreadable images (full decode fails): {len(report.unreadable)}",
                      [f"{shown(source)}: {reason}" for source, reason in report.unreadable], limit)
    lines += _section(f"content format differs from extension: {len(report.extension_mismatches)}",
                      [f"{shown(path)}: {fmt} data" for path, fmt in report.extension_mismatches], limit)
    lines += _section(f"DICOM files: {sum(report.dicom.values())}",
                      [f"{n} x {pi}, {bits}-bit, {syntax}" for (pi, bits, syntax), n in sorted(report.dicom.items())],
                      limit)
    lines += _section(f"label conflicts (one image, several labels): {len(report.label_conflicts)}",
                      [" = ".join(f"{split}:{label}:{shown(source)}" for split, source, label in group)
                       for group in report.label_conflicts], limit)
    lines += _section(f"groups across splits: {len(report.groups_across)}",
                      [f"{group}: " + ", ".join(f"{split}:{shown(source)}" for split, source in found)
                       for group, found in report.groups_across], limit)
    for where, groups in (("across splits", report.duplicates_across),
                          ("within a split", report.duplicates_within)):
        lines += _section(f"duplicate groups {where}: {len(groups)} ({sum(map(len, groups))} images)",
                          [" = ".join(f"{split}:{shown(source)}" for split, source in group) for group in groups],
                          limit)
    problems = report.problems()
    lines.append("problems: " + ("; ".join(problems) if problems else "none"))
    return "\n".join(lines)


def _count_table(report: CheckReport) -> list[str]:
    splits = list(report.counts)
    width = max([5, *map(len, report.classes)])
    rows = [f"  {'class':<{width}}" + "".join(f"{s:>8}" for s in splits)]
    for name in report.classes:
        rows.append(f"  {name:<{width}}" + "".join(f"{report.counts[s][name]:>8}" for s in splits))
    rows.append(f"  {'total':<{width}}" + "".join(f"{sum(report.counts[s].values()):>8}" for s in splits))
    return rows


def _section(title: str, entries: list[str], limit: int) -> list[str]:
    more = [f"  ... and {len(entries) - limit} more"] if len(entries) > limit else []
    return [title, *(f"  {entry}" for entry in entries[:limit]), *more]


def _relative(source: str, root: str) -> str:
    base = Path(root) if Path(root).is_dir() else Path(root).parent
    try:
        return str(Path(source).relative_to(base))
    except ValueError:  # npz sources and files outside the dataset folder are shown as they are
        return source


def main_data_check(path: str, fmt: str = "auto", group_pattern: str = "") -> int:
    """Prints the data check of `path`; returns 0 clean, 1 problems found, 2 cannot index."""
    try:
        report = check_dataset(DataConfig(path=path, format=fmt, group_pattern=group_pattern))
    except (FileNotFoundError, ValueError) as error:
        print(f"medft data check: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 1 if report.problems() else 0
