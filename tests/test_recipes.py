"""Recipes as files (configs/*.toml): loading, override precedence, errors, and the shipped recipe
against the model card of the shipped weights."""

import json
import shlex

import pytest
import torch

from tests.conftest import ROOT
from tests.test_training import data_root
from training import export, provenance, recipes, train
from training.config import ADDED_LATER, RUN_ONLY

CARD = json.loads((ROOT / "weights" / "model_card.json").read_text())
# The shipped networks: an ensemble's members, or the one network of a single-network card.
MEMBERS = CARD["ensemble"]["members"] if "ensemble" in CARD else [
    {"seed": CARD["training"]["args"]["seed"], "training": CARD["training"]}]

# Arguments that say where and how a run ran, not what it trained: left out of the comparison with
# the card. Everything else must be what the recipe (and the card's data, split and seed) gives.
RUN_SPECIFIC = ("config", *RUN_ONLY)
# Arguments added after the shipped networks were trained, with the value that trains as they were
# trained: the card lacks them, and they count only where a run sets them otherwise.
NEWER_THAN_CARD = ADDED_LATER


def resolve(argv: list[str]) -> dict:
    """training.train's arguments for argv as a run records them, nothing trained."""
    return train.training_config(argv).to_record()


def without(args: dict, keys=RUN_SPECIFIC) -> dict:
    return {k: v for k, v in args.items()
            if k not in keys and not (k in NEWER_THAN_CARD and v == NEWER_THAN_CARD[k])}


@pytest.mark.parametrize("member", MEMBERS, ids=[f"seed{m['seed']}" for m in MEMBERS])
def test_shipped_recipe_resolves_to_the_cards_args_for_every_member(member):
    recorded = member["training"]["args"]
    argv = ["--config", "configs/shipped.toml", "--seed", str(recorded["seed"]), "--data", *recorded["data"],
            "--out", recorded["out"]]
    # The split is the command line's: a split file (a held-out validation part) or every figure.
    argv += ["--split-file", recorded["split_file"]] if recorded.get("split_file") else []
    argv += ["--all-figures"] if recorded.get("all_figures") else []
    resolved = resolve(argv)
    assert set(resolved) | set(NEWER_THAN_CARD) == set(recorded) | set(NEWER_THAN_CARD) | {"config"}, \
        "the card and the parser know the same arguments"
    assert {k: resolved[k] for k in NEWER_THAN_CARD} == {k: recorded.get(k, v) for k, v in NEWER_THAN_CARD.items()}
    assert without(resolved) == without(recorded)
    assert resolved["config"] == "configs/shipped.toml"
    # The card's command line (flags against the parser defaults) gives the same arguments too.
    assert without(resolve(shlex.split(member["training"]["command"])[3:])) == without(recorded)
    # And the run is recognised as the shipped recipe's from its arguments alone.
    assert recipes.matching(recorded, train.get_args_parser()) == ["shipped"]


def test_the_card_records_the_shipped_export_flags():
    settings = recipes.export_settings(export.get_args_parser(), "shipped")
    assert settings == {"half": True, "tta": "none", "threshold_rule": "halfway"}
    assert CARD["tta"] == settings["tta"] and CARD["weights_storage"].startswith("float16")
    assert "--threshold-rule halfway" in CARD["export_command"] and "--half" in CARD["export_command"]
    args = export.parse_args(["runs/x", "--config", "shipped"])
    assert (args.half, args.tta, args.threshold_rule) == (True, "none", "halfway")
    args = export.parse_args(["runs/x", "--config", "shipped", "--tta", "dihedral"])  # a flag overrides
    assert (args.half, args.tta, args.threshold_rule) == (True, "dihedral", "halfway")
    assert export.parse_args(["runs/x"]).tta == "dihedral"  # no recipe: the parser's defaults


def test_erm_and_paper_recipes_are_the_documented_flag_strings():
    base = ["--data", "amibr=D", "--out", "o"]
    # erm: the sweeps' "erm" arm (and the ensemble shipped until 2026-11-30).
    assert without(resolve(["--config", "erm", *base])) == \
        without(resolve(["--no-mixstyle", "--no-align", "--no-kd", *base]))
    # paper: the README's "paper's schedule, for GPUs".
    paper = ("--batch-size 512 --lr 1e-3 --lr-scheduler plateau --monitor ba --epochs 100 --early-stop 15 "
             "--no-ema-warmup --kd-start-epoch 0").split()
    assert without(resolve(["--config", "configs/paper.toml", *base])) == without(resolve([*paper, *base]))
    resolved = resolve(["--config", "paper", *base])
    assert not (resolved["no_mixstyle"] or resolved["no_align"] or resolved["no_kd"])
    assert (resolved["kd_temperature"], resolved["kd_weight"], resolved["kd_warmup_epochs"]) == (2.0, 0.5, 10.0)
    assert (resolved["weight_decay"], resolved["clip_grad"]) == (1e-2, 1.0)
    assert recipes.available() == ["erm", "paper", "shipped"]


