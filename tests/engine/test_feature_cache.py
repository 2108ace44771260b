import torch

from engine import epoch_inputs
from engine.feature_cache import clear_shared_rows
from engine.models import create_backbone
from engine.trainer import train_cell


def test_feature_cache_serves_the_next_cells_of_the_same_backbone_once_built(cpu_cell_config, tmp_path,
                                                                              monkeypatch):
    weights = tmp_path / "pretrained.pth"
    torch.save(create_backbone("tiny_resnet", 1000, "none").state_dict(), weights)
    builds = []
    build = epoch_inputs.build_feature_rows
    monkeypatch.setattr(epoch_inputs, "build_feature_rows", lambda *a, **k: builds.append(1) or build(*a, **k))
    clear_shared_rows()

    def lp(seed, out, strategy="lp"):
        return train_cell(cpu_cell_config(f"strategy.name={strategy}", f"model.weights={weights}",
                                          f"trainer.seed={seed}", out=tmp_path / out))
    lp(1, "a")
    assert len(builds) == 2  # train and validation features
    reused = lp(2, "b")
    lp(3, "c", strategy="g_lf")  # gradual unfreezing's head-only stage: the same features again
    assert len(builds) == 2
    clear_shared_rows()
    fresh = lp(2, "d")
    assert len(builds) == 4
    assert reused["test"] == fresh["test"]


def test_feature_cache_is_not_shared_between_different_backbone_weights(cpu_cell_config, tmp_path, monkeypatch):
    builds = []
    build = epoch_inputs.build_feature_rows
    monkeypatch.setattr(epoch_inputs, "build_feature_rows", lambda *a, **k: builds.append(1) or build(*a, **k))
    clear_shared_rows()
    for seed in (1, 2):  # weights=none: each seed initialises another backbone
        train_cell(cpu_cell_config("strategy.name=lp", f"trainer.seed={seed}", out=tmp_path / str(seed)))
    assert len(builds) == 4
