"""Atomic writes and the resume state of a cell.

A cell killed at any point and restarted on the same directory continues from its last completed
epoch: every file here is written to a temporary name and renamed, so a reader never sees half.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch_atomic(obj, path: str | Path) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def write_json_atomic(obj, path: str | Path) -> None:
    _atomic(Path(path), lambda f: f.write((json.dumps(obj, indent=2, allow_nan=True) + "\n").encode()))


def write_text_atomic(text: str, path: str | Path) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def save_npz_atomic(arrays: dict, path: str | Path) -> None:
    _atomic(Path(path), lambda f: np.savez_compressed(f, **arrays))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path: str | Path) -> dict | None:
    """The saved training state, or None when there is none. The file is our own (RNG states hold
    numpy objects), so it is loaded with weights_only=False."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
