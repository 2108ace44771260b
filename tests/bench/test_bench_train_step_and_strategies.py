"""bench/train_step.py and bench/strategies.py at a tiny size on CPU: rows complete, ratios present."""

from bench import strategies, train_step
from bench._rows import ROW_FIELDS
from tests.helpers import read_jsonl


def _rows(path):
    return read_jsonl(path)


def test_train_step_bench_rows_compare_medft_with_the_bare_loop(tmp_path):
    out = tmp_path / "rows.jsonl"
    train_step.main(["--backbone", "tiny_resnet", "--batch", "4", "--size", "32", "--device", "cpu",
                     "--warmup", "1", "--repeats", "2", "--out", str(out), "--check"])
    rows = _rows(out)
    assert [r["variant"] for r in rows] == ["bare_pytorch", "medft_train_step"]
    assert all(set(ROW_FIELDS) <= set(r) for r in rows)
    assert rows[1]["vs_baseline"] == rows[1]["value"] / rows[0]["value"] and rows[1]["unit"] == "img/s"


def test_strategies_bench_reports_the_lp_cache_ratio(tmp_path):
    out = tmp_path / "rows.jsonl"
    strategies.main(["--backbone", "tiny_vgg", "--size", "32", "--epochs", "2", "--per-class", "6", "--workers", "0",
                     "--device", "cpu", "--out", str(out), "--only", "lp_cache"])
    rows = _rows(out)
    assert [r["variant"] for r in rows] == ["lp_uncached", "lp_feature_cache", "lp_feature_cache_next_cell"]
    assert all(set(ROW_FIELDS) <= set(r) for r in rows)
    assert all(r["vs_baseline"] == rows[0]["value"] / r["value"] > 0 for r in rows[1:])


def test_strategies_bench_reports_bitfit_and_lora_against_ft(tmp_path):
    out = tmp_path / "rows.jsonl"
    strategies.main(["--backbone", "tiny_convnext", "--size", "32", "--batch", "4", "--device", "cpu",
                     "--warmup", "1", "--repeats", "2", "--out", str(out), "--only", "peft"])
    rows = {r["variant"]: r for r in _rows(out)}
    assert list(rows) == [f"{s}_{m}" for s in strategies.PEFT_STRATEGIES for m in ("trainable_params", "step")]
    assert all(set(ROW_FIELDS) <= set(r) for r in rows.values())
    ft, bitfit, lora = (rows[f"{s}_trainable_params"]["value"] for s in ("ft", "bitfit", "lora"))
    from engine.models import create_backbone
    assert ft == sum(p.numel() for p in create_backbone("tiny_convnext", 3, "none").parameters())
    assert bitfit < ft and lora < ft
    assert rows["lora_trainable_params"]["vs_baseline"] == ft / lora and rows["ft_step"]["baseline"] == "ft_step"
