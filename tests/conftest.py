"""Shared fixtures. Real data is read from ../shared/data when present; otherwise inputs are generated."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AMIBR = SHARED / "ami-br"
SAMPLE_STACK = SHARED / "midog25-t2-sample" / "stack_5.tiff"
SAMPLE_INPUTS = SAMPLE_STACK.parent / "inputs.json"

# Two cores are shared with everything else on these machines; keep tests predictable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def in_ci() -> bool:
    """CI=true, as .ci/run and run_tests.sh read it: a clean clone with ../shared/data beside it."""
    return os.environ.get("CI") == "true"


def require_shared_data(path: Path, what: str) -> None:
    """A test that needs ``path`` from ../shared/data: skipped where it is absent (a user's fresh clone
    without ../shared), but failed under CI=true, where the data is always there and its absence is a broken
    setup, not a reason to pass with the real-data tests unrun."""
    if Path(path).exists():
        return
    message = f"{what} not found at {path}"
    if in_ci():
        pytest.fail(f"{message}: CI=true and CI always has ../shared/data beside the clone", pytrace=False)
    pytest.skip(f"{message} (fresh clone without ../shared)")


def shared_data(path: Path, what: str):
    """A decorator marking a test as needing ``path`` from ../shared/data: ``require_shared_data`` runs before
    it (``pytest_runtest_setup`` below). The mark is made when a test is decorated, after ``pytest_configure``
    has registered it (--strict-markers)."""
    def mark(test):
        return pytest.mark.shared_data(Path(path), what)(test)
    return mark


needs_amibr = shared_data(AMIBR / "AMI-BR.csv", "real AMi-Br data")
needs_sample_stack = shared_data(SAMPLE_STACK, "organisers' test stack")


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data(path, what): needs PATH from ../shared/data; skipped without "
                                       "it, failed without it under CI=true (tests/conftest.py: needs_amibr)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for mark in item.iter_markers("shared_data"):
        require_shared_data(*mark.args)


def synthetic_pages(n: int, size: int = 128, seed: int = 0) -> list[np.ndarray]:
    """Pink background with a dark purple blob at the centre: H&E-like enough for I/O tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pages = []
    for _ in range(n):
        base = np.array([230, 180, 210]) + rng.normal(0, 8, (size, size, 3))
        r = rng.uniform(6, 14)
        blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < r ** 2
        base[blob] = np.array([70, 30, 110]) + rng.normal(0, 10, (int(blob.sum()), 3))
        pages.append(np.clip(base, 0, 255).astype(np.uint8))
    return pages


def real_or_synthetic_pages(n: int, seed: int = 0) -> list[np.ndarray]:
    if (AMIBR / "patches").is_dir():
        from PIL import Image

        files = sorted((AMIBR / "patches" / "normal").glob("*.png"))[:n // 2] + \
            sorted((AMIBR / "patches" / "atypical").glob("*.png"))[:n - n // 2]
        return [np.array(Image.open(f).convert("RGB")) for f in files]
    return synthetic_pages(n, seed=seed)


def labelled_pages(n: int) -> tuple[list[np.ndarray], list[int]]:
    """n real AMi-Br figures, half atypical (label 1), taken across the slides; generated pages of two kinds
    (small round blob = 0, large irregular blob = 1) where the data is absent."""
    if (AMIBR / "patches").is_dir():
        from PIL import Image

        files = []
        for label, folder in ((0, "normal"), (1, "atypical")):
            found = sorted((AMIBR / "patches" / folder).glob("*.png"))
            step = max(1, len(found) // (n // 2 + 1))
            files += [(f, label) for f in found[::step][:n // 2 if label == 0 else n - n // 2]]
        return [np.array(Image.open(f).convert("RGB")) for f, _ in files], [label for _, label in files]
    pages = synthetic_pages(n)
    labels = [i % 2 for i in range(n)]
    rng = np.random.default_rng(1)
    for page, label in zip(pages, labels):
        if label:
            page[40:90, 35:95] = np.clip(np.array([60, 20, 100]) + rng.normal(0, 15, (50, 60, 3)), 0, 255)
    return pages, labels


@pytest.fixture(scope="session")
def untrained_weights(tmp_path_factory) -> Path:
    """An untrained network saved in the shipped format: for I/O tests only, never shipped."""
    from model import ModelConfig, build_model, save_weights

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("untrained_weights")
    save_weights(build_model(ModelConfig()), {"threshold": 0.5, "note": "untrained, test fixture"}, directory)
    return directory


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    from model.weights import has_weights

    path = ROOT / "weights"
    if not has_weights(path):
        pytest.fail(f"{path}: the shipped weights are missing")
    return path
