"""engine/grid/worker.py: the dataset cache's bound, over the datasets a worker goes through."""
import shutil

import pytest
import torch

from engine.data import gpu_cache
from engine.data.gpu_cache import build_gpu_cache_loaders
from engine.grid import run, worker
from engine.grid.config import grid_from_dict
from engine.grid.run import run_grid
from engine.grid.worker import DatasetCache
from tests.engine.grid.helpers import tiny_grid


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
