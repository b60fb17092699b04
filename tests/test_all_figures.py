"""training.all_figures: cross-fit -> out-of-fold threshold -> all-figures ensemble -> distilled student, in one
resumable command."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from model.predict import Predictor
from tests.conftest import ROOT
from tests.test_born_again import smoke_flags
from training import all_figures, train


def parse(*options, train_flags=()):
    return all_figures.get_args_parser().parse_args([*options, "--", *train_flags])


def readme_retrain_command() -> list[str]:
    """The arguments of README.md's retraining command: the fenced bash block of its section "7. Retraining"
    that starts with ``midog-reproduce`` (pyproject.toml's console command for ``python -m training.all_figures``),
    backslash-continued lines joined, split as a shell would."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## 7\. Retraining\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no section '## 7. Retraining'"
    blocks = [b for b in re.findall(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
              if b.startswith("midog-reproduce")]
    assert len(blocks) == 1, f"README.md section 7: {len(blocks)} bash blocks start with midog-reproduce"
    command = re.sub(r"\\\n", " ", blocks[0]).strip()
    assert "\n" not in command, f"README.md section 7: one command expected in the block, got {command!r}"
    argv = shlex.split(command)
    assert argv[0] == "midog-reproduce", argv
    return argv[1:]


def test_midog_reproduce_runs_training_all_figures(monkeypatch):
    """The README's command name is the one-command retrain: pyproject.toml maps it to training.cli.reproduce,
    which runs training.all_figures as ``python -m`` does."""
    import tomllib

    from training import cli
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["midog-reproduce"] == "training.cli:reproduce"
    ran = []
    monkeypatch.setattr(cli, "run_as_main", ran.append)
    cli.reproduce()
    assert ran == ["training.all_figures"]


def planned(capsys, tmp_path, *options, train_flags=("--data", "amibr=DATA")):
    """The dry run's commands: {label: argv}, label the folder or step name."""
    return dry_run(capsys, parse("--out", str(tmp_path / "o"), "--dry-run", *options, train_flags=train_flags))


def dry_run(capsys, args) -> dict[str, list[str]]:
    """``training.all_figures``'s dry run of ``args``: {label: argv}, label the folder or step name."""
    args.dry_run = True
    all_figures.main(args)
    commands = {}
    for line in capsys.readouterr().out.splitlines():
        label, command = line.split(": ", 1)
        commands[label.split("] ")[0].lstrip("[")] = shlex.split(command)
    return commands


def value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_the_shipped_recipe_plans_a_4_fold_cross_fit_three_members_and_a_distilled_student(tmp_path, capsys):
    out = tmp_path / "o"
    c = planned(capsys, tmp_path, "--recipe", "shipped", "--procedure", "distilled", "--export", str(tmp_path / "w"))
    assert list(c) == ["cv0", "cv1", "cv2", "cv3", "all-s0", "all-s1", "all-s2", "oof", "ensemble", "student",
                       "student-weights", "export"]
    for i in range(4):  # the cross-fit: one seed, fold i of K = 4, validation scores for training.oof
        assert value(c[f"cv{i}"], "--cv-fold") == str(i) and value(c[f"cv{i}"], "--seed") == "0"
        assert value(c[f"cv{i}"], "--config") == "shipped" and "--all-figures" not in c[f"cv{i}"]
    for seed in range(3):
        member = c[f"all-s{seed}"]
        assert "--all-figures" in member and value(member, "--seed") == str(seed) and "--cv-fold" not in member
        assert "--kd" not in member and "--kd-teacher" not in member  # the recipe's ERM
    assert c["oof"][3:7] == [str(out / f"cv{i}") for i in range(4)] and value(c["oof"], "--out") == str(out / "oof")
    oof_json = str(out / "oof" / "oof.json")
    assert c["ensemble"][3:6] == [str(out / f"all-s{s}") for s in range(3)]
    student = c["student"]
    assert "--all-figures" in student and "--kd" in student  # the shipped recipe switches KD off: on again
    assert value(student, "--kd-teacher") == str(out / "ensemble") and value(student, "--seed") == "0"
    assert [value(student, f) for f in ("--kd-start-epoch", "--kd-warmup-epochs", "--kd-weight", "--kd-temperature")] \
        == ["0", "0", "1.0", "2.0"]
    for step in ("ensemble", "student-weights", "export"):  # the recipe's [export] table, the cross-fit's threshold
        assert value(c[step], "--threshold-from") == oof_json and "--half" in c[step]
        assert value(c[step], "--tta") == "none"
    assert c["export"][3] == str(out / "student") and value(c["export"], "--out") == str(tmp_path / "w")


def test_the_default_procedure_is_the_one_weights_ships(tmp_path, capsys):
    """Without --procedure the command plans what weights/ holds: a student distilled from the ensemble
    (--kd-teacher in the card's training) or else the ensemble of all-figures members itself."""
    from tests.test_recipes import CARD

    c = planned(capsys, tmp_path, "--recipe", "shipped")
    ships_student = bool(CARD["training"]["args"].get("kd_teacher"))
    assert ("student" in c) == ships_student and list(c)[-1] == ("student-weights" if ships_student else "ensemble")


def test_the_readme_command_plans_the_shipped_networks(tmp_path, capsys):
    """The shipped weights are the all-figures procedure of the shipped recipe: the one retraining command,
    as README.md gives it (its OUT moved to a temporary folder), plans networks that resolve to the arguments
    their card records, seed by seed, and exports them into weights/."""
    from tests.test_recipes import CARD, MEMBERS, resolve, without

    if not CARD["training"]["args"].get("all_figures"):
        pytest.skip("the shipped weights kept a validation split (lab.born_again made them)")
    assert "out-of-fold" in CARD["threshold_rule"] and CARD["validation"]["cross_fit"]["n_figures"] == 2894
    args = all_figures.get_args_parser().parse_args(readme_retrain_command())
    args.out = tmp_path / "o"
    c = dry_run(capsys, args)
    assert [m["seed"] for m in MEMBERS] == [0, 1, 2]
    for member in MEMBERS:
        planned_args = resolve(c[f"all-s{member['seed']}"][3:])
        assert without(planned_args) == without(member["training"]["args"])
    assert c["export"][3:6] == [str(tmp_path / "o" / f"all-s{s}") for s in range(3)]
    assert c["export"][6:] == ["--out", "weights", "--half", "--tta", "none", "--threshold-rule", "halfway",
                               "--threshold-from", str(tmp_path / "o" / "oof" / "oof.json")]


def test_the_all_figures_procedure_ships_the_ensemble_and_trains_no_student(tmp_path, capsys):
    c = planned(capsys, tmp_path, "--recipe", "shipped", "--procedure", "all-figures", "--seeds", "4", "5",
                "--export", str(tmp_path / "w"), train_flags=("--data", "amibr=DATA", "--val-fraction", "0.2"))
    assert [k for k in c if k.startswith("cv")] == [f"cv{i}" for i in range(5)]  # K = round(1 / 0.2)
    assert value(c["cv3"], "--seed") == "4" and "student" not in c and "all-s5" in c
    assert c["export"][3:5] == [str(tmp_path / "o" / "all-s4"), str(tmp_path / "o" / "all-s5")]


def test_a_retrain_with_the_readme_command_writes_a_card_a_fresh_clone_accepts(tmp_path, monkeypatch, capsys):
    """README.md's retraining command, run in a copy of the repository with the trainings, the out-of-fold step
    and the export's networks faked: its cross-fit writes OUT/oof/oof.json under runs/, which git ignores,
    and the export keeps the file it took the threshold from beside the weights (training.export
    .keep_out_of_fold_scores), so the card's ``threshold_from`` passes tests/test_reproduce_card.py's check
    with runs/ gone, as in a fresh clone; the cross-fit's own file would not."""
    from tests.test_reproduce_card import committed_cross_fit
    from training import chain, export

    clone = tmp_path / "clone"
    clone.mkdir()
    monkeypatch.chdir(clone)
    args = all_figures.get_args_parser().parse_args(readme_retrain_command())
    steps = []

    def fake_run_steps(run_steps, run_dir, log, env, threads=None):
        for step in run_steps:
            steps.append(run_dir.name if step.name == "train" else step.name)
            if step.name == "oof":  # training.oof writes OUT/oof/oof.json
                folder = Path(value(list(step.argv), "--out"))
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "oof.json").write_text(json.dumps({"command": step.command(), "figures": []}))

    def fake_export(final, out, target, networks, env):  # the card's record of the cross-fit, as training.export
        exported = export.get_args_parser().parse_args(list(final.argv[3:]))
        assert exported.out == target == args.export
        card = {"validation": {"cross_fit": export.keep_out_of_fold_scores(exported.threshold_from, exported.out)}}
        (exported.out / "model_card.json").write_text(json.dumps(card))

    monkeypatch.setattr(chain, "run_steps", fake_run_steps)
    monkeypatch.setattr(chain, "export_ensemble", fake_export)
    all_figures.main(args)
    assert sorted(steps) == sorted(["cv0", "cv1", "cv2", "cv3", "all-s0", "all-s1", "all-s2", "oof", "ensemble"])
    cross_fits_own = args.out / "oof" / "oof.json"
    assert cross_fits_own.is_file() and cross_fits_own.parts[0] == "runs"
    shutil.rmtree(clone / "runs")  # git-ignored: not in a fresh clone

    card = json.loads((clone / args.export / "model_card.json").read_text())
    path, _ = committed_cross_fit(card, root=clone)
    assert path == clone / args.export / "oof.json"
    assert card["validation"]["cross_fit"]["copied_from"] == str(cross_fits_own)
    stale = {"validation": {"cross_fit": {**card["validation"]["cross_fit"], "oof_json": str(cross_fits_own)}}}
    with pytest.raises(AssertionError, match="git-ignored|not committed"):
        committed_cross_fit(stale, root=clone)


@pytest.mark.parametrize("flag", [["--cv-fold", "1"], ["--all-figures"], ["--split-file", "s.json"], ["--seed", "0"],
                                  ["--kd-teacher", "w"], ["--leave-out-domain", "TUPAC16"], ["--threshold-from", "x"],
                                  ["--out", "x"]])
def test_flags_the_chain_sets_are_refused(tmp_path, flag):
    with pytest.raises(SystemExit, match="set by the chain"):
        all_figures.main(parse("--out", str(tmp_path / "o"), "--dry-run", train_flags=flag))


def test_what_cannot_train_on_every_figure_is_refused_before_any_training(tmp_path):
    recipe = tmp_path / "plateau.toml"
    recipe.write_text('lr_scheduler = "plateau"\n')
    with pytest.raises(SystemExit, match=r"all-s0 cannot run: --all-figures needs --lr-scheduler onecycle"):
        all_figures.main(parse("--out", str(tmp_path / "o"), "--recipe", str(recipe), "--dry-run"))
    with pytest.raises(SystemExit, match="leave --threshold-from out"):
        all_figures.main(parse("--out", str(tmp_path / "o"), "--export-flags", "--tta none --threshold-from x",
                               "--dry-run"))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_fold_cross_fit_two_members_and_a_student_end_to_end_then_nothing_again(tmp_path, capsys):
    out, weights = tmp_path / "all", tmp_path / "weights"
    flags = smoke_flags(tmp_path, "--val-fraction", "0.5", "--no-kd")
    options = ["--out", str(out), "--procedure", "distilled", "--seeds", "0", "1", "--parallel", "2",
               "--export-flags", "--tta none",
               "--export", str(weights)]
    assert all_figures.main(parse(*options, train_flags=flags)) == out / "student"
    report = json.loads((out / "oof" / "oof.json").read_text())
    card = json.loads((weights / "model_card.json").read_text())
    # The shipped network is the student, trained on every figure against the two-network ensemble, at the
    # threshold fitted on the cross-fit's out-of-fold scores.
    assert card["threshold"] == report["summary"]["threshold"] and card["data"]["n_val"] == 0
    assert card["training"]["kd_teacher"]["path"] == str(out / "ensemble")
    assert card["validation"]["cross_fit"]["n_figures"] == card["data"]["n_train"]
    teacher = json.loads((out / "ensemble" / "model_card.json").read_text())
    assert teacher["ensemble"]["size"] == 2 and teacher["threshold"] == card["threshold"]
    assert json.loads((out / "student" / "history.json").read_text())[-1]["w_kd"] > 0
    assert list(json.loads((out / "steps.json").read_text())) == ["oof", "ensemble", "student", "student-weights"]
    for run in ("cv0", "cv1", "all-s0", "all-s1"):  # side by side: each logged to its folder, with a thread share
        assert "--threads" in json.loads((out / run / "steps.json").read_text())["train"]
        assert "$ " in (out / run / "chain.log").read_text()
    Predictor(weights)

    # Again, one at a time: every step skipped, nothing trained or exported again.
    stamp = (out / "student" / "last.pt").stat().st_mtime_ns
    exported = (weights / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    all_figures.main(parse(*[o if o != "2" else "1" for o in options], train_flags=flags))
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == 4 + 4 and f"export: done before into {weights}" in printed
    assert (out / "student" / "last.pt").stat().st_mtime_ns == stamp
    assert (weights / "model.safetensors").stat().st_mtime_ns == exported
    # Other training flags into the same folder: refused, not mixed.
    with pytest.raises(SystemExit, match="different command"):
        all_figures.main(parse(*options, train_flags=[*flags, "--dropout", "0.3"]))


def test_record_keeps_every_training_and_a_recorded_fold_is_not_trained_again(tmp_path, monkeypatch, capsys):
    """--record DIR: each training is recorded as it finishes, the out-of-fold step reads the cross-fit from
    DIR, and on a machine without OUT a recorded fold is skipped while the members (whose networks the export
    needs) train again. The trainings and exports are faked here: each "training" writes a finished run."""
    from training import chain

    trained = []

    def fake_run_steps(steps, run_dir, log, env, threads=None):
        for step in steps:
            if step.argv[1:3] == ("-m", "training.train"):
                trained.append(run_dir.name)
                run_dir.mkdir(parents=True, exist_ok=True)
                config = train.training_config(list(step.argv[3:]))
                (run_dir / "config.json").write_text(json.dumps({"args": config.to_record()}))
                for name in ("history.json", "summary.json"):  # summary.json last, as train writes it
                    (run_dir / name).write_text(json.dumps({"name": name, "run": run_dir.name}))
            else:
                trained.append(step.name)

    monkeypatch.setattr(chain, "run_steps", fake_run_steps)
    monkeypatch.setattr(chain, "export_ensemble", lambda *a, **k: None)
    records_dir = tmp_path / "records"
    options = ["--recipe", "shipped", "--procedure", "all-figures", "--seeds", "0", "1", "--record", str(records_dir)]
    all_figures.main(parse("--out", str(tmp_path / "o"), *options, train_flags=["--data", "amibr=DATA"]))
    names = ["cv0", "cv1", "cv2", "cv3", "all-s0", "all-s1"]
    assert sorted(trained[:6]) == sorted(names) and trained[6:] == ["oof", "ensemble"]
    for name in names:
        record = json.loads((records_dir / name / "record.json").read_text())
        assert record["argv"][1:3] == ["-m", "training.train"] and record["from"] == str(tmp_path / "o" / name)
    capsys.readouterr()
    c = planned(capsys, tmp_path, *options)
    assert c["oof"][3:7] == [str(records_dir / f"cv{i}") for i in range(4)]

    # A new machine: OUT is gone, the records are not. The folds are read from them; the members train again.
    trained.clear()
    all_figures.main(parse("--out", str(tmp_path / "new"), *options, train_flags=["--data", "amibr=DATA"]))
    printed = capsys.readouterr().out
    assert printed.count("not trained again") == 4 and sorted(trained[:2]) == ["all-s0", "all-s1"]
    assert json.loads((records_dir / "all-s0" / "record.json").read_text())["from"] == str(tmp_path / "new" / "all-s0")


def test_a_retrain_reads_the_committed_cross_fit_and_trains_only_the_members(tmp_path, capsys):
    """records/shipping holds the shipped cross-fit under lab.sweep's names (main-cvI-s0): with --record
    records/shipping and the README's flags its four folds are read, not trained (the out-of-fold threshold
    comes from the committed scores) and only the members train; with other arguments the folds train again."""
    shipping = ROOT / "records" / "shipping"
    data = ("--data", "amibr=../shared/data/ami-br")
    c = planned(capsys, tmp_path, "--recipe", "shipped", "--record", str(shipping), train_flags=data)
    folds = [str(shipping / f"main-cv{i}-s0") for i in range(4)]
    assert [c[f"cv{i}"] for i in range(4)] == [[fold] for fold in folds]
    assert c["oof"][3:7] == folds and "--all-figures" in c["all-s0"]
    for other in (("--lr", "1e-3"), ("--epochs", "30")):
        c = planned(capsys, tmp_path, "--recipe", "shipped", "--record", str(shipping), train_flags=(*data, *other))
        assert value(c["cv0"], "--cv-fold") == "0" and c["oof"][3] == str(shipping / "cv0")
    c = planned(capsys, tmp_path, "--recipe", "shipped", "--record", str(shipping), "--seeds", "1", "2",
                train_flags=data)
    assert value(c["cv3"], "--seed") == "1", "the cross-fit's seed is the first of --seeds: not the recorded one"
