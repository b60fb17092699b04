"""Labelled patches -> challenge-format inputs and an official-format ground truth.

Output folder layout::

    OUT/stacks/stack_1.tiff ...        multi-page RGB TIFFs, up to 16 pages each
    OUT/ground_truth.json              [{"image", "labels", "tumordomains"}] (official evaluator format)
    OUT/domains.json                   {"<domain name>": <integer id>, ...}
    OUT/manifest.json                  source patch of every page (for debugging, not needed to score)
    OUT/jobs/<stem>/inputs.json        with --jobs: one Grand Challenge job folder per stack
    OUT/jobs/<stem>/images/stacked-histopathology-roi-cropouts/<stack>.tiff
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.datasets import Record, load_datasets, parse_label, read_image
from data.split import read_split
from model.io import write_json_atomic
from model.preprocess import page_to_rgb_uint8

STACK_SLUG = "stacked-histopathology-roi-cropouts"
CLASS_NAMES = ("normal", "atypical")  # index = label (1 = atypical)
MAX_PAGES = 16
# 0.25 µm per pixel = 40,000 pixels per centimetre (the organisers' sample says 102,351 px/inch).
RESOLUTION = (40000.0, 40000.0)
OWNED_OUTPUTS = ("stacks", "jobs", "ground_truth.json", "domains.json", "manifest.json")


class PackError(RuntimeError):
    """Bad pack input or output folder; the message names the file and the reason."""


def _csv_label(value: str, path: Path, line: int) -> int:
    try:
        return parse_label(value)
    except ValueError as exc:
        raise PackError(f"{path}: line {line}: {exc}") from None


def load_csv_records(path: str | Path) -> list[Record]:
    """Records from a CSV with columns ``image`` (or ``path``), ``label`` and ``domain``.

    Relative image paths are taken from the CSV's folder; the group is the file stem.
    """
    path = Path(path)
    if not path.is_file():
        raise PackError(f"{path}: CSV not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = set(reader.fieldnames or [])
        image_col = next((c for c in ("image", "path", "image_path") if c in header), None)
        if image_col is None or not {"label", "domain"} <= header:
            raise PackError(f"{path}: needs columns image (or path), label, domain; found {sorted(header)}")
        records = []
        for line, row in enumerate(reader, start=2):
            image = Path(row[image_col].strip())
            if not image.is_absolute():
                image = path.parent / image
            if not image.is_file():
                raise PackError(f"{path}: line {line}: image {image} not found")
            domain = (row["domain"] or "").strip()
            if not domain:
                raise PackError(f"{path}: line {line}: empty domain")
            records.append(Record(str(image), _csv_label(row["label"], path, line), domain, image.stem))
    if not records:
        raise PackError(f"{path}: no rows")
    return records


def select_records(data: Sequence[str] = (), csv_path: str | Path | None = None, split: str | Path | None = None,
                   part: str = "val", limit: int | None = None, seed: int = 0) -> list[Record]:
    """Load ``--data NAME=PATH`` specs and/or a ``--csv``; optionally keep one part of a saved split,
    then optionally a seeded random subset of ``limit`` figures."""
    if not data and csv_path is None:
        raise PackError("nothing to pack: give --data NAME=PATH and/or --csv FILE")
    records: list[Record] = []
    if data:
        try:
            records.extend(load_datasets(list(data)))
        except (ValueError, FileNotFoundError) as exc:
            raise PackError(str(exc)) from None
    if csv_path is not None:
        records.extend(load_csv_records(csv_path))
    if split is not None:
        if part not in ("train", "val", "test"):
            raise PackError(f"--part must be train, val or test, got {part!r}")
        if not Path(split).is_file():
            raise PackError(f"{split}: split file not found")
        try:
            # A leave-one-domain-out split's "test" part is its unseen domain.
            train, held = read_split(Path(split), records, part="test" if part == "test" else "val")
        except (ValueError, KeyError) as exc:
            raise PackError(f"{split}: {exc}") from None
        records = [records[i] for i in (train if part == "train" else held)]
    if limit is not None and limit < len(records):
        if limit < 1:
            raise PackError(f"--limit must be positive, got {limit}")
        keep = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
        records = [records[i] for i in keep]
    if not records:
        raise PackError("no figures left to pack")
    return records


def domain_ids(records: Sequence[Record]) -> dict[str, int]:
    """Domain names in sorted order -> 1, 2, 3 ... (the official ground truth uses integer ids)."""
    return {name: i for i, name in enumerate(sorted({r.domain for r in records}), start=1)}


def plan_stacks(n: int, stack_size: int = MAX_PAGES, seed: int = 0) -> list[list[int]]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into stacks of at most ``stack_size`` pages."""
    if not 1 <= stack_size <= MAX_PAGES:
        raise PackError(f"--stack-size must be in 1..{MAX_PAGES}, got {stack_size}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return [order[i:i + stack_size] for i in range(0, n, stack_size)]


def read_page(path: str) -> np.ndarray:
    """One patch as (H, W, 3) uint8, converted with the same rules as inference."""
    try:
        return page_to_rgb_uint8(read_image(path))
    except Exception as exc:  # PIL and the converter raise many types for bad files
        raise PackError(f"{path}: cannot read patch ({type(exc).__name__}: {exc})") from None


def write_stack(pages: Sequence[np.ndarray], path: str | Path) -> Path:
    """Multi-page RGB TIFF like the organisers' stacks: deflate, ~0.25 µm/px resolution tags.

    Written to a temporary file and renamed, so an interrupted pack leaves no partial stack.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp) as tif:
            for page in pages:
                tif.write(np.ascontiguousarray(page), photometric="rgb", compression="zlib",
                          resolution=RESOLUTION, resolutionunit="CENTIMETER", metadata=None)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def inputs_json(image_name: str) -> list[dict]:
    """Grand Challenge ``inputs.json`` for one stack (same layout as the organisers' sample job)."""
    return [{
        "file": None,
        "image": {"name": image_name},
        "value": None,
        "interface": {
            "slug": STACK_SLUG,
            "kind": "Image",
            "super_kind": "Image",
            "relative_path": f"images/{STACK_SLUG}",
            "example_value": None,
        },
    }]


def write_job(stack: Path, jobs_dir: Path) -> Path:
    """``jobs/<stem>/inputs.json`` + the stack under ``images/<slug>/`` (hard link, else copy)."""
    job = jobs_dir / stack.stem
    image_dir = job / "images" / STACK_SLUG
    image_dir.mkdir(parents=True, exist_ok=True)
    target = image_dir / stack.name
    target.unlink(missing_ok=True)
    try:
        os.link(stack, target)
    except OSError:
        shutil.copy2(stack, target)
    write_json_atomic(inputs_json(stack.name), job / "inputs.json")
    return job


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new pack with an old one; with ``overwrite`` remove only what pack writes."""
    existing = [name for name in OWNED_OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise PackError(f"{out}: already holds a pack ({', '.join(existing)}); use --overwrite or another --out")
    for name in existing:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def pack_records(records: Sequence[Record], out: str | Path, stack_size: int = MAX_PAGES, seed: int = 0,
                 jobs: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Write stacks, ground truth, domain ids and manifest (and job folders); return a summary."""
    from tqdm import tqdm

    out = Path(out)
    if not records:
        raise PackError("no figures to pack")
    plan = plan_stacks(len(records), stack_size, seed)
    ids = domain_ids(records)
    prepare_output(out, overwrite)
    ground_truth, manifest = [], []
    for number, members in enumerate(tqdm(plan, desc="pack", unit="stack", disable=not progress), start=1):
        name = f"stack_{number}.tiff"
        chosen = [records[i] for i in members]
        stack = write_stack([read_page(r.path) for r in chosen], out / "stacks" / name)
        if jobs:
            write_job(stack, out / "jobs")
        ground_truth.append({
            "image": name,
            "labels": [CLASS_NAMES[r.label] for r in chosen],
            "tumordomains": [ids[r.domain] for r in chosen],
        })
        manifest.append({"image": name, "pages": [
            {"path": r.path, "label": CLASS_NAMES[r.label], "domain": r.domain, "group": r.group} for r in chosen
        ]})
    write_json_atomic(ground_truth, out / "ground_truth.json")
    write_json_atomic(ids, out / "domains.json")
    write_json_atomic({"seed": seed, "stack_size": stack_size, "stacks": manifest}, out / "manifest.json")
    return {
        "stacks": len(plan),
        "figures": len(records),
        "atypical": int(sum(r.label for r in records)),
        "domains": {name: sum(r.domain == name for r in records) for name in ids},
        "out": str(out),
    }
