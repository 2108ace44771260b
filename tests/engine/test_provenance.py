"""engine/provenance.py: what a result records of its software, device, threads and data."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import provenance, tracking
from engine.config import DataConfig
from engine.data.sources import load_index

REPO = Path(__file__).parents[2]


def _index(path, **data):
    return load_index(DataConfig(path=str(path), **data))


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_collect_records_versions_device_threads_and_the_data(demo_data, threads, monkeypatch):
    index = _index(demo_data)
    torch.set_num_threads(1)
    record = provenance.collect(index, torch.device("cpu"))
    assert record["torch_threads"] == 1 and record["torch"] == torch.__version__
    assert record["data_fingerprint"] == provenance.data_fingerprint(index)
    assert record["data_samples"] == {split: len(index.splits[split]) for split in ("train", "val", "test")}
    assert isinstance(record["device"], str) and record["device"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert record["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    torch.set_num_threads(2)
    assert provenance.collect(index, torch.device("cpu"))["torch_threads"] == 2


def test_an_absent_library_or_checkout_is_none(tmp_path, monkeypatch):
    monkeypatch.setitem(provenance._LIBRARIES, "dali", ("no-such-distribution-medft-test",))
    provenance.software.cache_clear()
    try:
        assert provenance.software()["dali"] is None
    finally:
        provenance.software.cache_clear()
    assert provenance.git_commit(tmp_path) == (None, None)


def test_the_fingerprint_follows_files_labels_and_splits_not_the_location(demo_data, tmp_path):
    reference = provenance.data_fingerprint(_index(demo_data))
    copy = shutil.copytree(demo_data, tmp_path / "copy")
    assert provenance.data_fingerprint(_index(copy)) == reference  # the same data elsewhere
    assert provenance.data_fingerprint(_index(copy, split_seed=1)) != reference  # other splits
    first = sorted((copy / "circles").iterdir())[0]
    first.rename(copy / "checkers" / first.name)  # one image relabelled
    relabelled = provenance.data_fingerprint(_index(copy))
    assert relabelled != reference
    (copy / "checkers" / first.name).rename(copy / "checkers" / ("renamed_" + first.name))
    assert provenance.data_fingerprint(_index(copy)) not in (reference, relabelled)


def test_an_npz_fingerprint_sees_the_pixels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_{kind}": value for s, n in (("train", 12), ("val", 4), ("test", 4))
              for kind, value in (("images", rng.integers(0, 256, (n, 8, 8), np.uint8)),
                                  ("labels", np.arange(n) % 2))}
    np.savez(tmp_path / "a.npz", **arrays)
    arrays["test_images"][0, 0, 0] ^= 1
    np.savez(tmp_path / "b.npz", **arrays)
    assert provenance.data_fingerprint(_index(tmp_path / "a.npz")) != provenance.data_fingerprint(
        _index(tmp_path / "b.npz"))


def test_the_tracker_config_carries_the_provenance(cpu_cell_config, demo_data):
    cfg = cpu_cell_config("tracking.backend=wandb")
    record = provenance.for_cell(cfg, _index(demo_data))
    config = tracking.wandb_init_kwargs(cfg, "grid", record)["config"]
    assert config["provenance"] == record and config["optim"]["lr"] == cfg.optim.lr
