import json
import struct
import sys
import time
from pathlib import Path

import pytest

from engine import cli, tracking
from engine.grid.config import grid_from_dict
from engine.grid.run import run_grid
from engine.tracking import NullTracker, create_tracker, offline_runs, sync_offline_runs
from engine.trainer import train_cell
from tests.engine.grid.helpers import tiny_grid

_BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log of 32 KiB blocks after a 7-byte header


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file, parsed with W&B's own message types."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(update) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """Keeps W&B's own files and settings inside the test's folder, with no credentials."""
    pytest.importorskip("wandb", reason="needs wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_wandb_offline_writes_one_run_per_cell_with_config_and_metrics(demo_data, tmp_path, wandb_env):
    grid = grid_from_dict(tiny_grid(demo_data, tmp_path / "out", seeds=[684],
                                    cell={"tracking": {"backend": "wandb", "project": "p"}}), "test")
    assert set(run_grid(grid).values()) == {"done"}
    for strategy in ("ft", "lp"):
        cell = tmp_path / "out" / f"shapes__tiny_resnet__{strategy}__s684"
        files = list(cell.glob("wandb/offline-run-*/*.wandb"))
        assert len(files) == 1, files
        records = wandb_records(files[0])
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.project, run.run_group, run.display_name, run.job_type) == ("p", "t", cell.name, strategy)
        assert set(run.tags) == {"shapes", "tiny_resnet", "seed_684"}
        config = _items(run.config.update)
        assert config["model"]["backbone"] == "tiny_resnet" and config["strategy"]["name"] == strategy
        assert config["trainer"]["seed"] == 684 and config["data"]["crop"] == 32
        history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
        assert [h["_step"] for h in history] == [r["epoch"] for r in rows] == [0, 1]
        assert [h["train/loss"] for h in history] == pytest.approx([r["train/loss"] for r in rows])
        assert all(h["strategy/phase"] == r["strategy/phase"] for h, r in zip(history, rows))
        summary = {}
        for record in records:
            if record.WhichOneof("record_type") == "summary":
                summary.update(_items(record.summary.update))
        result = json.loads((cell / "result.json").read_text())
        assert summary["test/accuracy"] == pytest.approx(result["test"]["accuracy"])
        assert summary["test/balanced_accuracy"] == pytest.approx(result["test"]["balanced_accuracy"])


def test_wandb_unreachable_server_never_holds_up_a_cell(cpu_cell_config, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    cfg = cpu_cell_config("trainer.max_steps_per_epoch=2", "tracking.backend=wandb", "tracking.mode=online",
                          "tracking.init_timeout_s=3")
    tracker = create_tracker(cfg, "g")
    start = time.perf_counter()
    for step in range(25_000):  # more rows than the queue holds, while W&B is still connecting
        tracker.log({"train/loss": 1.0}, step)
    assert time.perf_counter() - start < 2.0  # log() never waits for W&B
    result = train_cell(cfg, tracker)
    finish_start = time.perf_counter()
    tracker.finish()
    assert time.perf_counter() - finish_start <= cfg.tracking.init_timeout_s + 2.0
    assert result["test"]["samples"] > 0
    deadline = time.time() + 30  # W&B's own init timeout ends its thread soon after
    while not tracker.failed and time.time() < deadline:
        time.sleep(0.1)
    assert tracker.failed


def test_tracking_none_is_the_null_tracker(cpu_cell_config):
    assert isinstance(create_tracker(cpu_cell_config()), NullTracker)


def test_missing_wandb_is_one_clear_error(cpu_cell_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ValueError, match=r"needs the wandb package: pip install 'medft\[wandb\]'"):
        create_tracker(cpu_cell_config("tracking.backend=wandb"))


def _offline_run(root: Path, stamp: str, run_id: str, synced: bool = False) -> Path:
    folder = root / "wandb" / f"offline-run-{stamp}-{run_id}"
    folder.mkdir(parents=True)
    (folder / f"run-{run_id}.wandb").write_bytes(b":W&B")
    if synced:
        (folder / f"run-{run_id}.wandb.synced").touch()
    return folder


def test_sync_uploads_each_unsynced_run_once_and_counts_failures(tmp_path, monkeypatch, capsys):
    first = _offline_run(tmp_path / "cell_a", "20260101_000000", "abc")
    resumed = _offline_run(tmp_path / "cell_a", "20260102_000000", "abc")  # the same run, resumed
    broken = _offline_run(tmp_path / "cell_b", "20260101_000000", "bad")
    _offline_run(tmp_path / "cell_c", "20260101_000000", "old", synced=True)
    assert offline_runs(tmp_path) == {"abc": [first, resumed], "bad": [broken]}
    calls = tmp_path / "calls.jsonl"
    fake_cli = tmp_path / "fake_wandb.py"
    fake_cli.write_text("import json, sys\n"
                        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                        "sys.exit(1 if any('bad' in a for a in sys.argv) else 0)\n")
    monkeypatch.setattr(tracking, "_WANDB_CLI", [sys.executable, str(fake_cli)])
    assert sync_offline_runs(tmp_path, jobs=2) == 1
    made = sorted(json.loads(line) for line in calls.read_text().splitlines())
    assert made == [["sync", str(first), str(resumed)], ["sync", str(broken)]]
    assert "1 of 2 runs synced" in capsys.readouterr().out
    assert cli.main(["sync", str(tmp_path), "--jobs", "1"]) == 1
    assert cli.main(["sync", str(tmp_path / "cell_c")]) == 0


def test_wandb_mode_comes_from_the_config_unless_wandb_mode_is_set(cpu_cell_config, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = cpu_cell_config("tracking.backend=wandb", "tracking.mode=online", "tracking.group=study")
    kwargs = tracking.wandb_init_kwargs(cfg, "grid")
    assert kwargs["settings"]["mode"] == "online" and kwargs["group"] == "study"
    assert kwargs["id"] == tracking.wandb_init_kwargs(cfg)["id"]  # a resumed cell continues its run
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_init_kwargs(cfg, "grid")["settings"]["mode"] == "disabled"
