"""Tests of engine/report/: `write_report` on a faked grid folder (cells.py, tables.py, plots.py)."""
import csv
import itertools
import json

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from engine import cli
from engine.report import write_report
from engine.cell_files import PREDICTIONS_FILE
from engine.metrics import classification_metrics
from engine.report.bootstrap import Predictions, cell_interval, delta_interval
from engine.report.stats import paired_t_p, sign_flip_p

DATASETS, BACKBONES, STRATEGIES, SEEDS = ("d1", "d2"), ("b1", "b2"), ("ft", "lp", "lp_ft"), (1, 2, 3)
FAILED = "d2__b2__lp_ft__s3"
NOT_STARTED = "d2__b2__lp__s3"


CLASSES = ["rare", "common", "other"]  # the fake cells' class names
TEST_IMAGES = 60
OLD = "d1__b1__lp__s2"  # a cell of an older run: result.json but no saved predictions


@pytest.fixture
def fake_run(tmp_path):
    """A grid folder with known test predictions per cell (the test split of a dataset is the same
    for every cell of it), their metrics in result.json, and a train time per cell."""
    rng = np.random.default_rng(0)
    labels = {d: rng.integers(0, 3, TEST_IMAGES) for d in DATASETS}
    truth, predictions = {}, {}
    for key in itertools.product(DATASETS, BACKBONES, STRATEGIES, SEEDS):
        cell_id = "__".join(key[:3]) + f"__s{key[3]}"
        if cell_id == NOT_STARTED:
            continue
        folder = tmp_path / cell_id
        folder.mkdir()
        if cell_id == FAILED:
            (folder / "failure.json").write_text(json.dumps({"attempts": 3, "reason": "FloatingPointError: nan"}))
            continue
        y = labels[key[0]]
        hits = rng.random(TEST_IMAGES) < rng.uniform(0.4, 0.95)
        probs = np.eye(3)[np.where(hits, y, (y + rng.integers(1, 3, TEST_IMAGES)) % 3)]
        test = classification_metrics(y, probs)
        train_s = rng.uniform(10, 100)
        truth[key] = (test["accuracy"], test["balanced_accuracy"], train_s)
        if cell_id != OLD:
            np.savez(folder / PREDICTIONS_FILE, labels=y, probs=probs)
            predictions[key] = Predictions(y, probs.argmax(axis=1))
        (folder / "result.json").write_text(json.dumps({
            "test": test, "best_epoch": 2, "train_s": train_s, "classes": CLASSES,
            "class_counts": {"train": [len(key[0]), 90, 5], "val": [1, 9, 5], "test": [2, 18, 5]}}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val/accuracy": e / 3}) + "\n"
                                                      for e in range(4)))
    grid = {"name": "fake", "out_dir": str(tmp_path), "datasets": [{"name": d, "path": d} for d in DATASETS],
            "backbones": list(BACKBONES), "strategies": list(STRATEGIES), "seeds": list(SEEDS)}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    return tmp_path, truth, predictions


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_tables_match_the_per_cell_results(fake_run):
    run_dir, truth, _ = fake_run
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
            assert int(row[f"{metric}_mean_higher"]) == sum(d > 1e-9 for d in deltas)
            assert float(row[f"{metric}_mean_delta"]) == pytest.approx(np.mean(deltas), abs=1e-12)

    cost = {r["strategy"]: r for r in _csv(out / "cost.csv")}
    for strategy in STRATEGIES:
        costs = [v[2] for k, v in truth.items() if k[2] == strategy]
        assert float(cost[strategy]["device_h_total"]) == pytest.approx(sum(costs) / 3600, abs=1e-9)
    ft_mean = np.mean([v[2] for k, v in truth.items() if k[2] == "ft"])
    assert float(cost["lp"]["vs_ft"]) == pytest.approx(np.mean([v[2] for k, v in truth.items() if k[2] == "lp"])
                                                       / ft_mean, abs=1e-9)


