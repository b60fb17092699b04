import math

import pytest
import torch

from training.losses import alignment_loss, classification_loss, dann_schedule, distillation_loss, kd_weight


def test_classification_loss_matches_hand_computation():
    z = torch.tensor([2.0, -1.0, 0.5])
    y = torch.tensor([1.0, 0.0, 1.0])
    w = 3.0
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    hand = -(w * math.log(sig(2.0)) + math.log(1 - sig(-1.0)) + w * math.log(sig(0.5))) / 3
    assert classification_loss(z, y, w).item() == pytest.approx(hand, rel=1e-6)
    plain = -(math.log(sig(2.0)) + math.log(1 - sig(-1.0)) + math.log(sig(0.5))) / 3
    assert classification_loss(z, y).item() == pytest.approx(plain, rel=1e-6)


def test_alignment_loss_matches_hand_computation():
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [0.0, 0.0]])
    d = torch.tensor([0, 0, 1, 2])
    # domain means: [2, 1], [5, 4], [0, 0]; population variance per channel over 3 domains
    mu = [[2.0, 1.0], [5.0, 4.0], [0.0, 0.0]]
    hand = 0.0
    for c in range(2):
        vals = [m[c] for m in mu]
        mean = sum(vals) / 3
        s2 = sum((v - mean) ** 2 for v in vals) / 3
        hand += math.log(1 + s2) / 2
    assert alignment_loss(f, d).item() == pytest.approx(hand, rel=1e-6)


def test_standardised_alignment_loss_matches_hand_computation_and_ignores_scale():
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [0.0, 0.0]])
    d = torch.tensor([0, 0, 1, 2])
    hand = 0.0
    for c in range(2):
        col = [row[c] for row in f.tolist()]
        sd = (sum((v - sum(col) / 4) ** 2 for v in col) / 4) ** 0.5  # population std over the batch
        mu = [(col[0] + col[1]) / 2 / sd, col[2] / sd, col[3] / sd]
        s2 = sum((m - sum(mu) / 3) ** 2 for m in mu) / 3
        hand += math.log(1 + s2) / 2
    assert alignment_loss(f, d, standardise=True).item() == pytest.approx(hand, rel=1e-6)
    assert alignment_loss(f * 1e-3, d, standardise=True).item() == pytest.approx(hand, rel=1e-5)
    assert alignment_loss(f * 1e-3, d).item() < 1e-5  # unstandardised, small features barely register
    g = (f * 1e-3).requires_grad_()
    alignment_loss(g, d, standardise=True).backward()  # the std is a constant: the gradient is the means'
    assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


def test_alignment_loss_zero_for_one_domain_and_for_aligned_domains():
    f = torch.randn(6, 4, requires_grad=True)
    loss = alignment_loss(f, torch.zeros(6, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()  # still differentiable
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    assert alignment_loss(same, torch.tensor([0, 1])).item() == pytest.approx(0.0)


def test_distillation_loss_matches_hand_computation():
    zt, zs, T = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0]), 2.0
    hand = 0.0
    for a, b in zip(zt.tolist(), zs.tolist()):
        pt, ps = 1 / (1 + math.exp(-a / T)), 1 / (1 + math.exp(-b / T))
        hand += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    hand = T**2 * hand / 2
    assert distillation_loss(zt, zs, T).item() == pytest.approx(hand, rel=1e-5)
    assert distillation_loss(zs, zs, T).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_equals_two_class_softmax_kd_over_zero_and_logit():
    zt, zs, T = torch.randn(8), torch.randn(8), 2.0
    pt = torch.softmax(torch.stack([torch.zeros(8), zt], 1) / T, 1)
    log_ps = torch.log_softmax(torch.stack([torch.zeros(8), zs], 1) / T, 1)
    ref = T**2 * torch.nn.functional.kl_div(log_ps, pt, reduction="batchmean")
    assert distillation_loss(zt, zs, T).item() == pytest.approx(ref.item(), rel=1e-5)


def test_distillation_gradient_reaches_student_only():
    zt = torch.randn(4, requires_grad=True)
    zs = torch.randn(4, requires_grad=True)
    distillation_loss(zt, zs).backward()
    assert zt.grad is None and zs.grad is not None


def test_dann_schedule_values():
    assert dann_schedule(0.0) == 0.0
    assert dann_schedule(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_schedule(1.0) == pytest.approx(0.9999092, rel=1e-6)
    assert dann_schedule(2.0) == dann_schedule(1.0)
    assert all(dann_schedule(a / 10) < dann_schedule((a + 1) / 10) for a in range(10))


def test_kd_weight_linear_warmup():
    assert kd_weight(0) == 0.0
    assert kd_weight(5) == pytest.approx(0.25)
    assert kd_weight(10) == 0.5 and kd_weight(30) == 0.5
    assert kd_weight(3, warmup_epochs=0) == 0.5
