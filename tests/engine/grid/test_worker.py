"""engine/grid/worker.py and the order of cells_mode.py: the dataset cache's bound, what a dead
worker costs its cell, signals that are never a cell failure, ranks from launchers and SLURM, and
the order in which a worker takes cells."""
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.cell_files import ATTEMPTS_FILE, CLAIMS_DIR, FAILURE_FILE, LAST_CKPT
from engine.data import gpu_cache
from engine.data.gpu_cache import build_gpu_cache_loaders
from engine.grid import run, worker
from engine.grid.cells_mode import claim_order
from engine.grid.claims import Claim, failed_attempts, latest, try_claim
from engine.grid.config import expand_cells, grid_from_dict
from engine.grid.run import run_grid
from engine.grid.worker import DatasetCache, Worker, settle_takeover
from tests.engine.grid.helpers import events, tiny_grid


@pytest.fixture
def three_datasets(demo_data, tmp_path):
    roots = [tmp_path / "data" / name for name in ("a", "b", "c")]
    for root in roots:
        shutil.copytree(demo_data, root)
    gpu_cache.clear_gpu_cache()
    yield roots
    gpu_cache.clear_gpu_cache()


def _gpu_cache_roots() -> set[str]:
    return {key[0] for key in gpu_cache._CACHES}


def test_dataset_cache_evicts_the_oldest_dataset_and_its_decoded_images(three_datasets, cpu_cell_config):
    cache = DatasetCache(size=2)
    seen = []
    for root in [*three_datasets, three_datasets[1]]:
        cfg = cpu_cell_config(f"data.path={root}", "data.loader=gpu_cache")
        index = cache.get(cfg)
        build_gpu_cache_loaders(index, cfg.data, seed=0, device=torch.device("cpu"), inner="pil")
        seen = [r for r in seen if r != str(root)] + [str(root)]  # least recently used first
        assert [str(i.root) for i in cache.entries.values()] == seen[-2:]
        assert _gpu_cache_roots() == set(seen[-2:])


def test_dataset_cache_keeps_the_images_of_a_folder_another_entry_still_uses(three_datasets, cpu_cell_config):
    cache = DatasetCache(size=1)
    first = cpu_cell_config(f"data.path={three_datasets[0]}", "data.crop=32")
    index = cache.get(first)
    build_gpu_cache_loaders(index, first.data, seed=0, device=torch.device("cpu"), inner="pil")
    cache.size = 2  # one folder under two data configs: evicting one must not free the other's images
    cache.get(cpu_cell_config(f"data.path={three_datasets[0]}", "data.crop=28"))
    cache.size = 1
    cache.get(cpu_cell_config(f"data.path={three_datasets[0]}", "data.crop=24"))
    assert len(cache.entries) == 1 and _gpu_cache_roots() == {str(three_datasets[0])}
    cache.get(cpu_cell_config(f"data.path={three_datasets[1]}"))
    assert _gpu_cache_roots() == set()


@pytest.mark.parametrize("bound", [2])
def test_grid_worker_holds_at_most_the_bound_over_a_sequence_of_datasets(three_datasets, tmp_path, monkeypatch,
                                                                           bound):
    caches, held = [], []

    class Recorded(DatasetCache):
        def __init__(self, size):
            super().__init__(size)
            caches.append(self)

    def train_and_record(cfg, *args, **kwargs):
        result = train_cell(cfg, *args, **kwargs)
        held.append(([str(i.root) for i in caches[0].entries.values()], _gpu_cache_roots()))
        return result

    train_cell = worker.train_cell
    monkeypatch.setattr("engine.data.dali.dali_available", lambda: False)  # PIL decodes: quicker to start
    monkeypatch.setattr(run, "DatasetCache", Recorded)
    monkeypatch.setattr(worker, "train_cell", train_and_record)
    datasets = [{"name": root.name, "path": str(root)} for root in three_datasets]
    grid = grid_from_dict(tiny_grid(three_datasets[0], tmp_path / "out", datasets=datasets, strategies=["ft"],
                                    seeds=[684], cell={"data": {"loader": "gpu_cache"}},
                                    grid={"dataset_cache_size": bound}), "test")
    assert set(run_grid(grid).values()) == {"done"}
    roots = [str(r) for r in three_datasets]
    # Cells are dataset-major, so after the i-th cell the worker holds the last `bound` datasets up to i.
    expected = [roots[max(0, i + 1 - bound):i + 1] for i in range(len(roots))]
    assert held == [(e, set(e)) for e in expected]


def test_grid_rejects_an_empty_dataset_cache(demo_data, tmp_path):
    with pytest.raises(ValueError, match="'grid.dataset_cache_size' must be at least 1"):
        grid_from_dict(tiny_grid(demo_data, tmp_path, grid={"dataset_cache_size": 0}), "test")


