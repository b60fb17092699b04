"""Grand Challenge entrypoint: MIDOG 2025 Track 2, atypical vs normal mitotic figures.

Reads ``/input/inputs.json``, dispatches on its interface slugs, classifies every page of
the stack and writes ``/output/multiple-mitotic-figure-classification.json``.

    python process.py [--input /input] [--output /output] [--weights DIR] [--device auto|cpu|cuda] [--no-amp]
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

STACK_SLUG = "stacked-histopathology-roi-cropouts"
OUTPUT_FILE = "multiple-mitotic-figure-classification.json"
GC_MODEL_DIR = Path("/opt/ml/model")


class InputError(RuntimeError):
    """Bad job input; the message names the file and the reason."""


def load_inputs(input_dir: Path) -> list[dict]:
    path = input_dir / "inputs.json"
    if not path.is_file():
        raise InputError(f"{path}: not found")
    try:
        inputs = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(inputs, list) or not all(
        isinstance(s, dict) and isinstance(s.get("interface"), dict) and "slug" in s["interface"] for s in inputs
    ):
        raise InputError(f"{path}: expected a list of socket values with interface.slug")
    return inputs


def socket_image(input_dir: Path, socket: dict) -> Path:
    """The single image file of an image socket (Grand Challenge puts it in relative_path)."""
    folder = input_dir / socket["interface"].get("relative_path", f"images/{socket['interface']['slug']}")
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder of socket {socket['interface']['slug']!r} not found")
    from model.io import IMAGE_SUFFIXES

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        names = ", ".join(p.name for p in files) or "empty"
        raise InputError(f"{folder}: no .tif/.tiff/.mha image ({names})")
    if len(images) > 1:
        raise InputError(f"{folder}: several images ({', '.join(p.name for p in images)}); expected one")
    return images[0]


def choose_weights(explicit: Path | None) -> Path:
    """--weights, else Grand Challenge's uploaded model (/opt/ml/model), else the baked-in weights/."""
    from model.predict import DEFAULT_WEIGHTS
    from model.weights import has_weights

    if explicit is not None:
        return explicit
    for candidate in (GC_MODEL_DIR, GC_MODEL_DIR / "weights"):
        if has_weights(candidate):
            return candidate
    return DEFAULT_WEIGHTS


def classify_stack(input_dir: Path, output_dir: Path, sockets: dict, args) -> None:
    # Imported here, not at the top: input errors are reported before torch is loaded.
    from model.io import read_stack, write_json_atomic
    from model.predict import Predictor, format_predictions
    from model.preprocess import UnsupportedPixelType
    from model.runtime import autocast_dtype, describe_runtime, resolve_device

    timings = {}
    # First line of the log: torch, its CUDA build, the device and why CUDA is unusable if it is.
    device = resolve_device(args.device)
    print(describe_runtime(device, None if args.no_amp else autocast_dtype(device)), flush=True)
    t = time.perf_counter()
    stack = socket_image(input_dir, sockets[STACK_SLUG])
    pages = read_stack(stack)
    timings["read"] = time.perf_counter() - t
    t = time.perf_counter()
    predictor = Predictor(choose_weights(args.weights), device, amp=not args.no_amp)
    timings["load model"] = time.perf_counter() - t
    print(predictor.describe())
    t = time.perf_counter()
    try:
        probs = predictor.predict_pages(pages)
    except UnsupportedPixelType as exc:
        raise InputError(f"{stack}: unsupported pixel type: {exc}") from None
    timings["model"] = time.perf_counter() - t
    results = format_predictions(probs, predictor.threshold)  # confidence = P(atypical) on every page
    write_json_atomic(results, output_dir / OUTPUT_FILE)
    n_atypical = sum(r["class"] == "atypical" for r in results)
    print(f"{stack.name}: {len(results)} pages, {n_atypical} atypical -> {output_dir / OUTPUT_FILE}")
    print("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in timings.items()))


# Dispatch on the sorted tuple of interface slugs, as the Grand Challenge template does.
HANDLERS = {(STACK_SLUG,): classify_stack}


def run(args) -> None:
    inputs = load_inputs(args.input)
    slugs = tuple(sorted(s["interface"]["slug"] for s in inputs))
    handler = HANDLERS.get(slugs)
    if handler is None:
        raise InputError(f"{args.input / 'inputs.json'}: unsupported interface combination {slugs}; "
                         f"expected {list(HANDLERS)}")
    handler(args.input, args.output, {s["interface"]["slug"]: s for s in inputs}, args)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=Path("/input"))
    p.add_argument("--output", type=Path, default=Path("/output"))
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: /opt/ml/model, else weights/)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-amp", action="store_true", help="float32 inference (default: bf16 autocast on CPUs with "
                   "native bf16, float16 on CUDA)")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        run(args)
    except Exception as exc:  # one line naming the file and the reason, non-zero exit, no output file
        from model.io import StackReadError
        from model.predict import NonFiniteOutputError
        from model.weights import WeightsError

        known = (InputError, StackReadError, WeightsError, NonFiniteOutputError)
        reason = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
        print(f"error: {reason}", file=sys.stderr)
        return 1
    print(f"total {time.perf_counter() - T_START:.2f}s (including imports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
