"""Generate test/input: a 16-page challenge stack of real AMi-Br figures.

    python test/make_test_input.py [--data ../shared/data/ami-br] [--split SPLIT_JSON]

Picks 8 atypical and 8 normal figures (2 + 2 per domain, seeded) from a validation part: by default
fold 0 of the 4-fold slide-disjoint cross-fit (``data.split.kfold_split``), the split the weights
shipped until 2026-12-06 held out (weights trained on every figure, as since, have none), or
``--split``'s. Writes them as a deflate-compressed RGB TIFF with resolution tags (0.25 um/px) like the
organisers' stacks, the Grand Challenge inputs.json, and test/input_labels.json (label, domain and
source file of each page). AMi-Br: Bertram et al. 2025, MIT licence.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from data.datasets import load_amibr
from data.split import kfold_split, read_split

ROOT = Path(__file__).resolve().parents[1]

SLUG = "stacked-histopathology-roi-cropouts"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ami-br")
    p.add_argument("--split", type=Path, help="a split.json whose validation part to pick from "
                   "(default: fold 0 of the 4-fold cross-fit)")
    p.add_argument("--out", type=Path, default=ROOT / "test" / "input")
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args(argv)
    records = load_amibr(args.data)
    _, val = read_split(args.split, records) if args.split else kfold_split(records, 4, fold=0)
    rng = random.Random(args.seed)
    chosen = []
    for domain in sorted({records[i].domain for i in val}):
        for label in (1, 0):
            pool = [i for i in val if records[i].domain == domain and records[i].label == label]
            chosen += rng.sample(pool, 2)
    rng.shuffle(chosen)
    pages = [np.array(Image.open(records[i].path).convert("RGB")) for i in chosen]
    images = args.out / "images" / SLUG
    images.mkdir(parents=True, exist_ok=True)
    stack = images / "test_stack.tiff"
    with tifffile.TiffWriter(stack) as tif:
        for page in pages:
            tif.write(page, photometric="rgb", compression="deflate", resolution=(40000, 40000),
                      resolutionunit="CENTIMETER")
    inputs = [{"file": None, "image": {"name": stack.name}, "value": None,
               "interface": {"slug": SLUG, "kind": "Image", "super_kind": "Image",
                             "relative_path": f"images/{SLUG}", "example_value": None}}]
    (args.out / "inputs.json").write_text(json.dumps(inputs, indent=4) + "\n")
    labels = [{"page": n, "label": "atypical" if records[i].label else "normal", "domain": records[i].domain,
               "source": f"ami-br/patches/{Path(records[i].path).parent.name}/{Path(records[i].path).name}"}
              for n, i in enumerate(chosen)]
    (ROOT / "test" / "input_labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    print(f"wrote {stack} ({len(pages)} pages) and {args.out / 'inputs.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
