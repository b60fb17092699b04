"""CPU smoke training (1-2 epochs on a few dozen figures): the run exports weights the predictor loads."""

import csv
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model.predict import Predictor
from model.weights import format_threshold, has_weights
from stats.metrics import choose_threshold, per_domain_metrics
from tests.conftest import AMIBR, ROOT, synthetic_pages
from training import export, train


def data_root(tmp_path):
    """Real AMi-Br when present, else a generated dataset with its layout (12 slides, 4 scanners)."""
    if (AMIBR / "AMI-BR.csv").is_file():
        return AMIBR
    root = tmp_path / "amibr"
    rows = []
    slides = ["002.tiff", "010.tiff", "055.tiff", "060.tiff", "101.tiff", "120.tiff", "01_stitched1.tif",
              "02_stitched1.tif", "03_stitched1.tif", "030.tiff", "070.tiff", "140.tiff"]
    for uid, page in enumerate(synthetic_pages(48)):
        slide = slides[uid % len(slides)]
        dataset = "TUPAC16" if "stitched" in slide else "MIDOG21"
        atypical = (uid // len(slides)) % 2 == 0  # both classes on every slide, so in every domain
        folder = root / "patches" / ("atypical" if atypical else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(page).save(folder / f"{dataset}_{uid}.png")
        rows.append([uid, slide, dataset, uid, atypical])
    with open(root / "AMI-BR.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "slide", "dataset", "uid", "majority_atypical"])
        w.writerows(rows)
    return root


def smoke_args(tmp_path, *extra):
    return train.get_args_parser().parse_args([
        "--data", f"amibr={data_root(tmp_path)}", "--limit", "64", "--epochs", "2", "--batch-size", "16",
        "--input-size", "64", "--out", str(tmp_path / "run"), "--no-progress", "--workers", "0",
        "--kd-start-epoch", "0", "--kd-warmup-epochs", "1", *extra])


def test_smoke_training_exports_loadable_weights(tmp_path):
    train.main(smoke_args(tmp_path, "--stop-after", "1"))
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
    summary = train.main(smoke_args(tmp_path, "--resume"))  # continues to the planned 2 epochs
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt", "split.json", "history.json", "history.csv", "curves.png", "summary.json"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and summary["best_epoch"] in (1, 2)
    assert history[-1]["w_kd"] > 0 and history[-1]["w_align"] > 0
    assert all(torch.isfinite(torch.tensor(h["train"]["loss"])) for h in history)

    card = export.main(export.get_args_parser().parse_args([str(run), "--out", str(tmp_path / "weights")]))
    assert has_weights(tmp_path / "weights")
    assert 0.0 < card["threshold"] < 1.0 and card["input_size"] == 64
    assert card["data"]["split_sha256"] and card["validation"]["at_threshold"]["pooled"]["n"] > 0
    assert card["tta"] == "dihedral"
    weights_bytes = (tmp_path / "weights" / "model.safetensors").read_bytes()
    from lab import rescore

    rescored = rescore.main([str(tmp_path / "weights"), "--tta", "none"])
    assert rescored["tta"] == "none" and rescored["rescored"]["previous"]["tta"] == "dihedral"
    # Only the card changes: the weights file stays byte for byte.
    assert (tmp_path / "weights" / "model.safetensors").read_bytes() == weights_bytes
    assert json.loads((tmp_path / "weights" / "model_card.json").read_text())["tta"] == "none"
    predictor = Predictor(tmp_path / "weights", "cpu")
    probs = predictor.predict_pages(synthetic_pages(3))  # 128 px pages, resized to the card's 64
    assert probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all()
    args = smoke_args(tmp_path, "--resume")
    args.epochs = 3
    with pytest.raises(SystemExit, match="cannot be resumed"):
        train.main(args)


def test_leave_one_domain_out_run_scores_the_unseen_domain_once(tmp_path):
    from lab import heldout, lodo

    args = smoke_args(tmp_path, "--leave-out-domain", "TUPAC16", "--hed-jitter", "0.1")
    args.epochs = 1
    summary = lodo.train_and_report(args)
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert split["test"] and all("stitched" not in key for key in split["train"] + split["val"])
    history = json.loads((run / "history.json").read_text())
    assert "TUPAC16" not in history[0]["val_ema"], "the unseen domain must not steer selection"
    held = json.loads((run / "heldout.json").read_text())
    assert held["domain"] == "TUPAC16" == summary["held_out"]["domain"]
    assert set(held["test_at_0.5"]) == {"pooled", "TUPAC16", "mean_domain"}
    assert len(held["test_scores"]) == len(split["test"]) == held["test_at_threshold"]["pooled"]["n"]
    assert held["selected_model"] in ("ema", "student") and 0.0 < held["threshold"] < 1.0
    assert held["tta"] == "dihedral"
    # The validation scores the threshold was fitted on travel with the report (threshold studies).
    assert len(held["val_scores"]) == len(held["val_labels"]) == len(split["val"]) == len(held["val_domains"])
    assert "TUPAC16" not in held["val_domains"]
    assert choose_threshold(held["val_labels"], held["val_scores"], held["val_domains"]) == held["threshold"]
    # The arm records what tells runs apart, augmentation included, for lab.compare --held-out.
    assert held["arm"]["hed_jitter"] == args.hed_jitter and held["arm"]["aug_strength"] == args.aug_strength
    assert held["arm"]["seed"] == args.seed and held["arm"]["epochs"] == 1 and held["arm"]["input_size"] == 64
    # Re-scoring the finished run gives the same report; --tta none gives a single-view one.
    assert heldout.main([str(run), "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    np.testing.assert_allclose(again["test_scores"], held["test_scores"], atol=1e-5)
    assert again["threshold"] == held["threshold"] and again["selected_model"] == held["selected_model"]
    assert heldout.main([str(run), "--tta", "none", "--out", str(tmp_path / "single.json")]) == 0
    single = json.loads((tmp_path / "single.json").read_text())
    assert single["tta"] == "none" and "stack_norm" not in single
    # Stacks of one slide with test-time batch-norm adaptation (experiments §33): an infinite prior is no
    # adaptation (same scores, stack by stack); a finite one changes the scores, and the threshold is the
    # one fitted on the adapted validation scores.
    assert heldout.main([str(run), "--tta", "none", "--stack-norm", "inf", "--stack-size", "4",
                         "--out", str(tmp_path / "inf.json")]) == 0
    inf = json.loads((tmp_path / "inf.json").read_text())
    np.testing.assert_allclose(inf["test_scores"], single["test_scores"], atol=2e-3)
    assert inf["stack_norm"] == {"prior": float("inf"), "scope": "all", "stack_size": 4, "stack_seed": 0}
    assert heldout.main([str(run), "--tta", "none", "--stack-norm", "16"]) == 0
    adapted = json.loads((run / "heldout-stack-norm-16.json").read_text())
    assert adapted["stack_norm"]["prior"] == 16 and adapted["test_figures"] == single["test_figures"]
    assert adapted["selected_model"] == single["selected_model"]
    assert np.abs(np.subtract(adapted["test_scores"], single["test_scores"])).max() > 1e-3
    assert adapted["threshold"] == choose_threshold(adapted["val_labels"], adapted["val_scores"],
                                                    adapted["val_domains"])
    assert heldout.main([str(run), "--stack-norm", "16"]) == 2  # 8 views would count as pages
    assert heldout.main([str(run), "--tta", "none", "--stack-norm", "16", "--stack-scope", "early"]) == 0
    early = json.loads((run / "heldout-stack-norm-16-early.json").read_text())
    assert early["stack_norm"]["scope"] == "early" and early["test_scores"] != adapted["test_scores"]
    # Only the selected model scores the unseen domain unless the other one is asked for too; asking
    # changes nothing of the selected model's report.
    assert "other_model_test_at_0.5" not in held
    assert heldout.main([str(run), "--other-model", "--out", str(tmp_path / "both.json")]) == 0
    both = json.loads((tmp_path / "both.json").read_text())
    assert set(both["other_model_test_at_0.5"]) == {"pooled", "TUPAC16", "mean_domain"}
    assert both["other_model_test_at_0.5"]["pooled"]["n"] == len(split["test"])
    np.testing.assert_allclose(both["test_scores"], held["test_scores"], atol=1e-5)
    assert heldout.main([str(tmp_path / "nowhere")]) == 1

    # A student of this run on the same fold, distilled from it (--kd-teacher is a Path): its report
    # is written too, naming the teacher as a string.
    from training import export
    export.main(export.get_args_parser().parse_args([str(run), "--out", str(tmp_path / "teacher"), "--tta", "none"]))
    student = smoke_args(tmp_path, "--leave-out-domain", "TUPAC16", "--no-mixstyle", "--no-align",
                         "--kd-teacher", str(tmp_path / "teacher"), "--kd-weight", "1")
    student.epochs, student.out = 1, tmp_path / "student"
    lodo.train_and_report(student)
    assert json.loads((tmp_path / "student" / "heldout.json").read_text())["domain"] == "TUPAC16"
    # training.train alone holds the domain back and scores nothing of it: that is the study's part.
    student.out = tmp_path / "bare"
    assert "held_out" not in train.main(student) and not (tmp_path / "bare" / "heldout.json").exists()


def test_erm_ablation_switches(tmp_path):
    args = smoke_args(tmp_path, "--no-mixstyle", "--no-align", "--no-kd")
    args.epochs = 1
    train.main(args)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["w_kd"] == 0 and history[0]["w_align"] == 0
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["model_config"]["mixstyle"] is False
    assert ckpt["args"]["early_stop"] == 0, "a one-cycle run is not stopped early unless asked"
    assert train.get_args_parser().parse_args(["--lr-scheduler", "plateau"]).early_stop is None  # -> 12 in main


@pytest.mark.parametrize("resume", [False, True])
def test_augmentation_curriculum_and_late_mixstyle(tmp_path, resume):
    """--light-aug-epochs 1: epoch 1 on flips/rot90 only, epoch 2 (straight on, or after a resume) on
    the full preset, in a new loader so the persistent worker sees it; --mixstyle-start-epoch 1: MixStyle off
    in epoch 1, on in epoch 2."""
    flags = ("--light-aug-epochs", "1", "--mixstyle-start-epoch", "1", "--no-kd", "--workers", "1", "--plot-every", "0")
    if resume:  # the phase follows the epoch after a resume too
        train.main(smoke_args(tmp_path, *flags, "--stop-after", "1"))
        train.main(smoke_args(tmp_path, *flags, "--resume"))
    else:
        train.main(smoke_args(tmp_path, *flags))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["augmentation"] for h in history] == ["light", "full"]
    assert [h["mixstyle_p"] for h in history] == [0.0, 0.5]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary.get("resumed_at_epochs") == ([1] if resume else None)  # 0-based: epoch 2 was the first run again
    model = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert model["args"]["light_aug_epochs"] == 1 and model["args"]["mixstyle_start_epoch"] == 1


def test_set_mixstyle_p_reaches_every_mixstyle_layer():
    from model import ModelConfig, build_model
    from model.layers import MixStyle

    net = build_model(ModelConfig(input_size=64))
    layers = [m for m in net.modules() if isinstance(m, MixStyle)]
    assert len(layers) == 2
    train.set_mixstyle_p(net, 0.0)
    assert all(m.p == 0.0 for m in layers)
    net.train()
    y = torch.randn(4, 8, 16, 16)
    assert torch.equal(layers[0](y), y), "p = 0 in training mode is the identity"
    train.set_mixstyle_p(net, 1.0)
    assert not torch.equal(layers[0](y), y)


def test_distributed_two_processes_on_cpu(tmp_path):
    """torchrun with 2 gloo processes: one run directory, written by rank 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "training.train", "--data", f"amibr={data_root(tmp_path)}", "--limit", "48", "--epochs", "1",
           "--batch-size", "16", "--input-size", "64", "--out", str(tmp_path / "ddp"), "--no-progress",
           "--workers", "0", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads((tmp_path / "ddp" / "history.json").read_text())) == 1
    assert done.stdout.count("epoch 1/1") == 1  # only rank 0 reports


@pytest.mark.parametrize("threshold, text", [(0.355, "0.355"), (0.35, "0.35"), (0.5, "0.50"), (0.21, "0.21"),
                                             (0.3549999, "0.355"), (1.0, "1.00")])
def test_thresholds_print_as_the_card_stores_them(threshold, text):
    """Reports name the cut the card uses: the halfway rule's 0.355 must not print as 0.35 or 0.36."""
    assert format_threshold(threshold) == text


def test_threshold_rule_prefers_per_domain_balance():
    import numpy as np

    # Domain 0 separates at 0.3, domain 1 at 0.7: the mean-domain rule lands between them.
    labels = np.array([0, 0, 1, 1] * 2 * 10)
    scores = np.array([0.1, 0.2, 0.4, 0.5] * 10 + [0.5, 0.6, 0.8, 0.9] * 10)
    domains = np.array([0] * 40 + [1] * 40)
    t = choose_threshold(labels, scores, domains, "mean-domain")
    assert 0.3 <= t <= 0.7
    assert choose_threshold(labels, scores, domains, "halfway") == pytest.approx((t + 0.5) / 2)
    with pytest.raises(ValueError, match="unknown threshold rule 'median'"):
        choose_threshold(labels, scores, domains, "median")
    m = per_domain_metrics(labels, scores, domains, ["a", "b"], threshold=0.35)
    assert m["a"]["balanced_accuracy"] == 1.0 and m["b"]["balanced_accuracy"] == 0.5
    with pytest.raises(KeyError):
        m["c"]
    # A validation split with one class per domain (a tiny run) has no balanced accuracy to maximise.
    one_class = np.array([0] * 40 + [1] * 40)
    for rule in ("mean-domain", "worst-domain", "halfway"):
        assert choose_threshold(one_class, scores, domains, rule) == 0.5
    assert choose_threshold(np.zeros(80), scores, domains, "pooled") == 0.5


@pytest.mark.parametrize("gate, kd_in_epoch2", [(2.0, False), (0.0, True)])
def test_kd_waits_for_a_teacher_that_has_learned(tmp_path, gate, kd_in_epoch2):
    """--kd-start-auc: no distillation before the EMA teacher's validation AUC reaches the gate
    (2.0 is never reached); once reached after epoch 1, the warm-up starts with epoch 2."""
    train.main(smoke_args(tmp_path, "--kd-start-auc", str(gate), "--plot-every", "0"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["w_kd"] == 0, "the teacher's AUC is only known after epoch 1"
    assert (history[1]["w_kd"] > 0) is kd_in_epoch2
    assert history[1]["kd_start_epoch"] == (1.0 if kd_in_epoch2 else None)
    assert (tmp_path / "run" / "curves.png").is_file(), "--plot-every 0 still plots at the end"


def test_model_card_names_the_parts_of_the_recipe_that_were_trained():
    assert export.recipe_name({}).startswith("Mix, Align, Distil (MixStyle, alignment loss")
    assert export.recipe_name({"no_mixstyle": True, "no_align": True, "no_kd": True}).startswith("plain ERM")
    assert export.recipe_name({"no_align": True, "no_kd": True}) == "Mix, Align, Distil with only MixStyle"
    assert export.recipe_name({"no_mixstyle": True, "align_standardise": True}) == \
        "Mix, Align, Distil with only alignment loss on batch-standardised descriptors, EMA-teacher distillation"
    assert export.recipe_name({"no_mixstyle": True, "no_align": True, "kd_teacher": "weights"}) == \
        "Mix, Align, Distil with only distillation from a fixed trained teacher"
    assert export.recipe_name({"no_align": True, "no_kd": True, "mixstyle_start_epoch": 10}) == \
        "Mix, Align, Distil with only MixStyle; MixStyle from epoch 11"
    assert export.recipe_name({"no_mixstyle": True, "no_align": True, "no_kd": True, "light_aug_epochs": 10}) \
        .endswith("; augmentation curriculum: flips and 90-degree turns only for the first 10 epochs")
    assert export.recipe_name({"no_mixstyle": True, "no_align": True, "no_kd": True, "mixstyle_start_epoch": 10}) \
        .startswith("plain ERM") and "MixStyle from" not in export.recipe_name({"no_mixstyle": True})


def test_two_runs_export_as_a_half_precision_seed_ensemble(tmp_path):
    runs = []
    for seed in (0, 1):
        args = smoke_args(tmp_path, "--no-mixstyle", "--no-align", "--no-kd", "--seed", str(seed),
                          "--hed-jitter", "0.2")
        args.epochs, args.out = 1, tmp_path / f"run{seed}"
        train.main(args)
        runs.append(str(args.out))
    card = export.main(export.get_args_parser().parse_args([*runs, "--out", str(tmp_path / "weights"), "--half",
                                                            "--tta", "none"]))
    assert card["ensemble"]["size"] == 2 and [m["seed"] for m in card["ensemble"]["members"]] == [0, 1]
    assert card["weights_storage"].startswith("float16") and "ensemble of 2" in card["name"]
    assert "--hed-jitter 0.2" in card["training"]["command"]
    predictor = Predictor(tmp_path / "weights", "cpu")
    assert "ensemble of 2" in predictor.describe()
    assert predictor.predict_pages(synthetic_pages(2)).shape == (2,)
    # Re-scoring an ensemble with another TTA keeps its members and its weights file byte for byte.
    weights_bytes = (tmp_path / "weights" / "model.safetensors").read_bytes()
    from lab import rescore

    rescored = rescore.main([str(tmp_path / "weights"), "--tta", "dihedral"])
    assert (tmp_path / "weights" / "model.safetensors").read_bytes() == weights_bytes
    assert rescored["tta"] == "dihedral" and rescored["rescored"]["previous"]["tta"] == "none"
    assert rescored["ensemble"]["members"] == card["ensemble"]["members"]
    assert "other_model_at_0.5_note" not in rescored["validation"]  # an ensemble has no other model
    # Members must agree on data, split and recipe; the same run twice is refused.
    with pytest.raises(SystemExit, match="listed twice"):
        export.main(export.get_args_parser().parse_args([runs[0], runs[0], "--out", str(tmp_path / "w2")]))
    args = smoke_args(tmp_path, "--seed", "2", "--no-mixstyle", "--no-kd")  # same network, alignment on
    args.epochs, args.out = 1, tmp_path / "align"
    train.main(args)
    with pytest.raises(SystemExit, match="recipe"):
        export.main(export.get_args_parser().parse_args([runs[0], str(args.out), "--out", str(tmp_path / "w3"),
                                                         "--tta", "none"]))


def test_distilling_from_a_fixed_teacher_refuses_one_that_saw_the_validation_split(tmp_path):
    """--kd-teacher: the KD term uses the fixed teacher's logits; a teacher trained on any figure of
    this run's validation split is refused (its labels would leak into the student)."""
    args = smoke_args(tmp_path, "--no-mixstyle", "--no-align", "--no-kd")
    args.epochs, args.out = 1, tmp_path / "teacher-run"
    train.main(args)
    export.main(export.get_args_parser().parse_args([str(args.out), "--out", str(tmp_path / "teacher"),
                                                     "--tta", "none"]))
    split = json.loads((tmp_path / "teacher" / "split.json").read_text())

    # Same split: the teacher never saw the validation figures.
    args = smoke_args(tmp_path, "--no-mixstyle", "--no-align", "--kd-teacher", str(tmp_path / "teacher"),
                      "--split-file", str(tmp_path / "teacher" / "split.json"), "--kd-weight", "1")
    args.epochs, args.out = 1, tmp_path / "student"
    train.main(args)
    history = json.loads((args.out / "history.json").read_text())
    assert history[0]["w_kd"] > 0 and history[0]["train"]["loss_kd"] > 0
    ckpt = torch.load(args.out / "last.pt", weights_only=True)
    assert ckpt["args"]["kd_teacher"] == str(tmp_path / "teacher")
    card = export.main(export.get_args_parser().parse_args([str(args.out), "--out", str(tmp_path / "w"),
                                                            "--tta", "none"]))
    assert "fixed trained teacher" in card["name"] and "--kd-teacher" in card["training"]["command"]
    # The student's card says how its teacher was made and which weights it was.
    teacher = card["training"]["kd_teacher"]
    assert teacher["found_at_export"] and teacher["path"] == str(tmp_path / "teacher")
    command = teacher["training_commands"][0]
    assert "--no-kd" in command and str(tmp_path / "teacher-run") in command
    teacher_bytes = (tmp_path / "teacher" / "model.safetensors").read_bytes()
    assert teacher["model_sha256"] == hashlib.sha256(teacher_bytes).hexdigest()

    # Swap one validation figure into the teacher's training list: refused, naming the figure.
    leaky = dict(split, train=split["train"] + split["val"][:1])
    (tmp_path / "teacher" / "split.json").write_text(json.dumps(leaky))
    args.out = tmp_path / "leaky"
    with pytest.raises(SystemExit, match="trained on 1 figures of this run's validation"):
        train.main(args)
    (tmp_path / "teacher" / "split.json").unlink()
    args.split_file = tmp_path / "student" / "split.json"  # the same split, read from the student's run
    with pytest.raises(SystemExit, match="split.json: not found"):
        train.main(args)
