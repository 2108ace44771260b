"""bench/loader.py at a tiny size on CPU: every row has every field, every backend appears."""

import pytest

from bench import loader
from bench._rows import ROW_FIELDS
from engine.data.dali import dali_available
from engine.data.synthetic import make_demo_dataset
from tests.helpers import read_jsonl

TINY = ["--size", "40", "--images", "12", "--batch", "4", "--resize", "36", "--crop", "32", "--workers", "0",
        "--device", "cpu", "--warmup", "0", "--repeats", "2"]


def _run(tmp_path, *extra: str) -> list[dict]:
    out = tmp_path / "rows.jsonl"
    loader.main([*TINY, "--out", str(out), *extra])
    return read_jsonl(out)


def test_loader_bench_rows_have_every_field_for_each_backend(tmp_path):
    rows = _run(tmp_path, "--check")  # --check on CPU reports ratios only: it must not exit
    inner = "dali" if dali_available() else "pil"
    expected = {"torchvision", f"gpu_cache[{inner}]/ep1", f"gpu_cache[{inner}]/ep2+"}
    assert {r["variant"] for r in rows} == expected | ({"dali"} if dali_available() else set())
    assert len(rows) == len(expected) + dali_available()
    for row in rows:
        assert set(ROW_FIELDS) <= set(row), f"missing {set(ROW_FIELDS) - set(row)} in {row}"
        assert row["value"] > 0 and row["unit"] == "img/s" and row["case"] == "40px-jpeg/36-32/bs4"
        assert (row["vs_baseline"] is None) == (row["variant"] == "torchvision")
        assert row["baseline"] == ("" if row["variant"] == "torchvision" else "torchvision")


def test_loader_bench_reads_a_given_folder(tmp_path):
    data = make_demo_dataset(tmp_path / "folder", classes=2, per_class=6, size=40, seed=0)
    rows = _run(tmp_path, "--data", str(data))
    assert rows and all(r["case"].startswith("folder/") for r in rows)


def test_loader_bench_rejects_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit):
        _run(tmp_path, "--data", str(tmp_path / "nowhere"))
