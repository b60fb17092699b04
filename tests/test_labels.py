"""What the labels say beyond the majority (issue 51): the experts' votes as soft targets and the subtype head."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from data.datasets import (
    SUBTYPES,
    DatasetFormatError,
    FigureDataset,
    load_amibr,
    load_datasets,
    subtype_targets,
    vote_targets,
)
from tests.conftest import AMIBR, needs_amibr
from tests.test_datasets import AMIBR_COLUMNS, AMIBR_FIXTURE, make_amibr
from training import train
from training.losses import classification_loss, subtype_loss


def rewrite_csv(root, change):
    """Apply ``change(row)`` to every data row of ROOT/AMI-BR.csv."""
    path = root / "AMI-BR.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[1:] = [change(list(r)) for r in rows[1:]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_soft_and_subtype_targets_from_the_fixture(tmp_path):
    records = load_amibr(make_amibr(tmp_path))
    assert vote_targets(records).tolist() == pytest.approx([1.0, 0.0, 1 / 3, 2 / 3, 0.0, 0.0])
    q = subtype_targets(records)
    assert q.shape == (6, len(SUBTYPES)) and torch.allclose(q.sum(dim=1), torch.ones(6))
    assert q[1, SUBTYPES.index("NMF prometaphase")] == q[1, SUBTYPES.index("NMF metaphase")] == 0.5
    assert q[0, SUBTYPES.index("AMF segregation")] == 1.0


def test_figure_dataset_keeps_the_majority_as_its_labels_whatever_the_target(tmp_path):
    records = load_amibr(make_amibr(tmp_path))
    domains = sorted({r.domain for r in records})
    majority = FigureDataset(records, domains, 64)
    votes = FigureDataset(records, domains, 64, targets="votes", subtypes=True)
    assert votes.labels.tolist() == majority.labels.tolist() == [1, 0, 0, 1, 0, 0]
    assert len(majority[2]) == 3 and majority[2][1].item() == 0.0
    image, target, domain, subtypes = votes[2]
    assert target.item() == pytest.approx(1 / 3) and subtypes.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="targets"):
        FigureDataset(records, domains, 64, targets="mean")


def test_a_csv_without_the_experts_columns_loads_without_votes(tmp_path):
    root = make_amibr(tmp_path)
    rewrite_csv(root, lambda r: r)  # unchanged first: the columns are there
    keep = [AMIBR_COLUMNS.index(c) for c in ("", "slide", "dataset", "uid", "majority_atypical")]
    path = root / "AMI-BR.csv"
    with open(path, newline="") as f:
        rows = [[r[i] for i in keep] for r in csv.reader(f)]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    records = load_amibr(root)
    assert all(r.votes is None and r.subtypes == () for r in records)
    assert vote_targets(records).tolist() == [r.label for r in records]  # the majority, where no votes
    assert subtype_targets(records).sum().item() == 0.0


def test_votes_that_contradict_the_majority_and_unknown_subtypes_are_refused_naming_the_file(tmp_path):
    root = make_amibr(tmp_path)
    vote = AMIBR_COLUMNS.index("expert1_atypical")
    rewrite_csv(root, lambda r: r[:vote] + ["False", "False", "False"] + r[vote + 3:] if r[3] == "0" else r)
    with pytest.raises(DatasetFormatError, match=r"AMI-BR\.csv: uid 0: .*0 of 3 experts"):
        load_amibr(root)
    root = make_amibr(tmp_path / "b")
    label = AMIBR_COLUMNS.index("expert2_label")
    rewrite_csv(root, lambda r: r[:label] + ["AMF tripolar"] + r[label + 1:])
    with pytest.raises(DatasetFormatError, match=r"AMI-BR\.csv: expert2_label='AMF tripolar' is not a mitotic"):
        load_amibr(root)


def test_combined_datasets_keep_votes_and_subtypes(tmp_path):
    root = make_amibr(tmp_path / "a")
    both = load_datasets([f"amibr={root}", f"amibr={make_amibr(tmp_path / 'b')}"])
    assert [r.votes for r in both[:6]] == [r.votes for r in load_amibr(root)]
    assert both[3].subtypes and both[3].domain == "amibr:TUPAC16"


@needs_amibr
def test_real_amibr_votes_and_subtypes():
    """The counts the issue quotes: 642 split figures (328 two of three, 314 one of three); the two experts
    name the same subtype for 2,042 figures."""
    records = load_amibr(AMIBR)
    shares = [round(r.votes * 3) for r in records]
    assert [shares.count(k) for k in range(4)] == [1932, 314, 328, 320]
    assert sum(r.subtypes[0] == r.subtypes[1] for r in records) == 2042
    # A subtype's class agrees with the expert's own atypical vote: the AMF forms are the atypical ones.
    with open(AMIBR / "AMI-BR.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row, record in zip(rows, records):
        assert record.subtypes[0].startswith("AMF") == (row["expert1_atypical"] == "True")


def test_soft_bce_is_the_formula_with_the_positive_weight_on_the_votes():
    z = torch.tensor([2.0, -1.0, 0.3])
    y = torch.tensor([1.0, 0.0, 2 / 3])
    w = 3.5
    expected = -(w * y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()
    assert classification_loss(z, y, w).item() == pytest.approx(expected.item(), rel=1e-6)
    # Its minimum for a 2-of-3 figure lies at sigmoid(z) = 2w / (2w + 1), short of certainty.
    zs = torch.linspace(-5, 8, 2601, requires_grad=False)
    losses = torch.stack([classification_loss(zz.reshape(1), torch.tensor([2 / 3]), w) for zz in zs])
    best = torch.sigmoid(zs[losses.argmin()]).item()
    assert best == pytest.approx(2 * w / (2 * w + 1), abs=2e-3)


def test_subtype_loss_is_the_soft_cross_entropy_over_labelled_figures_only():
    h = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [1.0, -2.0, 3.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # figure 2 has no subtype
    logp = F.log_softmax(h, dim=1)
    expected = (-(q[0] * logp[0]).sum() - (q[2] * logp[2]).sum()) / 2
    assert subtype_loss(h, q).item() == pytest.approx(expected.item(), rel=1e-6)
    none = subtype_loss(h.requires_grad_(), torch.zeros(3, 3))
    assert none.item() == 0.0 and none.requires_grad


def labelled_data(tmp_path, n_slides: int = 12) -> str:
    """A generated AMi-Br with votes and subtypes on every figure (both classes in every domain)."""
    slides = [("002.tiff", "MIDOG21"), ("060.tiff", "MIDOG21"), ("120.tiff", "MIDOG21"),
              ("01_stitched1.tif", "TUPAC16"), ("030.tiff", "MIDOG21"), ("070.tiff", "MIDOG21"),
              ("140.tiff", "MIDOG21"), ("02_stitched1.tif", "TUPAC16")]
    spec = [(slides[i % len(slides)][0], slides[i % len(slides)][1], *AMIBR_FIXTURE[i % len(AMIBR_FIXTURE)][2:])
            for i in range(48)]
    return f"amibr={make_amibr(tmp_path / 'data', spec)}"


def tiny_args(tmp_path, *extra):
    return train.get_args_parser().parse_args([
        "--config", "shipped", "--data", labelled_data(tmp_path), "--epochs", "2", "--batch-size", "16",
        "--input-size", "64", "--out", str(tmp_path / "run"), "--no-progress", "--workers", "0",
        "--plot-every", "0", *extra])


def test_votes_and_the_subtype_head_train_resume_and_are_recorded(tmp_path):
    flags = ("--targets", "votes", "--subtype-weight", "0.5")
    train.main(tiny_args(tmp_path, *flags, "--stop-after", "1"))
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert first["subtype_head"]["weight"].shape == (len(SUBTYPES), 1024)
    train.main(tiny_args(tmp_path, *flags, "--resume"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(h["train"]["loss_subtype"]) and h["train"]["loss_subtype"] > 0
                                     for h in history)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not torch.equal(last["subtype_head"]["weight"], first["subtype_head"]["weight"]), "the head trains"
    assert last["args"]["targets"] == "votes" and last["args"]["subtype_weight"] == 0.5
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["targets"] == "votes" and config["args"]["subtype_weight"] == 0.5
    # The exported network is the plain one: the head is training's alone.
    assert not any(k.startswith("subtype") for k in last["student"])


def test_the_switches_off_train_exactly_the_plain_recipe(tmp_path):
    """--targets majority and --subtype-weight 0 (the defaults) are the recipe as before: same history numbers,
    no subtype loss logged. --targets votes changes the loss on the same batches."""
    plain = train.main(tiny_args(tmp_path / "a", "--epochs", "1"))
    explicit = train.main(tiny_args(tmp_path / "b", "--epochs", "1", "--targets", "majority", "--subtype-weight", "0"))
    train.main(tiny_args(tmp_path / "c", "--epochs", "1", "--targets", "votes"))
    assert plain["best_monitor"] == explicit["best_monitor"]

    def train_losses(d):
        return json.loads((d / "run" / "history.json").read_text())[0]["train"]
    a, b, c = (train_losses(tmp_path / x) for x in "abc")
    assert a == b and "loss_subtype" not in a
    assert c["loss_cls"] != a["loss_cls"]


@pytest.mark.parametrize("flags, message", [
    (("--targets", "votes"), "none of the .* training figures has expert votes"),
    (("--subtype-weight", "0.5"), "none of the .* training figures has a mitotic subtype"),
    (("--subtype-weight", "-1"), "must be >= 0"),
])
def test_a_switch_no_figure_can_feed_is_refused(tmp_path, flags, message):
    root = tmp_path / "data"
    labelled_data(tmp_path)
    keep = [AMIBR_COLUMNS.index(c) for c in ("", "slide", "dataset", "uid", "majority_atypical")]
    with open(root / "AMI-BR.csv", newline="") as f:
        rows = [[r[i] for i in keep] for r in csv.reader(f)]
    with open(root / "AMI-BR.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    args = train.get_args_parser().parse_args(["--data", f"amibr={root}", "--epochs", "1", "--input-size", "64",
                                               "--out", str(tmp_path / "run"), "--no-progress", "--workers", "0",
                                               *flags])
    with pytest.raises(SystemExit, match=message):
        train.main(args)


def test_a_record_without_the_new_arguments_is_the_same_training():
    from training.config import TrainingConfig

    planned = train.training_config(["--config", "shipped", "--all-figures", "--seed", "1"])
    recorded = {k: v for k, v in planned.to_record().items() if k not in ("targets", "subtype_weight")}
    recorded["out"] = "elsewhere"
    recorded = TrainingConfig.from_record(recorded)
    assert recorded.same_training(planned) and (recorded.targets, recorded.subtype_weight) == ("majority", 0.0)
    for flags in (["--targets", "votes"], ["--subtype-weight", "0.5"]):
        planned = train.training_config(["--config", "shipped", "--all-figures", "--seed", "1", *flags])
        assert not recorded.same_training(planned), flags
