"""The report's data-fingerprint section: which data each dataset's done cells saw.

Every result.json carries the fingerprint of the dataset index it trained on
(engine/provenance.py: file names, labels and splits). Cells of one dataset are comparable only
when they share one; a dataset whose cells disagree (data changed on disk, another split seed or
split fractions, a different copy) is flagged, with the cells of each fingerprint.
"""
from __future__ import annotations

from engine.report.cells import Cell

NOT_RECORDED = "not recorded"  # result.json written before medft recorded provenance


def fingerprint_rows(cells: list[Cell]) -> list[dict]:
    """One row per (dataset, fingerprint) over the done cells, most cells first; `disagree` is
    True on every row of a dataset with more than one fingerprint."""
    by_dataset: dict[str, dict[str, list[str]]] = {}
    for c in cells:
        if c.status == "done":
            fingerprint = c.provenance.get("data_fingerprint") or NOT_RECORDED
            by_dataset.setdefault(c.key.dataset, {}).setdefault(fingerprint, []).append(c.key.cell_id)
    rows = []
    for dataset, groups in sorted(by_dataset.items()):
        for fingerprint, ids in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
            rows.append({"dataset": dataset, "fingerprint": fingerprint, "cells": len(ids),
                         "disagree": len(groups) > 1, "cell_ids": " ".join(sorted(ids))})
    return rows


def fingerprint_section(rows: list[dict]) -> list[str]:
    """report.md's lines for `fingerprint_rows`: a table, then the cells of each disagreeing dataset."""
    if not rows:
        return []
    lines = ["## Data fingerprints", "",
             "Hash of the dataset index each done cell trained on (file names, labels, splits; "
             "result.json's `provenance`). Cells of one dataset are comparable only under one fingerprint.", "",
             "| dataset | fingerprint | cells | |", "|---|---|---|---|"]
    lines += [f"| {r['dataset']} | `{r['fingerprint']}` | {r['cells']} | {'**disagrees**' if r['disagree'] else 'ok'} |"
              for r in rows]
    lines.append("")
    for dataset in sorted({r["dataset"] for r in rows if r["disagree"]}):
        lines.append(f"**{dataset}: its cells saw different data.** " + "; ".join(
            f"`{r['fingerprint']}`: {r['cell_ids']}" for r in rows if r["dataset"] == dataset))
        lines.append("")
    return lines
