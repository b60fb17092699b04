"""Batch prediction: load the model once, classify every page of many stacks.

    python -m model.predict STACK_OR_DIR... --out DIR [--device cpu|cuda] [--weights DIR]

Writes ``DIR/<stack stem>.json`` per stack, in the challenge's output format.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .io import IMAGE_SUFFIXES, StackReadError, read_stack, write_json_atomic
from .layers import stack_norm
from .layers.stack_norm import SCOPES
from .preprocess import UnsupportedPixelType, pages_to_batch
from .runtime import autocast, autocast_dtype, describe_runtime, resolve_device
from .tta import TTA_MODES, tta_logits
from .weights import WeightsError, format_threshold, load_model

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class NonFiniteOutputError(RuntimeError):
    """The network produced NaN or infinity; nothing is written."""


def format_predictions(probabilities: Sequence[float], threshold: float) -> list[dict]:
    """One ``{"class", "confidence"}`` entry per page, as the official Track 2 evaluator reads them.

    ``confidence`` = P(atypical) for **every** page, whatever its class; ``class`` is "atypical"
    when P(atypical) >= threshold. The organisers' evaluator (DeepMicroscopy/
    MIDOG25_T2_evaluation_docker, ``evaluate.py``, since its commit 2d1b108e of 2025-07-27: "confidence
    is now only the confidence for atypical") scores ROC AUC on ``[r["confidence"] for r in results]``.
    Its earlier version took `confidence` to be about the stated class (1 - P for "normal"); writing that
    today would invert the ranking of every page called normal.
    """
    out = []
    for p in probabilities:
        p = float(p)
        if not math.isfinite(p):
            raise NonFiniteOutputError(f"P(atypical) {p} is not a finite number")
        p = min(max(p, 0.0), 1.0)
        out.append({"class": "atypical" if p >= threshold else "normal", "confidence": p})
    return out


def p_atypical(entry: dict) -> float:
    """P(atypical) of one output entry: its ``confidence`` (the official evaluator's reading)."""
    return float(entry["confidence"])


class Predictor:
    """The trained network plus its model card; one forward pass per chunk of pages (per view
    with test-time augmentation: the card's ``tta``, whose threshold was chosen with it).

    ``stack_norm``: prior strength N of test-time batch-norm adaptation on the stack
    (``model.layers.stack_norm``; each chunk of at most ``chunk_size`` pages, i.e. a whole challenge
    stack, normalised with its own statistics mixed with the training ones) on the layers of
    ``stack_scope``, ``None`` for none; by default the card's ``stack_norm`` (``prior``, ``scope``) if it
    has one (its threshold was then fitted with it)."""

    def __init__(self, weights: str | Path = DEFAULT_WEIGHTS, device: str = "auto", chunk_size: int = 64,
                 amp: bool = True, tta: str | None = None, stack_norm: float | None | str = "card",
                 stack_scope: str = "all"):
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
        self.fp32_fallbacks = 0  # chunks recomputed in float32 after a non-finite autocast output
        if self.tta not in TTA_MODES:
            raise WeightsError(f"test-time augmentation {self.tta!r} is not one of {TTA_MODES}")
        card_norm = self.card.get("stack_norm") or {}
        self.stack_norm = card_norm.get("prior") if stack_norm == "card" else stack_norm
        self.stack_scope = card_norm.get("scope", "all") if stack_norm == "card" else stack_scope
        if self.stack_scope not in SCOPES:
            raise WeightsError(f"stack batch-norm adaptation scope {self.stack_scope!r} is not one of {sorted(SCOPES)}")
        if self.stack_norm is not None:
            if not float(self.stack_norm) >= 0:
                raise WeightsError(f"stack batch-norm adaptation prior {self.stack_norm!r} must be >= 0")
            if self.tta != "none":  # 8 views of a page would count as 8 pages of the stack
                raise WeightsError(f"stack batch-norm adaptation is single view; test-time augmentation is {self.tta}")
            self.stack_norm = float(self.stack_norm)

    def describe_runtime(self) -> str:
        """One line: torch and its CUDA build, the device used, autocast, and why CUDA is unusable if it is."""
        return describe_runtime(self.device, self.amp_dtype)

    def describe(self) -> str:
        t = self.card.get("training", {})
        size = self.card.get("ensemble", {}).get("size", 1)
        what = f"ensemble of {size}: {self.card.get('selected_model', '?')}" if size > 1 else \
            f"{self.card.get('selected_model', '?')} model"
        return (f"weights {self.weights} ({what}, trained "
                f"{t.get('hardware', '?')}, commit {str(t.get('git_commit_at_export', '?'))[:10]}, exported "
                f"{self.card.get('exported', '?')}), threshold {format_threshold(self.threshold)}, "
                f"device {self.device}, "
                f"autocast {self.amp_dtype or 'off (fp32)'}, test-time augmentation {self.tta}"
                + (f", stack batch-norm adaptation (prior {self.stack_norm:g}, {self.stack_scope} layers)"
                   if self.stack_norm is not None else ""))

    @torch.inference_mode()
    def predict_pages(self, pages: Sequence[np.ndarray]) -> np.ndarray:
        """P(atypical) for each page; stacks larger than ``chunk_size`` go through in bounded chunks.

        A non-finite logit is never passed on: under autocast (e.g. a float16 overflow on a GPU) the
        chunk is recomputed in float32 and a line on stderr says so; if float32 is not finite either,
        ``NonFiniteOutputError`` is raised and nothing is written."""
        probs = []
        for start in range(0, len(pages), self.chunk_size):
            batch = pages_to_batch(pages[start:start + self.chunk_size], self.input_size, self.mean, self.std)
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            logits = self._logits(batch, self.amp_dtype)
            if not torch.isfinite(logits).all() and self.amp_dtype is not None:
                print(f"warning: non-finite output under {self.amp_dtype} autocast for pages "
                      f"{start}-{start + len(batch) - 1}; recomputed in float32", file=sys.stderr)
                self.fp32_fallbacks += 1
                logits = self._logits(batch, None)
            if not torch.isfinite(logits).all():
                bad = [start + int(i) for i in torch.nonzero(~torch.isfinite(logits.reshape(len(batch), -1)).all(1))]
                raise NonFiniteOutputError(f"the network's output is not finite (NaN or infinity) for pages {bad} "
                                           "in float32; nothing was written")
            probs.append(torch.sigmoid(logits).cpu())
        return torch.cat(probs).numpy().astype(np.float64)

    def _logits(self, batch: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
        with autocast(self.device, amp_dtype), stack_norm(self.model, self.stack_norm, self.stack_scope):
            return tta_logits(self.model, batch, self.tta).float()

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
        print(predictor.describe_runtime(), file=sys.stderr)
        print(predictor.describe(), file=sys.stderr)
        t0 = time.perf_counter()
        n_pages = 0
        for stack in tqdm(stacks, desc="stacks", unit="stack", disable=args.no_progress):
            result = predictor.predict_stack(stack)
            n_pages += len(result)
            write_json_atomic(result, args.out / f"{stack.stem}.json")
    except (StackReadError, WeightsError, NonFiniteOutputError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(stacks)} stacks, {n_pages} pages in {time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
