"""Self-supervised pretraining: the NT-Xent loss by hand, the two-view preset, and a smoke run whose
backbone the classifier loads with --pretrained (and whose provenance reaches the model card)."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lab import pretrain_ssl
from lab.pretrain_ssl import ContrastivePreset, nt_xent_loss
from model import AtypicalMitosisNet, ModelConfig, load_imagenet_backbone
from tests.test_training import data_root, smoke_args
from training import export, train


def nt_xent_by_hand(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    z = np.concatenate([z1, z2]).astype(np.float64)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(u)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denominator = sum(math.exp(u[i] @ u[k] / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(u[i] @ u[pos] / tau) / denominator)
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_a_hand_computation(tau):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    got = nt_xent_loss(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), tau)
    assert float(got) == pytest.approx(nt_xent_by_hand(z1, z2, tau), rel=1e-5)


def test_nt_xent_is_low_when_views_agree_and_differ_from_others():
    basis = torch.eye(4)
    agree = nt_xent_loss(basis, basis * 3.0, 0.1)  # scale does not matter: cosine similarity
    swapped = nt_xent_loss(basis, basis.roll(1, dims=0), 0.1)
    assert float(agree) < 0.01 and float(swapped) > 5.0
    assert pretrain_ssl.contrastive_accuracy(basis, basis * 3.0) == 1.0
    assert pretrain_ssl.contrastive_accuracy(basis, basis.roll(1, dims=0)) == 0.0


def test_contrastive_preset_gives_two_different_uint8_views():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    preset = ContrastivePreset(64)
    a, b = preset(image), preset(image)
    assert a.shape == b.shape == (3, 64, 64) and a.dtype == torch.uint8
    assert not torch.equal(a, b)


def test_pretraining_writes_a_backbone_the_classifier_loads(tmp_path):
    data = str(data_root(tmp_path))
    out = tmp_path / "ssl"
    argv = ["--data", f"amibr={data}", "--limit", "64", "--epochs", "2", "--batch-size", "8", "--input-size", "64",
            "--out", str(out), "--no-progress", "--workers", "0", "--probe-every", "1"]
    pretrain_ssl.main(pretrain_ssl.get_args_parser().parse_args(argv))
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert all(0.0 <= h["probe"]["pooled"]["roc_auc"] <= 1.0 for h in history)
    for name in ("last.pt", "history.csv", "curves.png", "backbone.safetensors", "backbone.json"):
        assert (out / name).is_file(), name

    # Only the training part of the split was read: the same split as the classifier's.
    records, _, train_idx, val_idx, _ = train.prepare_data(train.get_args_parser().parse_args(
        ["--data", f"amibr={data}", "--limit", "64"]))
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["train_figures"] == len(train_idx) and len(val_idx) > 0
    assert meta["command"].startswith("python -m lab.pretrain_ssl --data amibr=")

    net = AtypicalMitosisNet(ModelConfig(input_size=64, mixstyle=False))
    left_at_init = load_imagenet_backbone(net, out / "backbone.safetensors")
    assert not any(k.startswith("features.") and not k.endswith("num_batches_tracked") for k in left_at_init)
    with safe_open(str(out / "backbone.safetensors"), framework="pt") as f:
        key = "features.conv0.weight"
        assert torch.equal(net.state_dict()[key], f.get_tensor(key))
        assert json.loads(f.metadata()["epochs"]) == 2

    # Resuming a finished run trains nothing more and writes the same backbone again.
    pretrain_ssl.main(pretrain_ssl.get_args_parser().parse_args(argv + ["--resume"]))
    assert len(json.loads((out / "history.json").read_text())) == 2

    run = tmp_path / "run"
    train.main(smoke_args(tmp_path, "--epochs", "1", "--no-mixstyle", "--no-align", "--no-kd",
                          "--pretrained", str(out / "backbone.safetensors")))
    card = export.main(export.get_args_parser().parse_args([str(run), "--out", str(tmp_path / "weights"),
                                                            "--tta", "none"]))
    pretrained = card["training"]["pretrained"]
    assert pretrained["found_at_export"] and len(pretrained["sha256"]) == 64
    assert pretrained["metadata"]["method"].startswith("SimCLR")