def test_report_lists_failed_and_unstarted_cells_and_draws_figures(fake_run):
    run_dir, _, _ = fake_run
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
    run_dir, _, _ = fake_run
    assert cli.main(["report", str(run_dir), "--out", str(run_dir / "elsewhere")]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "elsewhere" / "report.md")
    assert cli.main(["report", str(run_dir / "missing")]) == 2


def test_report_prints_the_grids_description_under_its_title(fake_run):
    run_dir, _, _ = fake_run
    assert write_report(run_dir).read_text().split("\n")[2].startswith("Run folder")  # none: nothing printed
    grid = yaml.safe_load((run_dir / "grid.yaml").read_text())
    (run_dir / "grid.yaml").write_text(yaml.safe_dump({**grid, "description": "Weights from the source task."}))
    assert write_report(run_dir).read_text().split("\n")[:4] == [
        "# medft report: fake", "", "Weights from the source task.", ""]


def test_the_report_lists_data_fingerprints_and_flags_a_dataset_whose_cells_disagree(fake_run):
    run_dir, truth, _ = fake_run
    odd = "d1__b2__lp__s2"
    for key in truth:
        cell_id = "__".join(key[:3]) + f"__s{key[3]}"
        path = run_dir / cell_id / "result.json"
        result = json.loads(path.read_text())
        result["provenance"] = {"data_fingerprint": ("other" if cell_id == odd else "fp_") + key[0]}
        path.write_text(json.dumps(result))
    report = write_report(run_dir).read_text()
    section = report[report.index("## Data fingerprints"):]
    d1_cells = sum(k[0] == "d1" for k in truth)
    assert f"| d1 | `fp_d1` | {d1_cells - 1} | **disagrees** |" in section
    assert "| d1 | `otherd1` | 1 | **disagrees** |" in section
    assert f"| d2 | `fp_d2` | {sum(k[0] == 'd2' for k in truth)} | ok |" in section
    assert "**d1: its cells saw different data.**" in section and f"`otherd1`: {odd}" in section
    assert "d2: its cells" not in section
    rows = _csv(run_dir / "report" / "fingerprints.csv")
    assert {(r["dataset"], r["fingerprint"], r["disagree"]) for r in rows} == {
        ("d1", "fp_d1", "True"), ("d1", "otherd1", "True"), ("d2", "fp_d2", "False")}


def _expected_outcome(low: float, high: float) -> str:
    return "win" if low > 0 else "loss" if high < 0 else "tie"


