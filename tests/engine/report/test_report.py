"""Tests of engine/report/: `write_report` on a faked grid folder (cells.py, tables.py, plots.py)."""
import csv
import itertools
import json

import numpy as np
import pytest
import yaml

from engine import cli
from engine.report import write_report
from engine.report.stats import paired_t_p, sign_flip_p

DATASETS, BACKBONES, STRATEGIES, SEEDS = ("d1", "d2"), ("b1", "b2"), ("ft", "lp", "lp_ft"), (1, 2, 3)
FAILED = "d2__b2__lp_ft__s3"
NOT_STARTED = "d2__b2__lp__s3"


@pytest.fixture
def fake_run(tmp_path):
    """A grid folder with known test metrics: accuracy and balanced accuracy drawn per cell."""
    rng = np.random.default_rng(0)
    truth = {}
    for key in itertools.product(DATASETS, BACKBONES, STRATEGIES, SEEDS):
        cell_id = "__".join(key[:3]) + f"__s{key[3]}"
        if cell_id == NOT_STARTED:
            continue
        folder = tmp_path / cell_id
        folder.mkdir()
        if cell_id == FAILED:
            (folder / "failure.json").write_text(json.dumps({"attempts": 3, "reason": "FloatingPointError: nan"}))
            continue
        acc, bacc, train_s = rng.uniform(0.5, 0.95), rng.uniform(0.4, 0.95), rng.uniform(10, 100)
        truth[key] = (acc, bacc, train_s)
        (folder / "result.json").write_text(json.dumps({
            "test": {"accuracy": acc, "balanced_accuracy": bacc, "macro_f1": 0.5, "auroc": 0.6, "kappa": 0.1},
            "best_epoch": 2, "train_s": train_s, "classes": ["rare", "common"],
            "class_counts": {"train": [len(key[0]), 90], "val": [1, 9], "test": [2, 18]}}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val/accuracy": acc * e / 3}) + "\n"
                                                      for e in range(4)))
    grid = {"name": "fake", "out_dir": str(tmp_path), "datasets": [{"name": d, "path": d} for d in DATASETS],
            "backbones": list(BACKBONES), "strategies": list(STRATEGIES), "seeds": list(SEEDS)}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    return tmp_path, truth


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_tables_match_the_per_cell_results(fake_run):
    run_dir, truth = fake_run
    report = write_report(run_dir)
    out = report.parent
    summary = {(r["dataset"], r["backbone"], r["strategy"]): r for r in _csv(out / "summary.csv")}
    assert len(summary) == len(DATASETS) * len(BACKBONES) * len(STRATEGIES)
    expected_deltas = {}
    for (dataset, backbone, strategy), row in summary.items():
        seeds = [s for s in SEEDS if (dataset, backbone, strategy, s) in truth]
        ft_seeds = [s for s in SEEDS if (dataset, backbone, "ft", s) in truth]
        assert int(row["seeds"]) == len(seeds)
        for i, metric in enumerate(("accuracy", "balanced_accuracy")):
            values = np.array([truth[dataset, backbone, strategy, s][i] for s in seeds])
            ft = np.array([truth[dataset, backbone, "ft", s][i] for s in ft_seeds])
            assert float(row[f"{metric}_mean"]) == pytest.approx(values.mean(), abs=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(values.std(ddof=1), abs=1e-12)
            if strategy == "ft":
                assert row[f"{metric}_delta_vs_ft"] == "" and row[f"{metric}_p_t"] == ""
                continue
            delta = values.mean() - ft.mean()
            expected_deltas[dataset, backbone, strategy, metric] = delta
            assert float(row[f"{metric}_delta_vs_ft"]) == pytest.approx(delta, abs=1e-12)
            shared = [s for s in seeds if s in ft_seeds]
            own = [truth[dataset, backbone, strategy, s][i] for s in shared]
            ref = [truth[dataset, backbone, "ft", s][i] for s in shared]
            assert float(row[f"{metric}_p_t"]) == pytest.approx(paired_t_p(own, ref), abs=1e-12)
            assert float(row[f"{metric}_p_signflip"]) == sign_flip_p(own, ref)
        costs = [truth[dataset, backbone, strategy, s][2] for s in seeds]
        assert float(row["train_s_mean"]) == pytest.approx(np.mean(costs), abs=1e-9)

    wins = {r["strategy"]: r for r in _csv(out / "wins.csv")}
    assert set(wins) == {"lp", "lp_ft"}
    for strategy, row in wins.items():
        for metric in ("accuracy", "balanced_accuracy"):
            deltas = [v for k, v in expected_deltas.items() if k[2] == strategy and k[3] == metric]
            assert int(row["cases"]) == len(deltas) == len(DATASETS) * len(BACKBONES)
            assert int(row[f"{metric}_wins"]) == sum(d > 1e-9 for d in deltas)
            assert int(row[f"{metric}_ties"]) == sum(abs(d) <= 1e-9 for d in deltas)
            assert int(row[f"{metric}_losses"]) == sum(d < -1e-9 for d in deltas)
            assert float(row[f"{metric}_mean_delta"]) == pytest.approx(np.mean(deltas), abs=1e-12)

    cost = {r["strategy"]: r for r in _csv(out / "cost.csv")}
    for strategy in STRATEGIES:
        costs = [v[2] for k, v in truth.items() if k[2] == strategy]
        assert float(cost[strategy]["device_h_total"]) == pytest.approx(sum(costs) / 3600, abs=1e-9)
    ft_mean = np.mean([v[2] for k, v in truth.items() if k[2] == "ft"])
    assert float(cost["lp"]["vs_ft"]) == pytest.approx(np.mean([v[2] for k, v in truth.items() if k[2] == "lp"])
                                                       / ft_mean, abs=1e-9)


def test_report_lists_failed_and_unstarted_cells_and_draws_figures(fake_run):
    run_dir, _ = fake_run
    report = write_report(run_dir)
    text = report.read_text()
    assert text.startswith("# medft report: fake")
    assert "36 cells; 34 done, 1 failed, 0 unfinished, 1 not started" in text
    assert f"| {FAILED} | 3 | FloatingPointError: nan |" in text
    assert NOT_STARTED in text.split("## Unfinished cells")[1]
    cells = {r["cell_id"]: r for r in _csv(report.parent / "cells.csv")}
    assert cells[FAILED]["status"] == "failed" and cells[FAILED]["reason"] == "FloatingPointError: nan"
    assert [r["cell_id"] for r in _csv(report.parent / "failures.csv")] == [FAILED]
    for dataset in DATASETS:
        for figure in (f"heatmap_{dataset}.png", f"curves_{dataset}.png"):
            assert (report.parent / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({figure})" in text


def test_report_command_prints_the_report_path(fake_run, capsys):
    run_dir, _ = fake_run
    assert cli.main(["report", str(run_dir), "--out", str(run_dir / "elsewhere")]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "elsewhere" / "report.md")
    assert cli.main(["report", str(run_dir / "missing")]) == 2


def test_report_shows_class_counts_per_split_beside_the_balanced_accuracy(fake_run):
    run_dir, _ = fake_run
    text = write_report(run_dir).read_text()
    for dataset in DATASETS:
        section = text.split(f"## {dataset}\n")[1]
        assert section.startswith(f"\nImages per class (train/val/test): rare {len(dataset)}/1/2, common 90/9/18.\n")
