"""Training augmentation presets: shapes and dtypes, and the stain jitter against its definition."""

import pytest
import torch

from training.presets import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    EvalPreset,
    LightTrainPreset,
    RandomHEDJitter,
    TrainPreset,
    hed_jitter,
)


def _hne_like(seed: int = 0, size: int = 32) -> torch.Tensor:
    """A uint8 image mixed from haematoxylin and eosin optical densities (so deconvolution is exact)."""
    g = torch.Generator().manual_seed(seed)
    amounts = torch.rand(size * size, 3, generator=g) * torch.tensor([1.2, 0.8, 0.0])
    rgb = 256.0 * torch.exp(-(amounts @ RGB_FROM_HED)) - 1.0
    return rgb.T.reshape(3, size, size).round().clamp(0, 255).to(torch.uint8)


def test_stain_matrices_are_inverse():
    assert torch.allclose(RGB_FROM_HED @ HED_FROM_RGB, torch.eye(3), atol=1e-5)


def test_hed_jitter_identity():
    image = torch.randint(0, 256, (3, 40, 24), dtype=torch.uint8)
    assert torch.equal(hed_jitter(image, torch.ones(3), torch.zeros(3)), image)


def test_hed_jitter_scales_haematoxylin_by_hand():
    image = _hne_like()
    out = hed_jitter(image, torch.tensor([1.5, 1.0, 1.0]), torch.zeros(3))
    od = lambda x: -torch.log((x.reshape(3, -1).T.double() + 1) / 256) @ HED_FROM_RGB.double()  # noqa: E731
    before, after = od(image), od(out)
    # More haematoxylin: darker image, the H concentration 1.5x, eosin unchanged (up to uint8 rounding).
    assert out.float().mean() < image.float().mean()
    mask = before[:, 0] > 0.3
    assert torch.allclose(after[mask, 0] / before[mask, 0], torch.full((int(mask.sum()),), 1.5, dtype=torch.float64),
                          atol=0.05)
    assert (after[:, 1] - before[:, 1]).abs().mean() < 0.02


def test_hed_jitter_shift_adds_optical_density():
    image = _hne_like(1)
    out = hed_jitter(image, torch.ones(3), torch.tensor([0.0, 0.1, 0.0]))
    od = lambda x: -torch.log((x.reshape(3, -1).T.double() + 1) / 256) @ HED_FROM_RGB.double()  # noqa: E731
    # Pixels that clip at 0 or 255 cannot follow; the rest gain 0.1 OD of eosin.
    keep = ((out > 1) & (out < 254)).all(dim=0).reshape(-1)
    shift = (od(out) - od(image))[keep, 1]
    assert abs(shift.mean().item() - 0.1) < 0.01


@pytest.mark.parametrize("p, changes", [(0.0, False), (1.0, True)])
def test_random_hed_jitter_probability(p, changes):
    torch.manual_seed(0)
    image = _hne_like(2)
    out = RandomHEDJitter(0.2, p=p)(image)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert (not torch.equal(out, image)) == changes


@pytest.mark.parametrize("hed_sigma", [0.0, 0.2])
def test_train_preset_keeps_uint8_and_size(hed_sigma):
    torch.manual_seed(0)
    preset = TrainPreset(64, hed_sigma=hed_sigma)
    assert any(isinstance(t, RandomHEDJitter) for t in preset.transforms.transforms) == (hed_sigma > 0)
    for seed in range(5):
        out = preset(_hne_like(seed, 64))
        assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
    image = _hne_like(9, 64)
    assert torch.equal(EvalPreset()(image), image)


def test_light_preset_is_a_lossless_dihedral_transform():
    """The curriculum's first phase only flips and turns: every output is one of the 8 symmetries."""
    image = _hne_like(3, 32)
    views = [torch.rot90(im, k, dims=(-2, -1)) for im in (image, image.flip(-1)) for k in range(4)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(64):
        out = LightTrainPreset()(image)
        matches = [i for i, v in enumerate(views) if torch.equal(out, v)]
        assert matches, "output is not a flip/rotation of the input"
        seen.add(matches[0])
    assert len(seen) == 8
