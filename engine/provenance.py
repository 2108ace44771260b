"""Provenance of a result: which code, libraries, device, thread count and data produced it.

`collect(index, device)` is what result.json (key `provenance`), the cell folder's
provenance.json and the tracker's config carry, so that two results can be compared knowing
whether they ran the same software on the same data. CPU arithmetic depends on torch's intra-op
thread count (the order of a reduction's partial sums), so `torch_threads` is part of it.

`data_fingerprint(index)` hashes the dataset index: every split's samples (file paths relative to
the dataset, or the rows of an .npz archive with the archive's image bytes) with their labels,
and the class names. File contents are not read: a file replaced under the same name keeps the
fingerprint.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import weakref
from pathlib import Path

import numpy as np
import torch

from engine.data.dataset_index import SPLITS, DatasetIndex

_REPO = Path(__file__).resolve().parents[1]
# Distributions whose versions are recorded (DALI's name carries its CUDA version).
_LIBRARIES = {"torchvision": ("torchvision",), "dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120",
                                                        "nvidia-dali-cuda110", "nvidia-dali"),
              "deepspeed": ("deepspeed",), "triton": ("triton",)}
_fingerprints: dict[int, tuple[weakref.ref, str]] = {}  # id(index) -> (index, fingerprint)


def collect(index: DatasetIndex, device: torch.device) -> dict:
    """The provenance of a run on `index` and `device` (JSON-ready; None for what is absent)."""
    return {**software(), "device": device_name(device), "torch_threads": torch.get_num_threads(),
            "data_fingerprint": data_fingerprint(index),
            "data_samples": {split: len(index.splits.get(split, [])) for split in SPLITS}}


def for_cell(cfg, index: DatasetIndex) -> dict:
    """`collect` for a CellConfig about to train on `index` (its device as the run resolves it)."""
    from engine.run_context import resolve_device

    return collect(index, resolve_device(cfg.trainer.device))


@functools.cache
def software() -> dict:
    """medft's version and git commit, torch's and the optional libraries' versions."""
    commit, dirty = git_commit(_REPO)
    return {"medft": _version(("medft",)), "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
            **{name: _version(dists) for name, dists in _LIBRARIES.items()}}


def _version(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_commit(folder: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it) of the checkout holding `folder`, or
    (None, None) when it is not a git checkout (an installed package) or git is missing."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def device_name(device: torch.device) -> str:
    """The GPU's name for CUDA, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def data_fingerprint(index: DatasetIndex) -> str:
    """A 16-hex-digit hash of the index (see the module docstring); computed once per index object."""
    cached = _fingerprints.get(id(index))
    if cached is not None and cached[0]() is index:
        return cached[1]
    base = index.root if index.root.is_dir() else index.root.parent
    digest = hashlib.sha256(json.dumps(index.classes).encode())
    for split in SPLITS:
        samples = index.splits.get(split, [])
        rows = [[s.source if isinstance(s.source, int) else os.path.relpath(s.source, base), s.label]
                for s in samples]
        digest.update(json.dumps([split, rows]).encode())
        if index.arrays is not None and split in index.arrays:
            array = index.arrays[split]
            digest.update(json.dumps([list(array.shape), str(array.dtype)]).encode())
            digest.update(np.ascontiguousarray(array).data)
    fingerprint = digest.hexdigest()[:16]
    _fingerprints[id(index)] = (weakref.ref(index), fingerprint)
    weakref.finalize(index, _fingerprints.pop, id(index), None)
    return fingerprint