def test_report_intervals_wins_rule_and_tests_across_cases(fake_run):
    run_dir, truth, predictions = fake_run
    for seed in SEEDS:  # one whole case of an older run: no predictions, so no Δ interval
        (run_dir / f"d1__b2__lp_ft__s{seed}" / PREDICTIONS_FILE).unlink()
        predictions.pop(("d1", "b2", "lp_ft", seed))
    report = write_report(run_dir)
    out, text = report.parent, report.read_text()

    cells = {r["cell_id"]: r for r in _csv(out / "cells.csv")}
    for key, pred in predictions.items():
        row = cells["__".join(key[:3]) + f"__s{key[3]}"]
        assert (float(row["accuracy_low"]), float(row["accuracy_high"])) == pytest.approx(cell_interval(pred, "accuracy"))
    assert cells[OLD]["accuracy_low"] == "" and cells[OLD]["status"] == "done"

    summary = {(r["dataset"], r["backbone"], r["strategy"]): r for r in _csv(out / "summary.csv")}
    expected = {}
    for (dataset, backbone, strategy), row in summary.items():
        if strategy == "ft":
            continue
        pairs = [(predictions[dataset, backbone, strategy, s], predictions[dataset, backbone, "ft", s]) for s in SEEDS
                 if (dataset, backbone, strategy, s) in predictions and (dataset, backbone, "ft", s) in predictions]
        assert int(row["delta_seeds"]) == len(pairs)
        for metric in ("accuracy", "balanced_accuracy"):
            if not pairs:
                assert row[f"{metric}_delta_low"] == "" and row[f"{metric}_outcome"] == "no interval"
                expected[strategy, metric] = expected.get((strategy, metric), []) + ["no interval"]
                continue
            low, high = delta_interval(pairs, metric)
            assert (float(row[f"{metric}_delta_low"]), float(row[f"{metric}_delta_high"])) == pytest.approx((low, high))
            assert row[f"{metric}_outcome"] == _expected_outcome(low, high)
            expected[strategy, metric] = expected.get((strategy, metric), []) + [_expected_outcome(low, high)]
    assert int(summary["d1", "b1", "lp"]["delta_seeds"]) == 2  # OLD's seed has nothing to pair
    wins = {r["strategy"]: r for r in _csv(out / "wins.csv")}
    for (strategy, metric), outcomes in expected.items():
        for column, name in (("wins", "win"), ("ties", "tie"), ("losses", "loss"), ("no_interval", "no interval")):
            assert int(wins[strategy][f"{metric}_{column}"]) == outcomes.count(name)
    assert int(wins["lp_ft"]["accuracy_no_interval"]) == 1

    cases = sorted(itertools.product(DATASETS, BACKBONES))
    scores = np.array([[np.mean([v[0] for k, v in truth.items() if k[:3] == (d, b, s)]) for s in STRATEGIES]
                       for d, b in cases])
    friedman = {r["strategy"]: r for r in _csv(out / "friedman.csv") if r["metric"] == "accuracy"}
    ranks = scipy_stats.rankdata(-scores, axis=1).mean(axis=0)
    reference = scipy_stats.friedmanchisquare(*scores.T)
    for j, strategy in enumerate(STRATEGIES):
        row = friedman[strategy]
        assert float(row["average_rank"]) == pytest.approx(ranks[j]) and int(row["cases"]) == len(cases)
        assert float(row["p"]) == pytest.approx(reference.pvalue) and float(row["chi2"]) == pytest.approx(reference.statistic)
        assert float(row["nemenyi_cd"]) == pytest.approx(2.343 * np.sqrt(3 * 4 / (6 * len(cases))), abs=2e-3)
    wilcoxon = {r["strategy"]: r for r in _csv(out / "wilcoxon.csv") if r["metric"] == "accuracy"}
    p = {s: scipy_stats.wilcoxon(scores[:, j], scores[:, 0]).pvalue for j, s in enumerate(STRATEGIES) if s != "ft"}
    low_p, high_p = sorted(p.values())
    holm = {s: min(1.0, 2 * low_p) if v == low_p else max(min(1.0, 2 * low_p), high_p) for s, v in p.items()}
    for strategy in ("lp", "lp_ft"):
        assert float(wilcoxon[strategy]["p"]) == pytest.approx(p[strategy])
        assert float(wilcoxon[strategy]["p_holm"]) == pytest.approx(holm[strategy])

    for section in ("## Wins against FT", "tie within noise", "## Across cases: Friedman test",
                    "## Wilcoxon signed-rank test against FT over cases (Holm)",
                    "## Cells: test metric with its bootstrap 95% interval",
                    f"{len(SEEDS) + 1} done cells have no {PREDICTIONS_FILE}"):
        assert section in text, section
    for metric in ("accuracy", "balanced_accuracy"):
        assert (out / f"cd_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](cd_{metric}.png)" in text


def test_report_shows_class_counts_per_split_beside_the_balanced_accuracy(fake_run):
    run_dir, _, _ = fake_run
    text = write_report(run_dir).read_text()
    for dataset in DATASETS:
        section = text.split(f"## {dataset}\n")[1]
        assert section.startswith(f"\nImages per class (train/val/test): rare {len(dataset)}/1/2, common 90/9/18, other 5/5/5.\n")
