"""training.config: the typed configuration of a training run agrees with training.train's parser, reads every
committed record, and decides what "the same training" is."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from training import train
from training.config import ADDED_LATER, RUN_ONLY, TrainingConfig


def parser_options() -> list[argparse.Action]:
    # The --mixstyle / --kd / ... negations share their --no-... option's destination and set no default.
    return [a for a in train.get_args_parser()._actions if a.dest != "help" and a.default is not argparse.SUPPRESS]


def test_one_field_per_option_in_the_parsers_order_with_its_default():
    fields = dataclasses.fields(TrainingConfig)
    assert [f.name for f in fields] == [a.dest for a in parser_options()]
    defaults = TrainingConfig()
    for action in parser_options():
        default = action.default
        expected = tuple(default) if isinstance(default, list) else str(default) if isinstance(default, Path) \
            else default
        assert getattr(defaults, action.dest) == expected, action.dest
    assert set(RUN_ONLY) | set(ADDED_LATER) <= {f.name for f in fields}


@pytest.mark.parametrize("argv", [[], ["--config", "shipped"], ["--config", "erm", "--lr-scheduler", "plateau"],
                                  ["--config", "shipped", "--leave-out-domain", "TUPAC16", "--all-figures",
                                   "--threshold-from", "x/oof.json", "--kd-teacher", "weights",
                                   "--data", "a=1", "b=2"]])
def test_a_parsed_command_line_is_recorded_as_a_run_records_it(argv):
    args = train.parse_args(argv)
    train.resolve_implied_defaults(args)
    config = train.training_config(argv)
    assert config.to_record() == train.vars_for_checkpoint(args)
    assert TrainingConfig.from_record(config.to_record()) == config
    assert config.early_stop in (0, 12)  # implied defaults resolved


def test_every_committed_record_reads_back_as_written():
    paths = sorted((ROOT / "records").rglob("config.json"))
    assert paths, "no committed records"
    for path in paths:
        recorded = json.loads(path.read_text())["args"]
        config = TrainingConfig.from_record(recorded)
        assert {k: v for k, v in config.to_record().items() if k in recorded} == recorded, path


def test_the_same_training_is_equal_but_for_where_and_how_it_ran():
    base = train.training_config(["--config", "shipped", "--seed", "1"])
    elsewhere = train.training_config(["--config", "shipped", "--seed", "1", "--out", "o", "--threads", "2",
                                       "--device", "cpu", "--workers", "0", "--resume", "--no-progress"])
    assert base.same_training(elsewhere) and base != elsewhere
    for flags in (["--seed", "2"], ["--epochs", "39"], ["--config", "erm"], ["--data", "amibr=elsewhere"]):
        assert not base.same_training(train.training_config(["--config", "shipped", "--seed", "1", *flags])), flags
    older = {k: v for k, v in base.to_record().items() if k not in ADDED_LATER}  # a record of before those options
    assert TrainingConfig.from_record(older).same_training(base)


@pytest.mark.parametrize("change, message", [
    ({"lr": "fast"}, "training option lr: 'fast'"),
    ({"all_figures": 1}, "training option all_figures: 1"),
    ({"data": ["a=1", 2]}, "training option data"),
    ({"seed": 1.5}, "training option seed"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_option(change, message):
    with pytest.raises(TypeError, match=message):
        TrainingConfig.from_record(TrainingConfig().to_record() | change)


def test_an_unknown_or_missing_option_is_refused_naming_it():
    record = TrainingConfig().to_record()
    with pytest.raises(ValueError, match="unknown colour"):
        TrainingConfig.from_record(record | {"colour": "blue"})
    with pytest.raises(ValueError, match="missing epochs"):
        TrainingConfig.from_record({k: v for k, v in record.items() if k != "epochs"})
    assert TrainingConfig.from_record({**record, "kd_start_epoch": 8}).same_training(TrainingConfig())  # 8 == 8.0
