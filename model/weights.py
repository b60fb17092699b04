"""Pickle-free weights: ``model.safetensors`` + ``model_card.json`` in one directory.

One network, or a ``SeedEnsemble`` of several (the card's ``ensemble`` section lists them; their
tensors are prefixed ``members.<i>.``). Conv and linear kernels may be stored in float16 to halve
the file (``half_precision``); they are widened to float32 on loading, and the card says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .network import AtypicalMitosisNet, ModelConfig, SeedEnsemble, build_model
from .tta import TTA_MODES

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"


class WeightsError(RuntimeError):
    """Missing or corrupt weights; the message names the file."""


HALF_STORAGE = "float16 conv/linear kernels (widened to float32 on loading), float32 for the rest"


def is_half_stored(tensor: torch.Tensor) -> bool:
    """Which tensors ``half_precision`` stores in float16: the kernels (almost all the bytes).
    BatchNorm statistics and biases stay float32: small running variances would lose precision."""
    return tensor.is_floating_point() and tensor.dim() > 1


def round_to_storage(model: torch.nn.Module) -> torch.nn.Module:
    """Round the kernels to float16 and back in place, so that what is evaluated before saving with
    ``half_precision`` is exactly what ``load_model`` will rebuild."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if is_half_stored(tensor):
                tensor.copy_(tensor.half().float())
    return model


def save_weights(model: AtypicalMitosisNet | SeedEnsemble, card: dict, directory: str | Path,
                 half_precision: bool = False) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half_precision:
        state = {k: v.half() if is_half_stored(v) else v for k, v in state.items()}
    card = dict(card)
    card["model_config"] = model.config.to_dict()
    card["weights_storage"] = HALF_STORAGE if half_precision else "float32"
    if isinstance(model, SeedEnsemble):
        card.setdefault("ensemble", {})["size"] = len(model.members)
    elif "ensemble" in card:
        raise ValueError("the card describes an ensemble but the model is a single network")
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "arch": model.config.arch})
    # World-readable: a container's non-root user must read weights copied in by root.
    (directory / WEIGHTS_FILE).chmod(0o644)
    write_card(card, directory)
    return directory


def write_card(card: dict, directory: str | Path) -> Path:
    """Write (or rewrite) the model card alone, e.g. after a new threshold; the weights file is untouched."""
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    path.chmod(0o644)
    return path


def has_weights(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / WEIGHTS_FILE).is_file() and (directory / CARD_FILE).is_file()


def read_card(directory: str | Path) -> dict:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: model card not found")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(card, dict) or "model_config" not in card or "threshold" not in card:
        raise WeightsError(f"{path}: model card lacks 'model_config' or 'threshold'")
    threshold = card["threshold"]
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise WeightsError(f"{path}: threshold {threshold!r} is not a number in [0, 1]")
    if card.get("tta", "none") not in TTA_MODES:
        raise WeightsError(f"{path}: test-time augmentation {card['tta']!r} is not one of {TTA_MODES}")
    if "ensemble" in card:
        size = card["ensemble"].get("size") if isinstance(card["ensemble"], dict) else None
        if not isinstance(size, int) or size < 1:
            raise WeightsError(f"{path}: ensemble size {size!r} is not a positive integer")
    return card


def load_model(directory: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[AtypicalMitosisNet | SeedEnsemble, dict]:
    """Build the network (or the card's ensemble) and load its safetensors weights (eval mode)."""
    directory = Path(directory)
    card = read_card(directory)
    try:
        config = ModelConfig.from_dict(card["model_config"])
        # Built on the meta device: random initialisation would be overwritten anyway and
        # costs a noticeable share of a container run.
        with torch.device("meta"):
            model = build_model(config, ensemble_size=card.get("ensemble", {}).get("size", 1))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{directory / CARD_FILE}: bad model_config ({exc})") from None
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read safetensors ({exc})") from None
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{path}: weights do not match the model card's architecture ({first})") from None
    return model.to(device).eval(), card


def format_threshold(threshold: float) -> str:
    """A threshold for reports: two decimals, three when the rule lands between grid points.

    The halfway rule averages two grid cuts (e.g. 0.355); rounding that to 0.35 or 0.36 in a table
    would name a cut the card does not use."""
    text = f"{threshold:.3f}"
    return text[:-1] if text.endswith("0") else text
