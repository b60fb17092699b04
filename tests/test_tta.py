"""Test-time augmentation: the 8 dihedral views, the logit average, and the card's TTA in the predictor."""

import json

import numpy as np
import pytest
import torch

from model.predict import Predictor
from model.tta import dihedral_views, tta_logits
from model.weights import WeightsError, read_card
from tests.conftest import real_or_synthetic_pages


def test_dihedral_views_are_the_eight_distinct_symmetries():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # no symmetry of its own, so all 8 images differ
    views = dihedral_views(x)
    assert len(views) == 8 and torch.equal(views[0], x)
    flat = {tuple(v.flatten().tolist()) for v in views}
    assert len(flat) == 8
    # Closed under the group: rotating or mirroring any view gives another view.
    for v in views:
        assert tuple(torch.rot90(v, 1, dims=(2, 3)).flatten().tolist()) in flat
        assert tuple(torch.flip(v, dims=(2,)).flatten().tolist()) in flat


def test_tta_logits_average_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    weight = torch.zeros(1, 1, 4, 4)
    weight[0, 0, 0, 0] = 1.0  # the logit is the top-left pixel

    def forward(v):
        return (v * weight).sum(dim=(1, 2, 3))

    # The top-left pixel of the 8 views visits the 4 corners (0, 3, 12, 15), each twice.
    assert tta_logits(forward, x, "dihedral").item() == pytest.approx((0 + 3 + 12 + 15) / 4)
    assert tta_logits(forward, x, "none").item() == 0.0
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        tta_logits(forward, x, "rot4")


def test_tta_is_exact_for_an_invariant_model():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 8)

    def forward(v):  # mean intensity: invariant under every view
        return v.mean(dim=(1, 2, 3))

    torch.testing.assert_close(tta_logits(forward, x, "dihedral"), forward(x))


def test_predictor_uses_the_cards_tta(tmp_path, untrained_weights):
    import shutil

    folder = tmp_path / "w"
    shutil.copytree(untrained_weights, folder)
    pages = real_or_synthetic_pages(4)
    plain = Predictor(folder, "cpu", amp=False).predict_pages(pages)
    card = json.loads((folder / "model_card.json").read_text())
    card["tta"] = "dihedral"
    (folder / "model_card.json").write_text(json.dumps(card))
    with_tta = Predictor(folder, "cpu", amp=False)
    assert with_tta.tta == "dihedral" and "test-time augmentation dihedral" in with_tta.describe()
    views = with_tta.predict_pages(pages)
    assert not np.allclose(plain, views)
    np.testing.assert_allclose(Predictor(folder, "cpu", amp=False, tta="none").predict_pages(pages), plain, atol=1e-6)
    card["tta"] = "sideways"
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="model_card.json: test-time augmentation 'sideways'"):
        read_card(folder)


@pytest.mark.parametrize("max_batch", [1, 5, 128])
def test_tta_batching_does_not_change_the_result(max_batch):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    weight = torch.randn(3, 8, 8)

    def forward(v):
        return (v * weight).sum(dim=(1, 2, 3))

    expected = torch.stack([forward(v) for v in dihedral_views(x)]).mean(dim=0)
    torch.testing.assert_close(tta_logits(forward, x, "dihedral", max_batch=max_batch), expected)
