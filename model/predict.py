"""Batch prediction: load the model once, classify every page of many stacks.

    python -m model.predict STACK_OR_DIR... --out DIR [--device cpu|cuda] [--weights DIR]

Writes ``DIR/<stack stem>.json`` per stack, in the challenge's output format.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .io import IMAGE_SUFFIXES, StackReadError, read_stack, write_json_atomic
from .preprocess import UnsupportedPixelType, pages_to_batch
from .runtime import autocast, autocast_dtype, resolve_device
from .tta import TTA_MODES, tta_logits
from .weights import WeightsError, format_threshold, load_model

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def format_predictions(probabilities: Sequence[float], threshold: float) -> list[dict]:
    """One ``{"class", "confidence"}`` entry per page, as the official Track 2 evaluator reads them.

    ``class`` is "atypical" when P(atypical) >= threshold. ``confidence`` is the confidence in
    the stated class: P(atypical) for "atypical", 1 - P(atypical) for "normal". The official
    evaluator (DeepMicroscopy/MIDOG25_T2_evaluation_docker, evaluate.py) rebuilds the ROC score
    as ``confidence if class == "atypical" else 1 - confidence``, so it recovers P(atypical)
    exactly; writing P(atypical) for "normal" pages would invert their ranking in the AUC.
    """
    out = []
    for p in probabilities:
        p = float(min(max(float(p), 0.0), 1.0))
        atypical = p >= threshold
        out.append({"class": "atypical" if atypical else "normal", "confidence": p if atypical else 1.0 - p})
    return out


def p_atypical(entry: dict) -> float:
    """P(atypical) of one output entry, by the official evaluator's rule."""
    return entry["confidence"] if entry["class"] == "atypical" else 1.0 - entry["confidence"]


class Predictor:
    """The trained network plus its model card; one forward pass per chunk of pages (per view
    with test-time augmentation: the card's ``tta``, whose threshold was chosen with it)."""

    def __init__(self, weights: str | Path = DEFAULT_WEIGHTS, device: str = "auto", chunk_size: int = 64,
                 amp: bool = True, tta: str | None = None):
        self.weights = Path(weights)
        self.device = resolve_device(device)
        self.model, self.card = load_model(self.weights, self.device)
        self.model = self.model.to(memory_format=torch.channels_last)
        cfg = self.model.config
        self.input_size, self.mean, self.std = cfg.input_size, cfg.mean, cfg.std
        self.threshold = float(self.card["threshold"])
        self.amp_dtype = autocast_dtype(self.device) if amp else None
        self.chunk_size = chunk_size
        self.tta = tta if tta is not None else self.card.get("tta", "none")
        if self.tta not in TTA_MODES:
            raise WeightsError(f"test-time augmentation {self.tta!r} is not one of {TTA_MODES}")

    def describe(self) -> str:
        t = self.card.get("training", {})
        size = self.card.get("ensemble", {}).get("size", 1)
        what = f"ensemble of {size}: {self.card.get('selected_model', '?')}" if size > 1 else \
            f"{self.card.get('selected_model', '?')} model"
        return (f"weights {self.weights} ({what}, trained "
                f"{t.get('hardware', '?')}, commit {str(t.get('git_commit_at_export', '?'))[:10]}, exported "
                f"{self.card.get('exported', '?')}), threshold {format_threshold(self.threshold)}, device {self.device}, "
                f"autocast {self.amp_dtype or 'off (fp32)'}, test-time augmentation {self.tta}")

    @torch.inference_mode()
    def predict_pages(self, pages: Sequence[np.ndarray]) -> np.ndarray:
        """P(atypical) for each page; stacks larger than ``chunk_size`` go through in bounded chunks."""
        probs = []
        for start in range(0, len(pages), self.chunk_size):
            batch = pages_to_batch(pages[start:start + self.chunk_size], self.input_size, self.mean, self.std)
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp_dtype):
                logits = tta_logits(self.model, batch, self.tta)
            probs.append(torch.sigmoid(logits).cpu())
        return torch.cat(probs).numpy().astype(np.float64)

    def predict_stack(self, path: str | Path) -> list[dict]:
        pages = read_stack(path)
        try:
            probs = self.predict_pages(pages)
        except UnsupportedPixelType as exc:
            raise StackReadError(f"{path}: unsupported pixel type: {exc}") from None
        return format_predictions(probs, self.threshold)


def find_stacks(inputs: Sequence[str | Path]) -> list[Path]:
    stacks = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise StackReadError(f"{item}: no .tif/.tiff/.mha stacks in this folder")
            stacks.extend(found)
        elif item.is_file():
            stacks.append(item)
        else:
            raise StackReadError(f"{item}: no such file or folder")
    stems = [p.stem for p in stacks]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise StackReadError(f"several stacks share the output name(s) {dupes}")
    return stacks


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stacks", nargs="+", help="stack files (.tif/.tiff/.mha) or folders of them")
    p.add_argument("--out", type=Path, required=True, help="folder for <stack stem>.json")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-amp", action="store_true", help="fp32 inference")
    p.add_argument("--tta", choices=TTA_MODES, help="override the model card's test-time augmentation "
                   "(its threshold was chosen with the card's setting)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    args = get_args_parser().parse_args(argv)
    try:
        stacks = find_stacks(args.stacks)
        predictor = Predictor(args.weights, args.device, amp=not args.no_amp, tta=args.tta)
        print(predictor.describe(), file=sys.stderr)
        t0 = time.perf_counter()
        n_pages = 0
        for stack in tqdm(stacks, desc="stacks", unit="stack", disable=args.no_progress):
            result = predictor.predict_stack(stack)
            n_pages += len(result)
            write_json_atomic(result, args.out / f"{stack.stem}.json")
    except (StackReadError, WeightsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(stacks)} stacks, {n_pages} pages in {time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
