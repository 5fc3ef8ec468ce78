import os
from dataclasses import dataclass, field
from typing import Optional

import pytest

from configurator import UserError, parse_args, parse_overrides
from conftest import ROOT


@dataclass
class Cfg:
    """A test config."""
    batch_size: int = 12  # sequences per batch
    learning_rate: float = 6e-4  # peak learning rate
    compile: Optional[bool] = None  # compile or not
    dataset: str = "tinystories"  # which data
    bias: bool = False  # biases
    input: list[str] = field(default_factory=list)  # files


def test_defaults_and_both_flag_forms():
    assert parse_args(Cfg, []) == Cfg()
    c = parse_args(Cfg, ["--batch_size=32", "--learning_rate", "1e-3", "--compile=False", "--dataset", "x/y"])
    assert (c.batch_size, c.learning_rate, c.compile, c.dataset) == (32, 1e-3, False, "x/y")


def test_bare_bool_flag_and_list_values():
    c = parse_args(Cfg, ["--bias", "--input", "a.txt", "b.txt", "--batch_size", "2"])
    assert c.bias is True and c.input == ["a.txt", "b.txt"] and c.batch_size == 2


def test_string_values_are_taken_as_written():
    assert parse_args(Cfg, ["--dataset=123"]).dataset == "123"
    assert parse_args(Cfg, ["--dataset", "1 + 1"]).dataset == "1 + 1"


def test_config_file_then_command_line(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\nbatch_size = 64\nlearning_rate = 1e-3 * 2\n")
    c = parse_args(Cfg, [str(f), "--batch_size=8"])
    assert (c.batch_size, c.learning_rate) == (8, 2e-3)
    assert parse_overrides(Cfg, [str(f)]) == {"batch_size": 64, "learning_rate": 2e-3}


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'batch_sise'.*did you mean 'batch_size'"):
        parse_args(Cfg, ["--batch_sise=3"])
    f = tmp_path / "c.py"
    f.write_text("lerning_rate = 1.0\n")
    with pytest.raises(UserError, match=r"'lerning_rate' in .*c.py.*'learning_rate'"):
        parse_args(Cfg, [str(f)])


@pytest.mark.parametrize("arg, msg", [
    ("--batch_size=abc", "batch_size='abc'.*integer"),
    ("--batch_size=1.5", "batch_size='1.5'.*integer"),
    ("--learning_rate=fast", "learning_rate='fast'.*number"),
    ("--bias=maybe", "bias='maybe'.*True or False"),
])
def test_wrong_type_names_the_key(arg, msg):
    with pytest.raises(UserError, match=msg):
        parse_args(Cfg, [arg])


def test_missing_config_file_and_missing_value():
    with pytest.raises(UserError, match="config file 'nope.py' not found"):
        parse_args(Cfg, ["nope.py"])
    with pytest.raises(UserError, match="--batch_size needs a value"):
        parse_args(Cfg, ["--batch_size"])


def test_help_lists_every_key_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(Cfg, ["--help"], prog="x.py")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for line in ("--batch_size=12", "sequences per batch", "--learning_rate=0.0006", "peak learning rate",
                 "--compile=None", "--input=[]", "files"):
        assert line in out


def test_train_help_documents_every_key():
    from configurator import field_help
    from dataclasses import fields
    from train import TrainConfig
    from sample import SampleConfig
    from prepare import PrepareConfig
    from eval import EvalConfig
    from export import ExportConfig
    from bench import SampleBench
    for cls in (TrainConfig, SampleConfig, PrepareConfig, EvalConfig, ExportConfig, SampleBench):
        helps = field_help(cls)
        assert all(helps.get(f.name) for f in fields(cls)), [f.name for f in fields(cls) if not helps.get(f.name)]


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "config"))))
def test_shipped_configs_parse(name):
    from train import TrainConfig
    cfg = parse_args(TrainConfig, [os.path.join(ROOT, "config", name)])
    assert cfg.learning_rate > cfg.min_lr > 0 and cfg.max_iters >= cfg.lr_decay_iters


def test_modern_config_is_the_base_recipe_plus_its_switches():
    from train import TrainConfig
    base = parse_args(TrainConfig, [os.path.join(ROOT, "config", "shakespeare_char.py"), "--n_embd=128"])
    modern = parse_args(TrainConfig, [os.path.join(ROOT, "config", "shakespeare_char_modern.py"), "--n_embd=128"])
    assert (modern.rope, modern.qk_norm, modern.optimizer) == (True, True, "muon")
    assert (base.rope, base.qk_norm, base.optimizer) == (False, False, "adamw")
    same = ("dataset", "n_layer", "n_head", "block_size", "batch_size", "dropout", "learning_rate", "min_lr", "max_iters")
    assert all(getattr(modern, k) == getattr(base, k) for k in same) and modern.learning_rate == pytest.approx(3e-3)
