"""Data-parallel cells: two CPU ranks through the deepspeed launcher and deepspeed.initialize (gloo)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from engine.config import load_cell_config
from engine.cell_files import cell_dir
from tests.helpers import read_result

pytestmark = pytest.mark.deepspeed

# No BatchNorm and no dropout: per-rank batch statistics and dropout masks would differ from one
# process's, and this test compares the arithmetic of the gradient averaging, not those.
SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from engine import models
    from engine.config import load_cell_config
    from engine.trainer import train_cell

    def plain_vgg(num_classes):
        model = models._tiny_vgg(num_classes)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model

    models.register_backbone("plain_vgg", models.BackboneSpec(plain_vgg, "classifier.6", models._vgg_blocks,
                                                              models._vgg_split))
    train_cell(load_cell_config(None, [a for a in sys.argv[1:] if not a.startswith("--local_rank")]))
""")


def _run(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _losses(cfg):
    return [json.loads(line)["train/loss"] for line in (cell_dir(cfg) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("deepspeed", path=os.path.dirname(sys.executable)) is None,
                    reason="the deepspeed launcher is not installed")
@pytest.mark.parametrize("strategy", ["ft", pytest.param("l2_sp", marks=pytest.mark.slow),
                                      pytest.param("auto_rgn", marks=pytest.mark.slow)])
def test_two_rank_data_parallel_cell_matches_one_process_with_the_global_batch(demo_data, tmp_path, strategy):
    script = tmp_path / "cell.py"
    script.write_text(SCRIPT)
    # 42 training images, global batch 14: three full steps, 7 images per rank.
    overrides = [f"data.path={demo_data}", "data.resize=36", "data.crop=32", "data.num_workers=0",
                 "data.train_batch_size=14", "model.backbone=plain_vgg", "model.weights=none",
                 f"strategy.name={strategy}", "trainer.epochs=3", "trainer.patience=5", "trainer.device=cpu"]
    one = [*overrides, f"trainer.out_dir={tmp_path / 'one'}"]
    two = [*overrides, f"trainer.out_dir={tmp_path / 'two'}", "trainer.data_parallel=true"]
    _run([sys.executable, str(script), *one], tmp_path)
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    _run([launcher, "--num_gpus", "2", "--master_port", "29731", str(script), *two], tmp_path)
    single, parallel = load_cell_config(None, one), load_cell_config(None, two)
    # Same samples, same weights: only the order of float additions differs (per-rank means, then
    # an all-reduce average), so the curves agree to float32 rounding.
    assert _losses(parallel) == pytest.approx(_losses(single), rel=1e-4)
    a = read_result(single)["test"]
    b = read_result(parallel)["test"]
    assert a["samples"] == b["samples"] and a["confusion_matrix"] == b["confusion_matrix"]


def test_data_parallel_without_a_launcher_is_a_clear_error(cpu_cell_config, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from engine.trainer import train_cell
    with pytest.raises(ValueError, match="needs a launcher"):
        train_cell(cpu_cell_config("trainer.data_parallel=true"))


def test_zero_stage_three_is_refused(cpu_cell_config):
    from engine.trainer import train_cell
    with pytest.raises(ValueError, match="trainer.zero_stage"):
        train_cell(cpu_cell_config("trainer.data_parallel=true", "trainer.zero_stage=3"))
