"""Does the validation threshold transfer to an unseen domain? Per held-out domain, over every
leave-one-domain-out run on disk: how often the balanced accuracy at the run's own threshold (fitted on
the other domains' validation figures, max mean per-domain BA) beats the plain 0.5 cut, and by how much.

    python scripts/threshold_transfer.py [RUN_DIR ...]    # default: runs/lodo-*/ and runs/gpu-lodo/sweep/*/

Reads each run's heldout.json (written by training.train --leave-out-domain).
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv] or sorted(Path("runs").glob("lodo-*/")) + sorted(Path("runs").glob("gpu-lodo/sweep/*/"))
    reports = [r / "heldout.json" for r in runs if (r / "heldout.json").is_file()]
    if not reports:
        print("error: no <run>/heldout.json found (train with --leave-out-domain first)", file=sys.stderr)
        return 1
    gains = defaultdict(list)
    for path in reports:
        held = json.loads(path.read_text())
        gains[held["domain"]].append(held["test_at_threshold"]["pooled"]["balanced_accuracy"]
                                     - held["test_at_0.5"]["pooled"]["balanced_accuracy"])
    print("| held-out domain | runs | own threshold better / worse / level than 0.5 | BA gain: mean (min..max) |")
    print("|---|---|---|---|")
    for domain, g in sorted(gains.items()):
        better, worse = sum(x > 1e-9 for x in g), sum(x < -1e-9 for x in g)
        print(f"| {domain} | {len(g)} | {better} / {worse} / {len(g) - better - worse} | "
              f"{sum(g) / len(g):+.3f} ({min(g):+.3f}..{max(g):+.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
