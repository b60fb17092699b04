"""scripts/threshold_transfer.py: own-threshold vs 0.5 tallies per held-out domain, from heldout.json files."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def held_out(folder: Path, domain: str, ba_thr: float, ba_half: float) -> Path:
    folder.mkdir()
    (folder / "heldout.json").write_text(json.dumps({
        "domain": domain, "test_at_threshold": {"pooled": {"balanced_accuracy": ba_thr}},
        "test_at_0.5": {"pooled": {"balanced_accuracy": ba_half}}}))
    return folder


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "threshold_transfer.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_tallies_and_mean_gain_per_domain(tmp_path):
    runs = [held_out(tmp_path / "a", "D1", 0.80, 0.70), held_out(tmp_path / "b", "D1", 0.60, 0.70),
            held_out(tmp_path / "c", "D1", 0.75, 0.75), held_out(tmp_path / "d", "D2", 0.50, 0.55)]
    done = run(*runs)
    assert done.returncode == 0, done.stderr
    assert "| D1 | 3 | 1 / 1 / 1 | +0.000 (-0.100..+0.100) |" in done.stdout
    assert "| D2 | 1 | 0 / 1 / 0 | -0.050 (-0.050..-0.050) |" in done.stdout


def test_no_reports_is_an_error(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 1 and "no <run>/heldout.json found" in done.stderr
