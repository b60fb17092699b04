"""Atypical-vs-normal mitotic figure classifier (MIDOG 2025 Track 2)."""

from .network import AtypicalMitosisNet, ModelConfig, SeedEnsemble, build_model, load_imagenet_backbone
from .weights import WeightsError, load_model, save_weights

__all__ = [
    "AtypicalMitosisNet",
    "ModelConfig",
    "SeedEnsemble",
    "WeightsError",
    "build_model",
    "load_imagenet_backbone",
    "load_model",
    "save_weights",
]
