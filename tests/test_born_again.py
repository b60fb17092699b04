"""lab.born_again: teacher -> export -> student per seed, resumable, then one ensemble export."""

import json
import shlex
import threading
import time
from pathlib import Path

import pytest

from lab import born_again
from model.predict import Predictor
from tests.test_training import data_root
from training import chain


def chain_args(tmp_path, *options, train_flags=()):
    return born_again.get_args_parser().parse_args([*options, "--", *train_flags])


def smoke_flags(tmp_path, *extra):
    return ["--data", f"amibr={data_root(tmp_path)}", "--limit", "64", "--epochs", "1", "--batch-size", "16",
            "--input-size", "64", "--workers", "0", "--no-progress", "--no-mixstyle", "--no-align", *extra]


def test_plan_teacher_then_its_export_then_the_student_distilled_from_it(tmp_path):
    flags = ["--data", "amibr=DATA", "--light-aug-epochs", "10", "--no-mixstyle", "--no-align"]
    steps = born_again.plan_seed(tmp_path, 3, flags, ["--tta", "none"], kd_weight=1.0, kd_temperature=2.0,
                                 log_to_file=True)
    assert [s.name for s in steps] == ["teacher", "teacher-weights", "student"]
    teacher, export, student = (list(s.argv) for s in steps)
    run = tmp_path / "s3"
    assert teacher[1:3] == ["-m", "training.train"] and "--no-kd" in teacher and "--kd-teacher" not in teacher
    assert export[1:4] == ["-m", "training.export", str(run / "teacher")]
    assert export[export.index("--out") + 1] == str(run / "teacher-weights") and export[-2:] == ["--tta", "none"]
    assert student[student.index("--kd-teacher") + 1] == str(run / "teacher-weights") and "--no-kd" not in student
    for flag, value in (("--kd-start-epoch", "0"), ("--kd-warmup-epochs", "0"), ("--kd-weight", "1.0"),
                        ("--kd-temperature", "2.0"), ("--seed", "3"), ("--out", str(run / "student"))):
        assert student[student.index(flag) + 1] == value, flag
    # Teacher and student see the same recipe and seed; both resume; a log file gets no progress bars.
    for argv in (teacher, student):
        assert argv[3:3 + len(flags)] == flags and "--resume" in argv and "--no-progress" in argv
        assert argv[argv.index("--seed") + 1] == "3"


@pytest.mark.parametrize("flag", [["--seed", "1"], ["--see", "1"], ["--kd-weight=2"], ["--out", "x"], ["--no-kd"],
                                  ["--kd-teacher", "weights"], ["--resume"], ["--kd"], ["--seed", "0"]])
def test_flags_the_chain_sets_are_refused(tmp_path, flag, capsys):
    with pytest.raises(SystemExit, match=r"set by the chain"):
        born_again.main(chain_args(tmp_path, "--dry-run", train_flags=flag))


def test_the_shipped_recipe_plans_the_shipped_teachers_and_a_student_with_distillation_on(tmp_path, capsys):
    """--recipe shipped: every training gets --config shipped; the teacher resolves to the card's
    arguments of the shipped member of its seed (on the split it is given: the shipped members trained on
    every figure), the student switches distillation back on (--kd), and the exports use the recipe's
    [export] table (the shipped export flags)."""
    from tests.test_recipes import MEMBERS, RUN_SPECIFIC, resolve, without

    split_keys = RUN_SPECIFIC + ("split_file", "all_figures", "cv_fold")

    out = tmp_path / "chain"
    born_again.main(chain_args(tmp_path, "--recipe", "shipped", "--out", str(out), "--seeds", "0", "1", "--dry-run",
                               "--export", str(tmp_path / "w"),
                               train_flags=["--data", "amibr=../shared/data/ami-br", "--split-file",
                                            "weights/split.json"]))
    lines = capsys.readouterr().out.splitlines()
    commands = {line.split("] ")[1].split(": ")[0] + line[2]: shlex.split(line.split(": ", 1)[1])
                for line in lines if line.startswith("[s")}
    for seed in (0, 1):
        teacher, student = commands[f"teacher{seed}"], commands[f"student{seed}"]
        assert teacher[3:5] == ["--config", "shipped"] == student[3:5]
        recorded = MEMBERS[seed]["training"]["args"]
        assert without(resolve(teacher[3:]), split_keys) == without(recorded, split_keys)
        assert resolve(teacher[3:])["split_file"] == "weights/split.json"
        args, teacher_args = resolve(student[3:]), resolve(teacher[3:])
        assert args["no_kd"] is False and args["kd_teacher"] == str(out / f"s{seed}" / "teacher-weights")
        assert (args["kd_start_epoch"], args["kd_warmup_epochs"], args["kd_weight"]) == (0.0, 0.0, 1.0)
        # The same recipe otherwise: only the distillation settings and the folder differ from the teacher's.
        assert {k for k in args if args[k] != teacher_args[k]} == {"no_kd", "kd_teacher", "kd_start_epoch",
                                                                   "kd_warmup_epochs", "kd_weight", "out"}
        assert commands[f"teacher-weights{seed}"][-5:] == ["--half", "--tta", "none", "--threshold-rule", "halfway"]
    assert lines[-1].endswith("--half --tta none --threshold-rule halfway")
    # Without a recipe the commands are the ones born_again has always planned (no --kd, no --config).
    assert "--kd" not in born_again.plan_seed(out, 0, ["--no-mixstyle"], [], 1.0, 2.0, True)[2].argv


