"""bench/gradnorm.py at a tiny size on CPU: every row has every field, every model and variant appears."""
import os

# The Triton interpreter must be on before triton is imported (bench.gradnorm imports torchvision,
# which imports triton), for the test that times the interpreted kernel.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from bench import gradnorm  # noqa: E402
from bench._rows import ROW_FIELDS  # noqa: E402
from tests.helpers import read_jsonl


def _run(tmp_path, *extra: str) -> list[dict]:
    out = tmp_path / "rows.jsonl"
    gradnorm.main(["--tiny", "--device", "cpu", "--warmup", "0", "--repeats", "2", "--out", str(out), *extra])
    return read_jsonl(out)


def test_gradnorm_bench_rows_have_every_field_for_each_model_and_variant(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDFT_KERNELS", raising=False)
    rows = _run(tmp_path, "--check")  # --check on CPU reports ratios only: it must not exit
    for row in rows:
        assert set(ROW_FIELDS) <= set(row), f"missing {set(ROW_FIELDS) - set(row)} in {row}"
        assert row["value"] > 0 and row["floor"] is None and row["pct_of_floor"] is None
    cases = {(r["case"], r["variant"], r["unit"]) for r in rows}
    assert len(rows) == len(cases) == 3 * 4 * 2  # models x variants x (us, GB/s)
    assert {c.split("/")[0] for c, _, _ in cases} == {f"{m}-tiny" for m in gradnorm.MODELS}
    assert {v for _, v, _ in cases} == {"foreach_norm_x2_div", "multi_tensor_norm[reference]",
                                        "item_per_tensor", "flat_vector_norm"}
    assert all((r["vs_baseline"] is None) == (r["variant"] == "foreach_norm_x2_div") for r in rows)


@pytest.mark.skipif(os.environ["TRITON_INTERPRET"] != "1", reason="TRITON_INTERPRET is not 1: no interpreter")
def test_gradnorm_bench_times_the_triton_kernel_when_kernels_env_is_triton(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFT_KERNELS", "triton")
    rows = _run(tmp_path, "--models", "resnet50", "--dtype", "bfloat16")
    assert {r["variant"] for r in rows} >= {"multi_tensor_norm[triton]"}
    assert all(set(ROW_FIELDS) <= set(r) for r in rows)


def test_gradnorm_bench_rejects_unknown_model(tmp_path):
    with pytest.raises(SystemExit):
        _run(tmp_path, "--models", "resnet51")
