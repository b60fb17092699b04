"""The benchmark scripts run and print the ratios they promise (tiny sizes: the numbers mean nothing)."""

import re
import subprocess
import sys

from tests.conftest import ROOT

TRAINING_SPEED = ROOT / "benchmarks" / "training_speed.py"


def run(*args):
    return subprocess.run([sys.executable, str(TRAINING_SPEED), *args], capture_output=True, text=True, cwd=ROOT)


def test_side_by_side_times_one_process_then_two_sharing_the_threads_and_prints_the_ratio():
    out = run("--side-by-side", "2", "--threads", "2", "--steps", "1", "--batch-size", "2",
              "--input-size", "32", "--device", "cpu")
    assert out.returncode == 0, out.stdout + out.stderr
    line = re.search(r"one process, 2 threads: ([0-9.]+) images/s; 2 side by side, 1 thread\(s\) each: "
                     r"([0-9.]+) \+ ([0-9.]+) = ([0-9.]+) images/s", out.stdout)
    assert line, out.stdout
    alone, a, b, total = map(float, line.groups())
    assert abs(a + b - total) < 0.11
    ratio = re.search(r"2 side by side / one alone \(full recipe, figures/s\): ([0-9.]+)x", out.stdout)
    assert ratio and abs(float(ratio.group(1)) - total / alone) <= 0.05 * total / alone, out.stdout


def test_side_by_side_refuses_fewer_than_two_processes():
    out = run("--side-by-side", "1")
    assert out.returncode == 2 and "--side-by-side needs N >= 2" in out.stderr
