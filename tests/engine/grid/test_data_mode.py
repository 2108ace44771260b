"""grid.parallel=data through the deepspeed launcher: two CPU ranks train each cell together."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cell_files import ATTEMPTS_FILE
from tests.engine.grid.test_cells_mode import REPO, results, tiny_grid, write_grid

pytestmark = pytest.mark.deepspeed


def test_grid_data_parallel_trains_each_cell_once_over_both_ranks(demo_data, tmp_path):
    pytest.importorskip("deepspeed", reason="needs deepspeed")
    grid = tiny_grid(demo_data, tmp_path / "out", strategies=["ft", "lp"], seeds=[684],
                     grid={"parallel": "data", "zero_stage": 1})
    config = write_grid(tmp_path / "g.yaml", grid)
    launcher = Path(sys.executable).parent / "deepspeed"
    done = subprocess.run([str(launcher), "--num_gpus", "2", "--master_port", "29733", "--module", "engine.grid",
                           str(config)], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = sorted((tmp_path / "out").glob("shapes__*"))
    assert len(cells) == 2 and len(results(tmp_path / "out")) == 2
    for cell in cells:
        rows = [json.loads(line) for line in (cell / ATTEMPTS_FILE).read_text().splitlines()]
        assert [(r["event"], r["rank"]) for r in rows] == [("start", 0), ("done", 0)]
        epochs = [json.loads(line)["epoch"] for line in (cell / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [0, 1]  # written once, by rank 0
        # 42 training images, global batch 16, max 2 steps: 32 images per epoch over both ranks.
        assert json.loads((cell / "result.json").read_text())["train_images"] == 2 * 32
