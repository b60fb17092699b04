"""Slide-disjoint splits: stratified by label and domain, seeded (one validation fold or any fold of a K-fold
cross-fit); and leave-one-domain-out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .datasets import Record


def stratified_group_split(records: list[Record], val_fraction: float = 0.25,
                           seed: int = 0) -> tuple[list[int], list[int]]:
    """Return (train, val) indices; no group (slide) is in both.

    Uses scikit-learn's StratifiedGroupKFold with round(1 / val_fraction) folds on the
    joint (domain, label) stratum and takes the first fold as validation, so each
    domain and class is represented in about ``val_fraction`` of its figures.
    It is fold 0 of ``kfold_split(records, round(1 / val_fraction), seed=seed)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return kfold_split(records, n_folds_for(val_fraction), 0, seed)


def n_folds_for(val_fraction: float) -> int:
    """The number of folds whose one fold is a ``val_fraction`` share: round(1 / val_fraction), at least 2."""
    return max(2, round(1.0 / val_fraction))


def kfold_split(records: list[Record], n_folds: int = 4, fold: int = 0,
                seed: int = 0) -> tuple[list[int], list[int]]:
    """Return (train, val) indices of fold ``fold`` of a slide-disjoint K-fold cross-fit (K = ``n_folds``).

    scikit-learn's StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed) on the joint
    (domain, label) stratum with slides as groups: the K validation parts partition the figures,
    no slide is in a fold's training and validation part, and each part holds about 1/K of every
    domain and class. Fold 0 is ``stratified_group_split(records, 1 / n_folds, seed)``.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1} for {n_folds} folds, got {fold}")
    strata = np.array([f"{r.domain}|{r.label}" for r in records])
    groups = np.array([r.group for r in records])
    n_groups = len(set(groups.tolist()))
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} slides are too few for a {n_folds}-fold ({1 / n_folds:.0%}) slide-disjoint split")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = splitter.split(np.zeros(len(records)), strata, groups)
    for _ in range(fold):
        next(folds)
    train_idx, val_idx = next(folds)
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


def leave_one_domain_out(records: list[Record], domain: str) -> tuple[list[int], list[int]]:
    """Return (rest, held_out): the figures of every domain but ``domain``, and those of ``domain``."""
    domains = sorted({r.domain for r in records})
    if domain not in domains:
        raise ValueError(f"domain {domain!r} not in {domains}")
    rest = [i for i, r in enumerate(records) if r.domain != domain]
    held_out = [i for i, r in enumerate(records) if r.domain == domain]
    return rest, held_out


def leave_one_domain_out_split(records: list[Record], domain: str, val_fraction: float = 0.25,
                               seed: int = 0, fold: int = 0) -> tuple[list[int], list[int], list[int]]:
    """Return (train, val, test) for a leave-one-domain-out run.

    ``test`` is every figure of ``domain``, never seen in training nor used to pick anything.
    The other domains are split slide-disjointly (``stratified_group_split``) into ``train``
    and an in-domain ``val`` that selects the epoch, the EMA-or-student model and the
    threshold, exactly as in a normal run; so the held-out numbers measure what an unseen
    scanner or cohort would get from the whole pipeline, threshold included.

    ``fold`` > 0 takes another fold of that K-fold split of the other domains (K = round(1 / val_fraction);
    fold 0 is the split above): a cross-fit inside the leave-one-domain-out fold (``--cv-fold``).
    """
    rest, test = leave_one_domain_out(records, domain)
    sub_train, sub_val = kfold_split([records[i] for i in rest], n_folds_for(val_fraction), fold, seed)
    return [rest[i] for i in sub_train], [rest[i] for i in sub_val], test


def split_hash(records: list[Record], train: list[int], val: list[int]) -> str:
    """sha256 over the sorted (file name, label, domain, group, part) rows: identifies data + split."""
    rows = sorted(
        [(Path(records[i].path).name, records[i].label, records[i].domain, records[i].group, part)
         for part, idx in (("train", train), ("val", val)) for i in idx]
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def data_hash(records: list[Record]) -> str:
    """sha256 over the sorted (record key, label, domain, group) rows: identifies the data, whatever the split."""
    rows = sorted([(record_key(r), r.label, r.domain, r.group) for r in records])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def record_key(record: Record) -> str:
    """Location-independent identity of a figure: its slide (group) and file name."""
    return f"{record.group}::{Path(record.path).name}"


def write_split(path: Path, records: list[Record], train: list[int], val: list[int],
                test: list[int] | None = None) -> None:
    """Save a split; ``test`` (leave-one-domain-out: the held-out domain) is listed when given."""
    payload = {
        "hash": split_hash(records, train, val),
        "train": [record_key(records[i]) for i in train],
        "val": [record_key(records[i]) for i in val],
        "val_groups": sorted({records[i].group for i in val}),
    }
    if test:
        payload["test"] = [record_key(records[i]) for i in test]
    path.write_text(json.dumps(payload, indent=1) + "\n")


def read_split(path: Path, records: list[Record], part: str = "val",
               keep_order: bool = False) -> tuple[list[int], list[int]]:
    """Indices (train, ``part``) of a saved split in ``records``; fails if the split names a figure
    the records lack. ``part="test"`` reads a leave-one-domain-out run's held-out domain.
    Indices are sorted, or with ``keep_order`` listed in the file's order (which is the order of
    the scores in that run's reports).

    Figures are matched by ``record_key`` (slide + file name), so a split made with the data in
    one place applies to a copy elsewhere. Splits written with file paths are matched by path.
    """
    payload = json.loads(Path(path).read_text())
    by_key = {record_key(r): i for i, r in enumerate(records)}
    by_path = {str(Path(r.path).resolve()): i for i, r in enumerate(records)}

    def index(entry: str) -> int:
        if "::" in entry:
            return by_key[entry]
        return by_path[str(Path(entry).resolve())]

    try:
        order = list if keep_order else sorted
        train = order(index(p) for p in payload["train"])
        val = order(index(p) for p in payload[part])
    except KeyError as exc:
        raise ValueError(f"{path}: split lists {exc} which is not in the dataset (or has no {part!r} part)") from None
    return train, val


def slide_stacks(records: list[Record], size: int = 16, seed: int = 0) -> list[list[int]]:
    """Indices of ``records`` cut into stacks as a container run would see them: each slide's figures in a
    seeded random order, cut into consecutive stacks of at most ``size`` (the last of a slide may be
    smaller); no stack mixes slides. Every index is in exactly one stack."""
    if size < 1:
        raise ValueError(f"stack size must be >= 1, got {size}")
    by_slide: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_slide.setdefault(r.group, []).append(i)
    rng = np.random.default_rng(seed)
    stacks = []
    for slide in sorted(by_slide):
        order = rng.permutation(by_slide[slide]).tolist()
        stacks += [order[i:i + size] for i in range(0, len(order), size)]
    return stacks
