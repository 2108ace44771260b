"""Shared measurement and row output for the bench scripts.

Each row is one JSON object per line (stdout, and `--out FILE` as JSONL) with the fields in
ROW_FIELDS, then a short human table. Baselines are always measured in the same process.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROW_FIELDS = ("bench", "case", "variant", "baseline", "value", "unit", "p20", "p80", "vs_baseline",
              "floor", "pct_of_floor", "device", "torch", "triton", "commit", "timestamp")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return ""


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn`, `repeats` times after `warmup` calls, synchronising the device."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class RowWriter:
    """Collects rows, prints each as JSON at once, then a table; optionally appends JSONL to a file."""

    def __init__(self, bench: str, device: torch.device, out: str | None = None):
        self.bench, self.device, self.rows = bench, device, []
        self.out = Path(out) if out else None
        self._common = {"device": device_name(device), "torch": torch.__version__,
                        "triton": _triton_version(), "commit": _commit()}

    def add(self, case: str, variant: str, samples: list[float], unit: str, baseline: str = "",
            baseline_value: float | None = None, floor: float | None = None,
            higher_is_better: bool = False, statistic: Callable[[list[float]], float] = statistics.median) -> dict:
        """Adds a row from raw samples (already in `unit`); `statistic` of them (the median) is the value."""
        value = statistic(samples)
        vs = None
        if baseline_value:
            vs = value / baseline_value if higher_is_better else baseline_value / value
        pct = None
        if floor:
            pct = 100.0 * (value / floor if higher_is_better else floor / value)
        row = {"bench": self.bench, "case": case, "variant": variant, "baseline": baseline,
               "value": value, "unit": unit, "p20": quantile(samples, 0.2), "p80": quantile(samples, 0.8),
               "vs_baseline": vs, "floor": floor, "pct_of_floor": pct, **self._common,
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if self.out:
            with self.out.open("a") as f:
                f.write(line + "\n")
        return row

    def print_table(self) -> None:
        print(f"\n{'case':<24} {'variant':<22} {'value':>12} {'unit':<8} {'vs baseline':>12} {'% floor':>8}")
        for r in self.rows:
            vs = f"{r['vs_baseline']:.3f}x" if r["vs_baseline"] else "-"
            pct = f"{r['pct_of_floor']:.1f}" if r["pct_of_floor"] else "-"
            print(f"{r['case']:<24} {r['variant']:<22} {r['value']:>12.4g} {r['unit']:<8} {vs:>12} {pct:>8}")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", help="append the JSON rows to this file")
    parser.add_argument("--check", action="store_true",
                        help="exit non-zero when a GPU target of docs/performance.md is missed")
    return parser


def exit_on_missed(missed: list[str]) -> None:
    for m in missed:
        print(f"MISSED TARGET: {m}", file=sys.stderr)
    if missed:
        sys.exit(1)
