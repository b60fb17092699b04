"""Compare a container output with the expected one: same length and classes, P(atypical) within a tolerance.

    python test/compare.py EXPECTED.json ACTUAL.json [--tolerance 0.02] [--threshold T]

``confidence`` is P(atypical) for every page (the official evaluator's reading since 2025-07-27). Different
hardware and precision (CPU bf16, GPU fp16, fp32) move P(atypical) by up to ~0.02, so a page whose
expected P(atypical) lies within the tolerance of the threshold may flip class; any other class
difference fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def p_atypical(entry: dict) -> float:
    return entry["confidence"]


def compare(expected: list, actual: list, tolerance: float, threshold: float) -> list[str]:
    problems = []
    if len(expected) != len(actual):
        return [f"{len(actual)} entries, expected {len(expected)}"]
    for i, (e, a) in enumerate(zip(expected, actual)):
        if set(a) != {"class", "confidence"} or a["class"] not in ("atypical", "normal") \
                or type(a["confidence"]) is not float:
            problems.append(f"page {i}: malformed entry {a}")
            continue
        pe, pa = p_atypical(e), p_atypical(a)
        if (a["class"] == "atypical") != (pa >= threshold):
            problems.append(f"page {i}: class {a['class']} but confidence = P(atypical) {pa:.4f} and threshold "
                            f"{threshold} (confidence must be P(atypical) on every page)")
        if abs(pe - pa) > tolerance:
            problems.append(f"page {i}: P(atypical) {pa:.4f}, expected {pe:.4f} (tolerance {tolerance})")
        if e["class"] != a["class"] and abs(pe - threshold) > tolerance:
            problems.append(f"page {i}: class {a['class']}, expected {e['class']}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("expected", type=Path)
    p.add_argument("actual", type=Path)
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--threshold", type=float, default=None, help="default: weights/model_card.json")
    args = p.parse_args(argv)
    threshold = args.threshold
    if threshold is None:
        card = Path(__file__).resolve().parents[1] / "weights" / "model_card.json"
        threshold = json.loads(card.read_text())["threshold"]
    for path in (args.expected, args.actual):
        if not path.is_file():
            print(f"error: {path}: not found", file=sys.stderr)
            return 1
    problems = compare(json.loads(args.expected.read_text()), json.loads(args.actual.read_text()),
                       args.tolerance, threshold)
    for line in problems:
        print(f"MISMATCH {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.actual}: matches {args.expected} (tolerance {args.tolerance}, threshold {threshold:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
