"""A result belongs to its config (engine/config_guard.py): `train_cell` and `medft train` refuse a
folder whose saved config differs in a key that changes results, and `--restart-changed` moves it aside."""
import dataclasses
import json

import pytest
import yaml

from engine import cli
from engine.cell_files import CONFIG_FILE, LAST_CKPT, PROVENANCE_FILE, REPLACED_DIR, RESULT_FILE, cell_dir
from engine.config import RESULT_NEUTRAL_KEYS, CellConfig, from_dict, load_cell_config, to_dict
from engine.config_guard import ConfigMismatch, Difference, config_differences
from engine.trainer import train_cell


def _flat_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def test_every_result_neutral_key_names_a_config_field_and_says_why():
    fields = _flat_keys(to_dict(CellConfig()))
    assert set(RESULT_NEUTRAL_KEYS) <= fields
    assert all(isinstance(why, str) and len(why) > 10 for why in RESULT_NEUTRAL_KEYS.values())


def test_config_differences_name_the_changed_keys_with_both_values_and_skip_neutral_keys():
    saved = load_cell_config(None, ["strategy.name=l1_sp", "optim.lr=0.001"])
    new = load_cell_config(None, ["strategy.name=l1_sp", "optim.lr=0.01", "strategy.alpha=0.5",
                                  "data.num_workers=7", "trainer.device=cuda:3", "trainer.out_dir=elsewhere",
                                  "tracking.backend=wandb", "data.mean=[0.5,0.5,0.5]"])
    assert config_differences(saved, new) == [
        Difference("data.mean", [0.485, 0.456, 0.406], [0.5, 0.5, 0.5]),
        Difference("optim.lr", 0.001, 0.01), Difference("strategy.alpha", saved.strategy.alpha, 0.5)]
    assert str(Difference("optim.lr", 0.001, 0.01)) == "optim.lr: saved 0.001, now 0.01"
    neutral = dataclasses.replace(saved, data=dataclasses.replace(saved.data, num_workers=9), name="other")
    assert config_differences(saved, neutral) == []


@pytest.fixture
def done_cell(cpu_cell_config):
    cfg = cpu_cell_config("trainer.epochs=1", "trainer.max_steps_per_epoch=2")
    return cfg, train_cell(cfg)


def test_a_done_cell_is_returned_only_under_its_own_config(done_cell, cpu_cell_config):
    cfg, result = done_cell
    folder = cell_dir(cfg)
    saved = {name: (folder / name).read_bytes() for name in (CONFIG_FILE, RESULT_FILE)}
    changed = cpu_cell_config("trainer.epochs=1", "trainer.max_steps_per_epoch=2", "optim.lr=0.01")
    with pytest.raises(ConfigMismatch) as error:
        train_cell(changed)
    message = str(error.value)
    assert "optim.lr: saved 0.001, now 0.01" in message and cfg.cell_id in message and "(done)" in message
    assert "new out_dir" in message and "--restart-changed" in message
    assert {name: (folder / name).read_bytes() for name in saved} == saved  # the folder still tells the truth
    neutral = cpu_cell_config("trainer.epochs=1", "trainer.max_steps_per_epoch=2", "data.num_workers=1",
                              "data.eval_batch_size=8")
    assert train_cell(neutral) == result


def test_a_resumable_cell_is_resumed_only_under_its_own_config(done_cell, cpu_cell_config):
    cfg, _ = done_cell
    (cell_dir(cfg) / RESULT_FILE).unlink()  # killed after its last epoch's checkpoint, before the result
    assert (cell_dir(cfg) / LAST_CKPT).is_file()
    changed = cpu_cell_config("trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.patience=9")
    with pytest.raises(ConfigMismatch, match=r"\(resumable\): trainer.patience: saved 3, now 9"):
        train_cell(changed)
    (cell_dir(cfg) / CONFIG_FILE).unlink()
    with pytest.raises(ConfigMismatch, match="config.yaml: saved 'missing'"):
        train_cell(cfg)


def test_result_and_folder_carry_provenance_and_config_yaml_still_loads(done_cell):
    cfg, result = done_cell
    folder = cell_dir(cfg)
    assert from_dict(CellConfig, yaml.safe_load((folder / CONFIG_FILE).read_text()), "saved") == cfg
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    assert result["provenance"] == provenance
    assert {"medft", "git_commit", "torch", "torchvision", "dali", "deepspeed", "triton", "device",
            "torch_threads", "data_fingerprint"} <= set(provenance)


def test_medft_train_stops_on_a_changed_config_and_restart_changed_moves_it_aside(done_cell, capsys):
    cfg, result = done_cell
    args = ["train", f"data.path={cfg.data.path}", "data.resize=36", "data.crop=32", "data.num_workers=0",
            "data.train_batch_size=16", "data.eval_batch_size=32", "model.backbone=tiny_resnet", "model.weights=none",
            "trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.device=cpu",
            f"trainer.out_dir={cfg.trainer.out_dir}", "optim.lr=0.01"]
    assert cli.main(args) == 2
    assert "optim.lr: saved 0.001, now 0.01" in capsys.readouterr().err
    assert cli.main([*args, "--restart-changed"]) == 0
    moved = list((cell_dir(cfg).parent / REPLACED_DIR).glob(f"*/{cfg.cell_id}"))
    assert len(moved) == 1 and json.loads((moved[0] / RESULT_FILE).read_text()) == result
    saved = yaml.safe_load((cell_dir(cfg) / CONFIG_FILE).read_text())
    assert saved["optim"]["lr"] == 0.01 and (cell_dir(cfg) / RESULT_FILE).is_file()
    assert cli.main([*args, "--restart-changed"]) == 0  # same config now: nothing moves
    assert len(list((cell_dir(cfg).parent / REPLACED_DIR).glob(f"*/{cfg.cell_id}"))) == 1