def test_command_line_flags_override_the_recipe_wherever_they_stand():
    for argv in (["--config", "shipped", "--epochs", "3", "--kd", "--light-aug-epochs", "0"],
                 ["--epochs", "3", "--kd", "--light-aug-epochs", "0", "--config=configs/shipped.toml"]):
        args = train.parse_args(argv)
        assert (args.epochs, args.no_kd, args.light_aug_epochs) == (3, False, 0)
        assert args.no_mixstyle and args.no_align and args.early_stop == 0  # the rest is the recipe's
    assert train.parse_args(["--config", "paper", "--no-kd"]).no_kd
    assert train.parse_args(["--config", "paper", "--ema-warmup"]).no_ema_warmup is False
    assert train.parse_args(["--config", "shipped", "--mixstyle", "--align"]).no_mixstyle is False
    # Without a recipe the negations change nothing, and the parser defaults are as before.
    plain = train.parse_args(["--kd", "--mixstyle"])
    assert vars(plain) == vars(train.get_args_parser().parse_args([]))
    flags = recipes.flags_for(train.vars_for_checkpoint(plain), train.get_args_parser())  # no negations
    assert not {"--kd", "--mixstyle", "--align", "--ema-warmup"} & set(flags)
    shipped = recipes.flags_for(train.vars_for_checkpoint(train.parse_args(["--config", "shipped"])),
                                train.get_args_parser())
    assert {"--no-kd", "--no-mixstyle", "--no-align"} <= set(shipped) and "--kd" not in shipped


def write(tmp_path, text: str):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("learning_rate = 1e-3\n", r"recipe\.toml: unknown key 'learning_rate'"),
    ("epochs = 40\nno_mixstyle = 1\n", r"recipe\.toml: no_mixstyle = 1: expected true or false"),
    ('epochs = "40"\n', r"recipe\.toml: epochs = '40': expected an integer"),
    ('lr_scheduler = "cosine"\n', r"recipe\.toml: lr_scheduler = 'cosine': expected one of onecycle, plateau"),
    ('data = "amibr=x"\n', r"recipe\.toml: data = 'amibr=x': expected a list"),
    ('config = "shipped"\n', r"recipe\.toml: 'config': a recipe cannot name another recipe"),
    ("[export]\nhalf = true\nout = \"w\"\n", None),  # the export table is not checked by training.train
    ("epochs = \n", r"recipe\.toml: not a valid TOML file"),
])
def test_a_bad_recipe_is_an_error_naming_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    if message is None:
        assert train.parse_args(["--config", path]).epochs == 40
        with pytest.raises(SystemExit, match=r"recipe\.toml \[export\]: unknown key 'out'"):
            export.parse_args(["runs/x", "--config", path])
        return
    with pytest.raises(SystemExit, match=message):
        train.parse_args(["--config", path])


def test_recipe_values_are_converted_as_the_command_line_would():
    args = train.parse_args(["--config", "shipped"])
    assert isinstance(args.lr, float) and isinstance(args.kd_warmup_epochs, float)
    path = ROOT / "configs" / "shipped.toml"
    with pytest.raises(SystemExit, match="no such file, nor a recipe name"):
        train.parse_args(["--config", "shiped"])
    assert recipes.recipe_path("shipped") == path == recipes.recipe_path(str(path))


def test_a_run_saves_its_resolved_config_and_the_card_records_the_recipe(tmp_path):
    args = train.parse_args(["--config", "erm", "--data", f"amibr={data_root(tmp_path)}", "--limit", "64",
                             "--batch-size", "16", "--input-size", "64", "--out", str(tmp_path / "run"),
                             "--no-progress", "--workers", "0", "--epochs", "1", "--light-aug-epochs", "1"])
    train.main(args)
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert saved["args"] == ckpt["args"] and saved["config"] == "erm" and saved["name"] == "erm"
    assert saved["sha256"] == provenance.file_sha256(ROOT / "configs" / "erm.toml")
    assert saved["settings"]["no_kd"] is True and saved["overrides"]["light_aug_epochs"] == 1
    assert saved["overrides"]["epochs"] == 1 and "no_kd" not in saved["overrides"]
    # The command written against the recipe reproduces the run's arguments.
    command = recipes.command(saved, train.get_args_parser())
    assert command.startswith("python -m training.train --config erm ")
    assert resolve(shlex.split(command)[3:]) == ckpt["args"]

    card = export.main(export.get_args_parser().parse_args([str(run), "--out", str(tmp_path / "w"), "--tta", "none"]))
    recipe = card["training"]["recipe"]
    assert (recipe["config"], recipe["name"], recipe["command"]) == ("erm", "erm", command)
    assert recipe["overrides"] == saved["overrides"] and "args" not in recipe
    assert recipe["matches"] == []  # erm with --light-aug-epochs 1 is no recipe of configs/
    assert card["training"]["args"]["config"] == "erm" and "--config" not in card["training"]["command"]
    assert without(resolve(shlex.split(card["training"]["command"])[3:])) == without(ckpt["args"])

