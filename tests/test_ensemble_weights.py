"""Seed ensembles as one weights folder, and float16 kernel storage: what is saved is what loads."""

import json

import pytest
import torch
from safetensors.torch import load_file

from model import ModelConfig, SeedEnsemble, WeightsError, build_model, load_model, save_weights
from model.predict import Predictor
from model.weights import is_half_stored, round_to_storage
from tests.conftest import synthetic_pages

SMALL = ModelConfig(input_size=64, mixstyle=False)


def _members(n, seed=0):
    torch.manual_seed(seed)
    return [build_model(SMALL).eval() for _ in range(n)]


def test_ensemble_logit_is_the_mean_of_the_members():
    members = _members(3)
    ensemble = SeedEnsemble(members).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in members]).mean(dim=0)
        assert torch.allclose(ensemble(x), expected, atol=1e-6)
    assert ensemble.config == SMALL
    assert isinstance(build_model(SMALL, ensemble_size=2), SeedEnsemble)


def test_ensemble_members_must_share_a_config():
    with pytest.raises(ValueError, match="share one model config"):
        SeedEnsemble([build_model(SMALL), build_model(ModelConfig(input_size=128, mixstyle=False))])
    with pytest.raises(ValueError):
        SeedEnsemble([])


@pytest.mark.parametrize("size, half", [(1, True), (2, False), (2, True)])
def test_save_load_round_trip(tmp_path, size, half):
    model = SeedEnsemble(_members(size)) if size > 1 else _members(1)[0]
    if half:
        round_to_storage(model)
    save_weights(model, {"threshold": 0.4}, tmp_path, half_precision=half)
    stored = load_file(tmp_path / "model.safetensors")
    assert all(k.startswith("members.") for k in stored) == (size > 1)
    for key, tensor in stored.items():
        want = torch.float16 if half and is_half_stored(tensor) else model.state_dict()[key].dtype
        assert tensor.dtype == want, key
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert ("ensemble" in card) == (size > 1) and card["weights_storage"].startswith("float16" if half else "float32")
    loaded, _ = load_model(tmp_path)
    assert type(loaded) is type(model)
    # Widened back to float32: exactly the rounded model that was saved.
    for key, tensor in loaded.state_dict().items():
        assert tensor.dtype == model.state_dict()[key].dtype and torch.equal(tensor, model.state_dict()[key]), key
    probs = Predictor(tmp_path, "cpu", amp=False).predict_pages(synthetic_pages(2))
    assert probs.shape == (2,)


def test_half_rounding_changes_outputs_only_slightly():
    model = _members(1)[0]
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = torch.sigmoid(model(x))
        after = torch.sigmoid(round_to_storage(model)(x))
    assert not torch.equal(before, after) and torch.allclose(before, after, atol=1e-3)


def test_card_ensemble_size_must_match_the_weights(tmp_path):
    save_weights(SeedEnsemble(_members(2)), {"threshold": 0.5}, tmp_path)
    card = json.loads((tmp_path / "model_card.json").read_text())
    card["ensemble"]["size"] = 3
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not match"):
        load_model(tmp_path)
    card["ensemble"]["size"] = "two"
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="ensemble size"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="single network"):
        save_weights(_members(1)[0], {"threshold": 0.5, "ensemble": {"size": 2}}, tmp_path / "x")
