"""Two nodes on one machine: two DeepSpeed launchers (`--hostfile` of two hosts, `--no_ssh
--node_rank N`, as docs/cluster.md runs them) over one out_dir. Every cell is trained exactly once,
both nodes train cells, log lines carry the rank and the cell, and rank 0 alone logs progress."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cell_files import ATTEMPTS_FILE
from tests.engine.grid.helpers import REPO, results, tiny_grid, write_grid

pytestmark = pytest.mark.deepspeed


# Worker processes take seconds each to start; minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_two_launchers_as_two_nodes_train_each_cell_once(demo_data, tmp_path):
    pytest.importorskip("deepspeed", reason="needs deepspeed")
    out = tmp_path / "out"
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, out, strategies=["ft", "lp", "lp_ft"]))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    launcher = Path(sys.executable).parent / "deepspeed"
    # both_ranks_grid.py: `python -m engine.grid` whose first cell per rank waits for the other
    # rank's first start, so that one node cannot finish every cell before the other is up.
    nodes = [subprocess.Popen([str(launcher), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
                               "--master_addr", "127.0.0.1", "--master_port", "29741", "--module",
                               "tests.engine.grid.both_ranks_grid", str(config)],
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    cells = sorted(out.glob("shapes__*"))
    assert len(cells) == 6 and len(results(out)) == 6
    ranks = set()
    for cell in cells:
        rows = [json.loads(line) for line in (cell / ATTEMPTS_FILE).read_text().splitlines()]
        assert [r["event"] for r in rows] == ["start", "done"], cell.name  # trained exactly once
        ranks.add(rows[0]["rank"])
        trained_by = logs[rows[0]["rank"]]
        assert f"[rank {rows[0]['rank']} {cell.name}] engine.grid.worker: cell {cell.name}: done" in trained_by
    assert ranks == {0, 1}
    assert "grid t: 6/6 done" in logs[0] and "cells done in" in logs[0]  # progress and summary: rank 0 only
    assert "/6 done," not in logs[1] and "cells done in" not in logs[1]
