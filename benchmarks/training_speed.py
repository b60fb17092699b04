"""Training throughput: full Mix-Align-Distil step vs plain ERM step, and bf16 vs fp32, in one run.

    python benchmarks/training_speed.py [--batch-size 32] [--steps 6] [--compile] [--side-by-side 2]

Synthetic inputs of the training shape; each configuration runs a warm-up step then ``--steps``
timed optimiser steps. Prints images/s per configuration and the ratios (target: full <= 1.35x ERM).
``--compile`` adds the ERM step with the network under ``torch.compile`` (inductor; its compile time
printed apart), to see whether compiling pays on this machine (training.train does not compile).
``--side-by-side N`` instead times the full recipe in one process with all the threads, then in N
processes at once with the threads shared out (as ``lab.sweep --parallel N`` runs trainings), and
prints the figures/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lab.sweep import threads_per_run
from model import ModelConfig, build_model
from model.runtime import autocast, autocast_dtype, resolve_device
from training.ema import EMATeacher
from training.losses import alignment_loss, classification_loss, distillation_loss


def step_time(full: bool, amp: torch.dtype | None, device, batch: int, steps: int, size: int,
              compile_model: bool = False) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_size=size, mixstyle=full)).to(device).to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model
    teacher = EMATeacher(model) if full else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, device=device) < 0.25).float()
    d = torch.arange(batch, device=device) % 4

    def one():
        with autocast(device, amp):
            logits, desc, _ = forward(x, return_features=True)
            if full:
                with torch.no_grad():
                    t_logits = teacher.module(x)
        loss = classification_loss(logits, y, 3.0)
        if full:
            loss = loss + alignment_loss(desc, d) + 0.5 * distillation_loss(t_logits, logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if full:
            teacher.update(model)
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    start = time.perf_counter()
    one()
    if compile_model:
        print(f"(compiling and the first step: {time.perf_counter() - start:.0f} s)", flush=True)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def images_per_s(output: str) -> float:
    """The images/s a ``--only full`` child printed."""
    match = re.search(r"([0-9.]+) images/s", output)
    if match is None:
        raise RuntimeError(f"no images/s in the benchmark's output:\n{output}")
    return float(match.group(1))


def side_by_side(n: int, threads: int, args) -> tuple[float, float]:
    """(images/s of one process with ``threads`` threads, summed images/s of ``n`` processes at once
    with ``threads // n`` each). Each child builds its own model and times the same steps; their
    median step time keeps the few seconds by which their starts differ out of the result."""
    def launch(k: int, t: int) -> list[subprocess.Popen]:
        cmd = [sys.executable, __file__, "--only", "full", "--threads", str(t), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--input-size", str(args.input_size), "--device", args.device]
        env = dict(os.environ, OMP_NUM_THREADS=str(t))
        return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 cwd=Path(__file__).resolve().parents[1]) for _ in range(k)]

    def rates(procs: list[subprocess.Popen]) -> list[float]:
        outs = [proc.communicate()[0] for proc in procs]
        for proc, out in zip(procs, outs):
            if proc.returncode != 0:
                raise RuntimeError(f"a benchmark child failed (exit {proc.returncode}):\n{out}")
        return [images_per_s(out) for out in outs]

    shared = threads_per_run(n, threads)  # as lab.sweep shares them out
    alone = rates(launch(1, threads))[0]
    together = rates(launch(n, shared))
    print(f"one process, {threads} threads: {alone:.1f} images/s; {n} side by side, {shared} "
          f"thread(s) each: {' + '.join(f'{r:.1f}' for r in together)} = {sum(together):.1f} images/s")
    return alone, sum(together)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--only", choices=["full"], help="time the full recipe alone (e.g. several processes side by side)")
    p.add_argument("--compile", action="store_true", help="also time the ERM step under torch.compile")
    p.add_argument("--side-by-side", type=int, metavar="N",
                   help="time the full recipe alone, then N processes at once sharing the threads")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    if args.side_by_side is not None and args.side_by_side < 2:
        p.error("--side-by-side needs N >= 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.side_by_side:
        alone, together = side_by_side(args.side_by_side, args.threads or torch.get_num_threads(), args)
        print(f"{args.side_by_side} side by side / one alone (full recipe, figures/s): {together / alone:.2f}x")
        return 0
    device = resolve_device(args.device)
    low = autocast_dtype(device, training=True)
    configs = [("ERM", False, low, False), ("full recipe", True, low, False), ("ERM fp32", False, None, False)]
    if args.compile:
        configs.append(("ERM compiled", False, low, True))
    if args.only == "full":
        configs = [c for c in configs if c[0] == "full recipe"]
    results = {}
    for name, full, amp, compile_model in configs:
        t = step_time(full, amp, device, args.batch_size, args.steps, args.input_size, compile_model)
        results[name] = t
        print(f"{name:12s} autocast {str(amp):15s} {t:.3f} s/step  {args.batch_size / t:6.1f} images/s", flush=True)
    if args.only:
        return 0
    print(f"full recipe step / ERM step: {results['full recipe'] / results['ERM']:.2f}x (target <= 1.35x)")
    print(f"fp32 step / {low} step (ERM): {results['ERM fp32'] / results['ERM']:.2f}x")
    if args.compile:
        print(f"compiled step / eager step (ERM, {low}): {results['ERM compiled'] / results['ERM']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
