"""`medft data check PATH`: what a dataset really contains, before any training.

Reports, for the splits as they are in the data (before `load_index` carves missing ones):
- images per class and split;
- entries skipped while indexing (hidden, zero-byte, non-image, missing) with reasons;
- images that fail a full decode (truncated or corrupt), which training would skip or fail on;
- files whose content format differs from their extension (e.g. PNG data named .jpeg):
  medft reads them correctly (it sniffs content), but other tools may not;
- exact duplicates by content hash (sha256 of the file bytes; for npz, of the image array):
  groups spanning two splits leak evaluation data into training; groups within a split that
  `load_index` will divide can end up in two splits as well.

Exit code of `main_data_check`: 0 clean, 1 problems found (unreadable images or leaking
duplicates), 2 the dataset could not be indexed.
"""
from __future__ import annotations

import hashlib
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from engine.config import DataConfig
from engine.data.images import FORMAT_EXTENSIONS, BadImageError, open_rgb, sniff_bytes
from engine.data.dataset_index import SPLITS, DatasetIndex
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
        duplicates_across: groups of (split, source) with equal content in several splits.
        duplicates_within: groups of (split, source) with equal content in one split.
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

    @property
    def num_images(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def problems(self) -> list[str]:
        """One line per problem that makes training fail or its evaluation unsound."""
        found = []
        if self.unreadable:
            found.append(f"{len(self.unreadable)} image(s) fail to decode")
        if self.duplicates_across:
            found.append(f"{len(self.duplicates_across)} duplicate group(s) span two splits")
        carved_within = [g for g in self.duplicates_within if g[0][0] == "train"]
        if carved_within and self.carved_splits:
            found.append(f"{len(carved_within)} duplicate group(s) in train, which is split further: "
                         "they can end up in two splits")
        return found


def check_dataset(cfg: DataConfig) -> CheckReport:
    """Indexes the dataset at `cfg.path` and inspects every image (full decode and hash).

    Args:
        cfg: uses `path`, `format`, `split_fractions` and `split_seed`.

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
        skipped=index.skipped, skipped_files=index.skipped_files)
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, samples in index.splits.items():
        for sample in samples:
            source, digest = _inspect(index, split, sample.source, report)
            by_hash[digest].append((split, source))
    for group in (g for g in by_hash.values() if len(g) > 1):
        spans_splits = len({split for split, _ in group}) > 1
        (report.duplicates_across if spans_splits else report.duplicates_within).append(group)
    return report


def _class_counts(index: DatasetIndex, split: str) -> dict[str, int]:
    counts = Counter(sample.label for sample in index.splits[split])
    return {name: counts[label] for label, name in enumerate(index.classes)}


def _inspect(index: DatasetIndex, split: str, source: str | int, report: CheckReport) -> tuple[str, str]:
    """Decodes and hashes one sample, recording what is wrong; returns (source, digest)."""
    if index.arrays is not None:
        image = index.arrays[split][source]
        header = f"{image.shape}{image.dtype}".encode()  # equal bytes of another shape differ
        return f"{split}_images[{source}]", hashlib.sha256(header + image.tobytes()).hexdigest()
    data = Path(source).read_bytes()
    content = sniff_bytes(data[:12])
    if content and Path(source).suffix.lower() not in FORMAT_EXTENSIONS[content]:
        report.extension_mismatches.append((source, content))
    try:
        open_rgb(data, name=source)
    except BadImageError as error:
        report.unreadable.append((source, error.reason))
    return source, hashlib.sha256(data).hexdigest()


def format_report(report: CheckReport, limit: int = MAX_LISTED) -> str:
    """The report as text for a terminal; lists show at most `limit` entries each."""
    shown = partial(_relative, root=report.root)
    lines = [f"{report.root} ({report.format}): {len(report.classes)} classes, {report.num_images} images"]
    lines += _count_table(report)
    if report.carved_splits:
        lines.append(f"not in the data: {', '.join(report.carved_splits)} (carved out of train when "
                     "training, stratified, with data.split_seed)")
    reasons = "".join(f", {reason}: {n}" for reason, n in sorted(report.skipped.items()))
    lines += _section(f"skipped while indexing: {sum(report.skipped.values())}{reasons}",
                      [f"{shown(path)}: {reason}" for path, reason in report.skipped_files], limit)
    lines += _section(f"unreadable images (full decode fails): {len(report.unreadable)}",
                      [f"{shown(source)}: {reason}" for source, reason in report.unreadable], limit)
    lines += _section(f"content format differs from extension: {len(report.extension_mismatches)}",
                      [f"{shown(path)}: {fmt} data" for path, fmt in report.extension_mismatches], limit)
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


def main_data_check(path: str, fmt: str = "auto") -> int:
    """Prints the data check of `path`; returns 0 clean, 1 problems found, 2 cannot index."""
    try:
        report = check_dataset(DataConfig(path=path, format=fmt))
    except (FileNotFoundError, ValueError) as error:
        print(f"medft data check: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 1 if report.problems() else 0