def _dead_claim(folder: Path, resume_at: int | None) -> Claim:
    """A claim taken over from a worker that died under record 1, having started at `resume_at`
    (None: before its start line)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / CLAIMS_DIR).mkdir(parents=True)
    (folder / CLAIMS_DIR / "000001.json").write_text(json.dumps(
        {"state": "running", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}))
    if resume_at is not None:
        (folder / ATTEMPTS_FILE).write_text(json.dumps({"event": "start", "claim": 1, "resume_epoch": resume_at}) + "\n")
    return try_claim(folder, stale_after_s=60)


@pytest.mark.parametrize("resume_at, saved_epoch, charged", [(0, None, True), (None, 2, True), (1, 1, True),
                                                             (0, 1, False), (1, 3, False)])
def test_a_dead_worker_costs_an_attempt_only_when_its_cell_made_no_progress(tmp_path, resume_at, saved_epoch,
                                                                              charged):
    claim = _dead_claim(tmp_path, resume_at)
    assert claim is not None and "died" in claim.took_over
    if saved_epoch is not None:
        torch.save({"epoch": saved_epoch, "model": {"w": torch.zeros(3)}}, tmp_path / LAST_CKPT)
    settle_takeover(tmp_path, claim, rank=0)
    settle_takeover(tmp_path, claim, rank=0)  # settled once
    died = [json.loads(line) for line in (tmp_path / ATTEMPTS_FILE).read_text().splitlines()][-1]
    assert died["event"] == "died" and died["charged"] is charged and died["resume_epoch"] == (saved_epoch or 0)
    assert failed_attempts(tmp_path) == int(charged)
    if charged:
        assert "died before completing an epoch" in json.loads((tmp_path / FAILURE_FILE).read_text())["reason"]


def test_a_signal_turned_into_an_error_stops_the_worker_and_is_no_cell_failure(demo_data, tmp_path, monkeypatch):
    def save_interrupted_by_sigterm(cfg, *args, **kwargs):
        try:  # what torch.save does with an interrupt in its writer
            signal.raise_signal(signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(worker, "train_cell", save_interrupted_by_sigterm)
    grid = grid_from_dict(tiny_grid(demo_data, tmp_path / "out", strategies=["ft"]), "test")
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid)
    first, second = (tmp_path / "out" / f"shapes__tiny_resnet__ft__s{seed}" for seed in (684, 559))
    assert events(first) == ["start", "interrupted"] and not (first / FAILURE_FILE).exists()
    assert latest(first / CLAIMS_DIR)[1]["state"] == "released"
    assert not second.exists()  # the worker stopped instead of going on to the next cell
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("env, expected", [
    ({}, Worker(0, 1, 0, False)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, Worker(3, 8, 1, True)),  # deepspeed, torchrun
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, Worker(5, 8, 1, True)),  # srun
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
      "SLURM_LOCALID": "0"}, Worker(2, 4, 0, True)),  # a launcher inside an allocation: the launcher's ranks
])
def test_worker_reads_the_launchers_ranks_else_slurms(env, expected):
    assert Worker.from_env(env) == expected


def test_srun_tasks_train_on_their_own_gpus(demo_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    cells = expand_cells(grid_from_dict(tiny_grid(demo_data, tmp_path, cell={"trainer": {"device": "auto"}}),
                                        "test"))
    task = Worker.from_env({"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2"})
    assert {c.trainer.device for c in run._place(cells, task)} == {"cuda:2"}


def test_claim_order_keeps_a_worker_on_its_group_and_spreads_new_groups(demo_data, tmp_path):
    grid = grid_from_dict(tiny_grid(demo_data, tmp_path, backbones=["tiny_resnet", "tiny_vgg", "tiny_densenet"],
                                    strategies=["ft"]), "test")
    cells = expand_cells(grid)  # dataset-major: resnet s684, s559, vgg s684, s559, densenet s684, s559
    ids = [c.cell_id for c in cells]
    states = dict.fromkeys(ids, "pending")
    cache = DatasetCache(1)
    assert [c.cell_id for c in claim_order(cells, states, None, cache)] == ids  # grid order
    states[ids[0]] = "running"  # another worker started the resnet group: a new worker starts vgg
    assert [c.cell_id for c in claim_order(cells, states, None, cache)][:3] == [ids[2], ids[3], ids[4]]
    states[ids[2]] = "done"  # this worker's last cell was vgg: it stays there, even with the others free
    current = ("shapes", "tiny_vgg")
    assert claim_order(cells, states, current, cache)[0].cell_id == ids[3]
    states[ids[3]] = states[ids[4]] = "running"
    states[ids[5]] = "done"  # nothing but busy groups left: it joins one rather than leave a cell waiting
    assert [c.cell_id for c in claim_order(cells, states, current, cache)] == [ids[1]]
