"""CBAM-DenseNet-121 with MixStyle: the one place that builds the network from a config."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import densenet121

from .layers import CBAM, MixStyle


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; stored in the model card."""

    arch: str = "densenet121_cbam"
    input_size: int = 128
    mixstyle: bool = True
    # After which DenseNet stages MixStyle acts: early and mid only (never the last stage,
    # whose statistics carry the class information).
    mixstyle_after: tuple[str, ...] = ("transition1", "transition2")
    mixstyle_p: float = 0.5
    mixstyle_alpha: float = 0.1
    cbam_reduction: int = 16
    dropout: float = 0.2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("mixstyle_after", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


ALLOWED_MIXSTYLE_SITES = ("pool0", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3")


class AtypicalMitosisNet(nn.Module):
    """DenseNet-121 features (+MixStyle at early/mid stages) -> ReLU -> CBAM -> GAP -> logit.

    ``forward(x)`` returns one logit per image (B,): P(atypical) = sigmoid(logit).
    ``forward(x, return_features=True)`` also returns the GAP descriptor of the CBAM
    map (B, 1024), used by the alignment loss, and the CBAM spatial attention (B, 1, h, w).
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        for site in config.mixstyle_after:
            if site not in ALLOWED_MIXSTYLE_SITES:
                raise ValueError(f"MixStyle site {site!r} not allowed; choose from {ALLOWED_MIXSTYLE_SITES}")
        backbone = densenet121(weights=None)
        layers: list[tuple[str, nn.Module]] = []
        for name, module in backbone.features.named_children():
            layers.append((name, module))
            if config.mixstyle and name in config.mixstyle_after:
                layers.append((f"mixstyle_{name}", MixStyle(config.mixstyle_p, config.mixstyle_alpha)))
        # Keeping torchvision's module names means ImageNet checkpoints load unchanged.
        self.features = nn.Sequential(OrderedDict(layers))
        channels = backbone.classifier.in_features
        self.cbam = CBAM(channels, reduction=config.cbam_reduction)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        fmap = torch.relu(self.features(x))
        fmap, attention = self.cbam(fmap)
        descriptor = fmap.mean(dim=(2, 3))
        logit = self.classifier(self.dropout(descriptor)).squeeze(1)
        if return_features:
            return logit, descriptor, attention
        return logit


def build_model(config: ModelConfig | dict | None = None, ensemble_size: int = 1) -> AtypicalMitosisNet | SeedEnsemble:
    """The network of ``config``; with ``ensemble_size`` > 1, that many in a ``SeedEnsemble``."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if ensemble_size > 1:
        return SeedEnsemble([AtypicalMitosisNet(config) for _ in range(ensemble_size)])
    return AtypicalMitosisNet(config)


# torchvision's densenet checkpoints predate module names without dots ("norm.1" -> "norm1").
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def load_imagenet_backbone(model: AtypicalMitosisNet, path: str | Path) -> list[str]:
    """Load torchvision's ImageNet DenseNet-121 weights (e.g. densenet121-a639ec97.pth) from a local file.

    Only ``features.*`` are loaded (the classifier differs). Returns the list of model keys
    left at their initialisation (CBAM, head). Never downloads anything.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    remapped = {}
    for key, value in state.items():
        m = _LEGACY_DENSENET_KEY.match(key)
        key = m.group(1) + m.group(2) if m else key
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("features."):
            remapped[key] = value
    if not remapped:
        raise ValueError(f"{path}: no DenseNet 'features.*' tensors found")
    missing, unexpected = model.load_state_dict(remapped, strict=False)
    if unexpected:
        raise ValueError(f"{path}: unexpected keys, not a DenseNet-121 checkpoint: {unexpected[:5]}")
    # torchvision's file predates num_batches_tracked; those stay at their initial value.
    missing_features = [k for k in missing if k.startswith("features.") and not k.endswith("num_batches_tracked")]
    if missing_features:
        raise ValueError(f"{path}: missing backbone keys: {missing_features[:5]}")
    return missing


class SeedEnsemble(nn.Module):
    """Several trainings of the same network (e.g. seeds), combined by averaging their logits:

        z_ens(x) = (1/M) sum_m z_m(x),   P(atypical) = sigmoid(z_ens(x))

    The members share one ``ModelConfig`` (so one preprocessing); test-time augmentation wraps the
    ensemble like a single network, and averaging logits over views and over members commutes.
    """

    def __init__(self, members: list[AtypicalMitosisNet]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(m.config != members[0].config for m in members):
            raise ValueError("ensemble members must share one model config")
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> ModelConfig:
        return self.members[0].config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

