"""Inference speed on one 16-page stack, as ratios measured in one run (these machines are noisy).

    python benchmarks/inference.py [--weights weights] [--stack STACK] [--repeats 10] [--no-amp]

Prints: model time per stack for the shipped path (whole stack as one batch, channels_last,
bf16/fp16 autocast where supported, the card's test-time augmentation), the same with one network of
the ensemble alone (when the weights are an ensemble), the same with the other TTA mode (8 dihedral
views if the card says none, else a single view), and the reference container's way (one page at a
time, fp32, no TTA), their ratios; and process.py's wall time against a bare `import torch,
torchvision`. ``--no-amp`` runs the shipped path in float32 on the same CPU. On a CPU with native bf16,
``ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/inference.py`` measures it as a CPU without: oneDNN keeps to
AVX2 and the shipped path chooses fp32, as it does there (``model.runtime.cpu_has_fast_bf16``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from model.io import read_stack
from model.predict import Predictor
from model.preprocess import pages_to_batch
from model.runtime import cpu_has_fast_bf16

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN / cuDNN kernel selection)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--stack", type=Path, default=ROOT / "test" / "input" / "images" /
                   "stacked-histopathology-roi-cropouts" / "test_stack.tiff")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip-process", action="store_true", help="skip the process.py wall-time comparison")
    p.add_argument("--no-amp", action="store_true", help="float32 for the shipped path (a CPU without bf16)")
    args = p.parse_args(argv)

    pages = read_stack(args.stack)
    fast = Predictor(args.weights, args.device, amp=not args.no_amp)
    other = Predictor(args.weights, args.device, amp=not args.no_amp,
                      tta="dihedral" if fast.tta == "none" else "none")
    members = getattr(fast.model, "members", None)
    one = None
    if members is not None and len(members) > 1:  # one network of the ensemble, on the same path
        one = Predictor(args.weights, args.device, amp=not args.no_amp)
        one.model = one.model.members[0]
    ref = Predictor(args.weights, args.device, amp=False)
    ref.model = ref.model.to(memory_format=torch.contiguous_format)

    def reference_way():
        with torch.inference_mode():
            for page in pages:
                x = pages_to_batch([page], ref.input_size, ref.mean, ref.std).to(ref.device)
                torch.sigmoid(ref.model(x))

    t_fast = timed(lambda: fast.predict_pages(pages), args.repeats)
    t_other = timed(lambda: other.predict_pages(pages), args.repeats)
    t_ref = timed(reference_way, args.repeats)
    t_one = timed(lambda: one.predict_pages(pages), args.repeats) if one is not None else None
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    device = (torch.cuda.get_device_name(0) if fast.device.type == "cuda"
              else f"CPU ({torch.get_num_threads()} threads, native bf16 {'yes' if cpu_has_fast_bf16() else 'no'}"
                   f"{f', oneDNN capped at {cap}' if cap else ''})")
    print(f"device: {device}; torch {torch.__version__}; stack {args.stack.name}, {len(pages)} pages; "
          f"median of {args.repeats}")
    print(f"model time per stack, shipped path (batch, channels_last, autocast {fast.amp_dtype}, "
          f"TTA {fast.tta}): {t_fast:.4f} s")
    if t_one is not None:
        print(f"model time per stack, one network of the {len(members)} on the same path: {t_one:.4f} s "
              f"(the ensemble costs {t_fast / t_one:.1f}x one network)")
    t_single, t_tta = (t_fast, t_other) if fast.tta == "none" else (t_other, t_fast)
    print(f"model time per stack, same with TTA {other.tta}: {t_other:.4f} s "
          f"(8-view TTA costs {t_tta / t_single:.1f}x a single view)")
    print(f"model time per stack, reference way (page by page, fp32, no TTA): {t_ref:.4f} s")
    print(f"shipped path vs reference way: {t_ref / t_fast:.1f}x faster; with TTA {other.tta}: {t_ref / t_other:.1f}x")
    if not args.skip_process:
        job = args.stack.parent.parent.parent
        with tempfile.TemporaryDirectory() as out:
            t_import = wall([sys.executable, "-c", "import torch, torchvision"], 3)
            t_process = wall([sys.executable, "process.py", "--input", str(job), "--output", out,
                              "--weights", str(args.weights)], 3)
        print(f"bare 'import torch, torchvision': {t_import:.2f} s; process.py on the stack: {t_process:.2f} s; "
              f"overhead {t_process - t_import:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
