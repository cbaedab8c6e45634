"""odenet.config: validation, the seed's defaults, config files and the shipped recipes."""
import gzip
import math
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_dataset, needs_data, needs_fashion, real_data_dir, synthetic_digits, write_idx
from odenet.config import Config, load_config_file
from odenet.data import load_split, read_split, read_idx
from odenet.errors import OdenetError


@pytest.mark.parametrize("key,value,msg", [
    ("rtol", 0.0, "rtol"), ("atol", -1e-4, "atol"), ("t_end", 0, "t-end"), ("batch_size", 0, "batch-size"),
    ("lr", -0.1, "lr"), ("epochs", 0, "epochs"), ("solver", "magic", "unknown solver"),
    ("dataset", "cifar", "unknown dataset"), ("backend", "jax", "unknown backend"), ("rtol", float("nan"), "rtol"),
])
def test_config_validation(key, value, msg):
    with pytest.raises(OdenetError, match=msg):
        Config(**{key: value}).validate()


def test_defaults_are_the_seed_configuration():
    c = Config().validate()
    assert (c.batch_size, c.epochs, c.lr, c.t_end, c.ode_dim, c.solver, c.rtol, c.atol) == \
        (64, 10, 1e-3, 1.0, 64, "dopri5", 1e-3, 1e-4)
    assert c.adjoint is True
    Config(solver="dopri8").validate()  # any torchdiffeq method is accepted


def test_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("solver: rk4\nstep-size: 0.25\nepochs: 2\n")
    (tmp_path / "b.toml").write_text('solver = "euler"\nlr = 0.01\n')
    assert load_config_file(str(tmp_path / "a.yaml")) == {"solver": "rk4", "step_size": 0.25, "epochs": 2}
    assert load_config_file(str(tmp_path / "b.toml")) == {"solver": "euler", "lr": 0.01}
    (tmp_path / "c.yaml").write_text("solver: [unclosed\n")
    with pytest.raises(OdenetError, match="cannot parse"):
        load_config_file(str(tmp_path / "c.yaml"))
    with pytest.raises(OdenetError, match="unknown config key"):
        Config.from_dict({"colour": "red"})


def test_unreadable_config_is_one_line_error(tmp_path, capsys):
    from odenet.cli import main

    d = tmp_path / "dir.yaml"
    d.mkdir()  # a folder is not a readable file even for root
    with pytest.raises(OdenetError) as e:
        load_config_file(str(d))
    assert "\n" not in str(e.value) and "dir.yaml" in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nlr: 3\n")  # YAML's own message for this spans several lines
    with pytest.raises(OdenetError, match="cannot parse config file") as e:
        load_config_file(str(bad))
    assert "\n" not in str(e.value)
    for path in (d, bad):
        assert main(["train", "--config", str(path), "--out", str(tmp_path / "runs")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("odenet: error: ") and path.name in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key,value,msg", [
    ("aug_flip", "yes", "aug-flip must be true or false"), ("seminorm", 1, "seminorm must be true or false"),
    ("val_size", -1, "val-size must be"), ("ema", 1.0, "below 1"), ("optimizer", "sgd", "unknown optimizer"),
    ("label_smoothing", float("nan"), "label-smoothing must be"), ("aug_rotate", -5, "aug-rotate must be"),
    ("aug_elastic", -1.0, "aug-elastic must be"), ("aug_elastic_sigma", 0.0, "aug-elastic-sigma must be"),
    ("aug_rotate", 1e30, "aug-rotate must be at most 180"), ("aug_translate", 29, "aug-translate must be at most 28"),
    ("aug_elastic", 1e30, "aug-elastic must be at most 28"), ("warmup_epochs", 1e30, r"warmup-epochs must be at most epochs"),
])
def test_recipe_settings_are_validated(key, value, msg):
    with pytest.raises(OdenetError, match=msg):
        Config(**{key: value}).validate()


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")))
def test_shipped_recipes_are_valid_and_keep_the_seed_network_and_solver(name):
    from pathlib import Path

    values = load_config_file(str(Path(__file__).parent.parent / "configs" / name))
    cfg = Config.from_dict(values).validate()
    seed = Config()
    # training levers only: the network and the forward solve are the seed's
    for key in ("arch", "ode_dim", "t_end", "solver", "rtol", "atol", "adjoint", "backend"):
        assert getattr(cfg, key) == getattr(seed, key), key
    assert cfg.dataset == ("fashion-mnist" if name == "fashion.yaml" else "mnist")
    assert not (cfg.dataset == "mnist" and cfg.aug_flip)  # mirrors do not keep a digit's label
