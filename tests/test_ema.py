import pytest
import torch
from torch import nn

from training.ema import EMATeacher


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_update_formula_parameters_and_buffers():
    student = _net()
    ema = EMATeacher(student, decay=0.9, warmup=False)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(8, 3))  # moves BatchNorm running stats and num_batches_tracked
    ema.update(student)
    s = student.state_dict()
    for key, value in ema.module.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * s[key])
        else:
            assert torch.equal(value, s[key])  # integer buffers are copied


def test_ema_warmup_decay_ramps_to_target():
    ema = EMATeacher(_net(), decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.updates = 10_000
    assert ema.current_decay() == 0.999


def test_ema_state_round_trip():
    student = _net()
    ema = EMATeacher(student, decay=0.99)
    ema.update(student)
    other = EMATeacher(_net(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError):
        EMATeacher(_net(), decay=1.0)
