"""bench/recommend.py on hand-written finished grids: the hit rule, the cost fraction, --check."""
import json
import statistics

import pytest

from bench import recommend as bench
from engine.cell_files import CONFIG_FILE, GRID_FILE, METRICS_FILE, RESULT_FILE
from engine.checkpoint import write_json_atomic
from engine.config import to_yaml
from engine.grid.config import expand_cells, grid_from_dict

SEEDS = [1, 2, 3]


def write_run(root, val: dict, test: dict, epoch_s: dict):
    """A finished grid of ft and lp on tiny_resnet, 2 epochs: `val[arm]` its per-epoch curve (all
    seeds), `test[arm]` its test accuracy per seed, `epoch_s[arm]` the seconds of each epoch."""
    (root / "data").mkdir(parents=True)
    grid = grid_from_dict({"name": "h", "out_dir": str(root / "run"), "seeds": SEEDS,
                           "datasets": [{"name": "d", "path": str(root / "data")}], "backbones": ["tiny_resnet"],
                           "strategies": ["ft", "lp"], "cell": {"trainer": {"epochs": 2}}}, "test")
    (root / "run").mkdir()
    (root / "run" / GRID_FILE).write_text(to_yaml(grid))
    for cfg in expand_cells(grid):
        folder = root / "run" / cfg.cell_id
        folder.mkdir()
        (folder / CONFIG_FILE).write_text(to_yaml(cfg))
        arm, seed = cfg.strategy.name, cfg.trainer.seed
        rows = [{"epoch": e, "val/accuracy": v, "strategy/trainable_params": 10, "perf/epoch_s": epoch_s[arm],
                 "perf/val_s": 0.0, "perf/feature_cache_s": 0.0} for e, v in enumerate(val[arm])]
        (folder / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json_atomic({"test": {"accuracy": test[arm][SEEDS.index(seed)]}}, folder / RESULT_FILE)
    return root / "run"


@pytest.mark.parametrize("lp_test, hit", [([0.80, 0.70, 0.60], True),    # ft 0.65 >= 0.70 - 0.10
                                          ([0.72, 0.70, 0.68], False)])  # ft 0.65 <  0.70 - 0.02
def test_a_hit_is_the_best_or_within_its_seed_spread(tmp_path, lp_test, hit):
    ft_test = [0.65, 0.65, 0.65]
    run = write_run(tmp_path, val={"ft": [0.5, 0.9], "lp": [0.5, 0.6]}, test={"ft": ft_test, "lp": lp_test},
                    epoch_s={"ft": 3.0, "lp": 1.0})
    (row,) = bench.case_rows(str(run), bench.race_settings([]))
    assert row["recommended"] == "ft" and row["best"] == "lp"  # ft leads on validation by far: one seed
    assert row["best_spread"] == pytest.approx(statistics.stdev(lp_test))
    assert row["hit"] is hit
    # the race trained ft and lp on the first seed only; the grid trained all three seeds
    assert row["cost_fraction"] == pytest.approx((2 * 3.0 + 2 * 1.0) / (3 * (2 * 3.0 + 2 * 1.0)))


def test_check_fails_below_the_hit_rate(tmp_path, capsys):
    run = write_run(tmp_path, val={"ft": [0.5, 0.9], "lp": [0.5, 0.6]},
                    test={"ft": [0.6] * 3, "lp": [0.9] * 3}, epoch_s={"ft": 1.0, "lp": 1.0})
    assert bench.main([str(run)]) == 0
    assert bench.main([str(run), "--check"]) == 1
    assert "MISSED TARGET: hit rate 0%" in capsys.readouterr().err