def test_a_recipe_is_given_once_and_may_not_set_what_the_chain_leaves_unset(tmp_path, capsys):
    with pytest.raises(SystemExit, match="give the recipe once"):
        born_again.main(chain_args(tmp_path, "--recipe", "shipped", "--dry-run", train_flags=["--config", "erm"]))
    recipe = tmp_path / "gated.toml"
    recipe.write_text("no_mixstyle = true\nkd_start_auc = 0.7\n")
    with pytest.raises(SystemExit, match="sets kd_start_auc, which the chain leaves unset"):
        born_again.main(chain_args(tmp_path, "--recipe", str(recipe), "--dry-run"))
    # A recipe given after -- as --config is read too: its student needs --kd as well.
    born_again.main(chain_args(tmp_path, "--out", str(tmp_path / "c"), "--dry-run", train_flags=["--config", "erm"]))
    student = [line for line in capsys.readouterr().out.splitlines() if "] student: " in line][0]
    assert " --config erm " in student and " --kd " in student


def test_a_mistyped_training_flag_stops_before_any_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        born_again.main(chain_args(tmp_path, "--dry-run", "--out", str(tmp_path / "o"),
                                   train_flags=["--light-aug-epoch", "10", "--bogus"]))
    assert exc.value.code == 2 and "--bogus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_seeds_side_by_side_then_one_ensemble_that_the_predictor_loads(tmp_path, capsys):
    out, weights = tmp_path / "chain", tmp_path / "weights"
    options = ["--out", str(out), "--seeds", "0", "1", "--parallel", "2", "--export-flags", "--tta none",
               "--export", str(weights)]
    born_again.main(chain_args(tmp_path, *options, train_flags=smoke_flags(tmp_path)))
    for seed in (0, 1):
        run = out / f"s{seed}"
        done = json.loads((run / "steps.json").read_text())
        assert list(done) == ["teacher", "teacher-weights", "student"]
        student_cmd = shlex.split(done["student"])
        # Each seed's student learned from its own seed's teacher, with a share of the CPU threads.
        assert student_cmd[student_cmd.index("--kd-teacher") + 1] == str(run / "teacher-weights")
        assert int(student_cmd[student_cmd.index("--threads") + 1]) >= 1
        history = json.loads((run / "student" / "history.json").read_text())
        assert history[0]["w_kd"] == 1.0 and history[0]["train"]["loss_kd"] > 0
        assert "$ " in (run / "chain.log").read_text()  # every command is logged before its output
    card = json.loads((weights / "model_card.json").read_text())
    members = card["ensemble"]["members"]
    assert [m["training"]["args"]["seed"] for m in members] == [0, 1]
    for seed, member in enumerate(members):  # the card names each student's own teacher
        assert member["training"]["kd_teacher"]["path"] == str(out / f"s{seed}" / "teacher-weights")
        assert member["training"]["kd_teacher"]["found_at_export"]
    Predictor(weights)  # loads: the exported ensemble is complete

    # The same command again, one seed at a time: every step is skipped (how many threads a step ran
    # with is not part of its recipe), nothing retrained, and the ensemble export neither.
    stamp = (out / "s0" / "student" / "last.pt").stat().st_mtime_ns
    exported = (weights / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    born_again.main(chain_args(tmp_path, "--out", str(out), "--seeds", "0", "1", "--export-flags", "--tta none",
                               "--export", str(weights), train_flags=smoke_flags(tmp_path)))
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == 6 and f"export: done before into {weights}" in printed
    assert (out / "s0" / "student" / "last.pt").stat().st_mtime_ns == stamp
    assert (weights / "model.safetensors").stat().st_mtime_ns == exported
    # The exported file changed since (here: overwritten by hand): exported again.
    (weights / "model.safetensors").write_bytes(b"not the ensemble")
    born_again.main(chain_args(tmp_path, "--out", str(out), "--seeds", "0", "1", "--export-flags", "--tta none",
                               "--export", str(weights), train_flags=smoke_flags(tmp_path)))
    assert "export: done before" not in capsys.readouterr().out
    Predictor(weights)

    # --teachers-only on the same folder: the teachers are done, so nothing trains; they are exported as
    # one ensemble of their own (no member was distilled from a fixed teacher).
    teachers = tmp_path / "teachers"
    born_again.main(chain_args(tmp_path, "--out", str(out), "--seeds", "0", "1", "--teachers-only", "--export-flags",
                               "--tta none", "--export", str(teachers), train_flags=smoke_flags(tmp_path)))
    assert (out / "s0" / "student" / "last.pt").stat().st_mtime_ns == stamp
    card = json.loads((teachers / "model_card.json").read_text())
    assert [m["training"]["args"]["seed"] for m in card["ensemble"]["members"]] == [0, 1]
    assert all(m["training"]["args"]["no_kd"] and not m["training"].get("kd_teacher")
               for m in card["ensemble"]["members"])
    assert list(json.loads((out / "export.json").read_text())["networks"]) == ["s0/teacher", "s1/teacher"]
    Predictor(teachers)

    # Other flags into the same folder: refused, not mixed with the finished runs.
    with pytest.raises(SystemExit, match="different command"):
        born_again.main(chain_args(tmp_path, "--out", str(out), "--seeds", "0",
                                   train_flags=smoke_flags(tmp_path, "--dropout", "0.3")))


def test_teachers_only_plans_no_student_and_exports_the_teachers(tmp_path, capsys):
    out = tmp_path / "chain"
    members = born_again.main(chain_args(tmp_path, "--out", str(out), "--seeds", "0", "1", "--teachers-only",
                                         "--export", str(tmp_path / "w"), "--dry-run",
                                         train_flags=["--data", "amibr=DATA", "--no-mixstyle", "--no-align"]))
    printed = capsys.readouterr().out
    assert members == [out / "s0" / "teacher", out / "s1" / "teacher"]
    assert "student" not in printed and printed.count("] teacher: ") == 2 and printed.count("] teacher-weights: ") == 2
    export = shlex.split(printed.splitlines()[-1].removeprefix("export: "))
    assert export[1:5] == ["-m", "training.export", str(out / "s0" / "teacher"), str(out / "s1" / "teacher")]
    plans = {seed: born_again.plan_seed(out, seed, [], [], 1.0, 2.0, True)[:2] for seed in (0, 1)}
    tasks = born_again.tasks_of(plans)
    assert len(tasks) == 2 and all(t.chain == 1 and t.after is None for t in tasks)


def test_runtime_flags_are_not_part_of_a_steps_recipe():
    a = "/venv-a/bin/python -m training.train --data x --threads 1 --no-progress --seed 0 --workers=2 --out o"
    b = "/usr/bin/python3 -m training.train --data x --seed 0 --device cpu --out o"
    assert chain.recipe_of(a) == chain.recipe_of(b) == ["-m", "training.train", "--data", "x", "--seed",
                                                                  "0", "--out", "o"]
    assert chain.recipe_of(a) != chain.recipe_of(a.replace("--seed 0", "--seed 1"))


def test_a_failing_step_names_the_seed_and_step_and_is_not_recorded(tmp_path):
    out = tmp_path / "chain"
    with pytest.raises(SystemExit, match=r"\[s0\] teacher failed \(exit 1\)"):
        born_again.main(chain_args(tmp_path, "--out", str(out),
                                   train_flags=["--data", f"amibr={tmp_path / 'missing'}", "--no-progress"]))
    assert not (out / "s0" / "steps.json").exists()
    assert not (out / "s0" / "teacher-weights").exists()


def fake_plans(seeds):
    """Per seed: teacher, its export, student, as the chain plans them (commands never run)."""
    return {seed: born_again.plan_seed(Path("o"), seed, ["--data", "x"], [], 1.0, 2.0, True)
            for seed in seeds}


def run_recorded(tasks, slots, fail=()):
    """Schedule ``tasks`` with a run that sleeps briefly and records what ran, when and how many side by side."""
    lock, events, running, peak = threading.Lock(), [], [0], [0]

    def run(task, side_by_side):
        label = ("t" if task.chain == 2 else "s") + str(task.seed)
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            events.append(("start", label, side_by_side))
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            events.append(("end", label, side_by_side))
        if label in fail:
            raise SystemExit(f"{label} failed")

    failures = chain.schedule(tasks, slots, run)
    return events, peak[0], failures


def test_three_seeds_on_two_slots_take_three_training_times_not_four():
    events, peak, failures = run_recorded(born_again.tasks_of(fake_plans([0, 1, 2])), slots=2)
    starts = [label for kind, label, _ in events if kind == "start"]
    # A freed slot takes the waiting teacher (seed 2) before any student: t0 t1 | t2 s0 | s1 s2.
    assert starts == ["t0", "t1", "t2", "s0", "s1", "s2"] and peak == 2 and not failures
    for seed in (0, 1, 2):  # each student starts only after its own teacher (and its export) ended
        assert events.index(("end", f"t{seed}", 2)) < [e[:2] for e in events].index(("start", f"s{seed}"))
    assert {n for _, _, n in events} == {2}  # two side by side at every start: no slot left idle
    teacher = born_again.tasks_of(fake_plans([0]))[0]
    assert [s.name for s in teacher.steps] == ["teacher", "teacher-weights"]


def test_a_training_that_starts_alone_is_told_so_and_a_failed_teacher_stops_only_its_student():
    events, peak, failures = run_recorded(born_again.tasks_of(fake_plans([0])), slots=2)
    assert [(kind, n) for kind, _, n in events] == [("start", 1), ("end", 1), ("start", 1), ("end", 1)]
    events, _, failures = run_recorded(born_again.tasks_of(fake_plans([0, 1, 2])), slots=2, fail={"t1"})
    ran = [label for kind, label, _ in events if kind == "start"]
    assert failures == ["t1 failed"] and "s1" not in ran and sorted(ran) == ["s0", "s2", "t0", "t1", "t2"]


def test_threads_are_added_to_training_steps_only():
    teacher, export, student = fake_plans([0])[0]
    assert chain.with_threads(teacher, 2).argv[-2:] == ("--threads", "2")
    assert chain.with_threads(export, 2) == export and chain.with_threads(student, None) == student


@pytest.mark.slow
def test_a_held_out_domain_pairs_each_student_with_its_own_teacher_on_it(tmp_path, capsys):
    out = tmp_path / "chain"
    flags = smoke_flags(tmp_path, "--leave-out-domain", "TUPAC16", "--eval-tta", "none")
    born_again.main(chain_args(tmp_path, "--out", str(out), "--seeds", "0", "--export-flags", "--tta none",
                               train_flags=flags))
    table = (out / "heldout-compare.md").read_text()
    assert table in capsys.readouterr().out
    rows = table.splitlines()
    assert sum(r.startswith("| TUPAC16 | s0/teacher |") for r in rows) == 1
    assert sum(r.startswith("| TUPAC16 | s0/student |") for r in rows) == 1
    # One paired difference in AUC and one in BA at the halfway threshold: the student minus its teacher.
    diffs = [r for r in rows if "s0/student − s0/teacher" in r]
    assert len(diffs) == 2 and "AUC difference" in table and "BA @halfway difference" in table


def test_a_missing_held_out_report_is_named(tmp_path):
    (tmp_path / "s0" / "teacher").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"s0/teacher/heldout\.json: not found"):
        born_again.compare_unseen(tmp_path, [0])
