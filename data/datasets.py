"""Labelled mitotic-figure datasets: each record has an image path, label, domain and group (slide).

Loaders return plain ``Record`` lists; ``FigureDataset`` turns records into tensors. Several
datasets can be concatenated: domain names are prefixed with the dataset name so they stay
distinct.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from model.preprocess import page_to_tensor


@dataclass(frozen=True)
class Record:
    path: str
    label: int  # 1 = atypical (AMF), 0 = normal (NMF): the majority of the experts, the label of every metric
    domain: str
    group: str  # slide / whole-slide image; splits never cut a group
    # What the experts said beyond the majority, where a dataset has it (AMi-Br; None / () elsewhere):
    votes: float | None = None  # share of the experts who called the figure atypical (AMi-Br: 0, 1/3, 2/3, 1)
    subtypes: tuple[str, ...] = ()  # each expert's mitotic subtype, one of SUBTYPES (AMi-Br: two experts)


# The mitotic subtypes of AMi-Br (Bertram et al. 2025): four normal (NMF) and four atypical (AMF) forms.
# Atypia is defined by these morphologies, so a head asked to tell them apart learns shape, not stain.
SUBTYPES = ("NMF prometaphase", "NMF metaphase", "NMF anaphase-telophase", "NMF ring shape",
            "AMF segregation", "AMF multipolar", "AMF bipolar asymmetric", "AMF other")
_SUBTYPE_SPELLINGS = {"amf bipolar assymetric": "amf bipolar asymmetric"}  # as AMI-BR.csv spells it


def parse_subtype(value: str, path: Path, column: str) -> str:
    """One of ``SUBTYPES`` (case-insensitive; AMI-BR.csv's 'assymetric' accepted), else DatasetFormatError."""
    key = " ".join(str(value).split()).lower()
    key = _SUBTYPE_SPELLINGS.get(key, key)
    for name in SUBTYPES:
        if name.lower() == key:
            return name
    raise DatasetFormatError(f"{path}: {column}={value!r} is not a mitotic subtype ({', '.join(SUBTYPES)})")


class DatasetFormatError(ValueError):
    pass


def _read_csv(path: Path, required: set[str]) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CSV not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0]) if rows else set()
    missing = required - header
    if missing:
        raise DatasetFormatError(f"{path}: missing columns {sorted(missing)}")
    return rows


LABEL_WORDS = {"true": 1, "1": 1, "yes": 1, "amf": 1, "atypical": 1,
               "false": 0, "0": 0, "no": 0, "nmf": 0, "normal": 0}


def parse_label(value: str) -> int:
    """1 = atypical (true/1/yes/AMF/atypical), 0 = normal (false/0/no/NMF/normal); else ValueError."""
    try:
        return LABEL_WORDS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"label {value!r} is not atypical/normal (or AMF/NMF, 1/0, true/false)") from None


def _parse_bool(value: str, path: Path, column: str) -> int:
    try:
        return parse_label(value)
    except ValueError:
        raise DatasetFormatError(f"{path}: cannot read {column}={value!r} as a label") from None


def amibr_domain(dataset: str, slide: str) -> str:
    """MIDOG21 slide 001-050 Hamamatsu XR, 051-100 Hamamatsu S360, 101-150 Aperio CS2; TUPAC16 own domain."""
    if dataset == "TUPAC16":
        return "TUPAC16"
    if dataset == "MIDOG21":
        m = re.match(r"(\d+)", Path(slide).name)
        if not m:
            raise DatasetFormatError(f"MIDOG21 slide {slide!r} has no number")
        n = int(m.group(1))
        if 1 <= n <= 50:
            return "MIDOG21-XR"
        if 51 <= n <= 100:
            return "MIDOG21-S360"
        if 101 <= n <= 150:
            return "MIDOG21-CS2"
        raise DatasetFormatError(f"MIDOG21 slide number {n} outside 1-150")
    return dataset


AMIBR_VOTES = ("expert1_atypical", "expert2_atypical", "expert3_atypical")
AMIBR_SUBTYPES = ("expert1_label", "expert2_label")


def load_amibr(root: str | Path) -> list[Record]:
    """AMi-Br: ``AMI-BR.csv`` + ``patches/{atypical,normal}/{dataset}_{uid}.png``; label = majority_atypical.

    Where the CSV has them (the published AMi-Br does), each record also carries the three experts' votes
    (``votes``: the share calling it atypical) and the two experts' subtypes; a CSV without those columns
    loads with ``votes`` None and no subtypes. A row whose votes contradict its majority label is refused.
    """
    root = Path(root)
    csv_path = root / "AMI-BR.csv"
    rows = _read_csv(csv_path, {"slide", "dataset", "uid", "majority_atypical"})
    has_votes = bool(rows) and all(c in rows[0] for c in AMIBR_VOTES)
    has_subtypes = bool(rows) and all(c in rows[0] for c in AMIBR_SUBTYPES)
    records = []
    for row in rows:
        label = _parse_bool(row["majority_atypical"], csv_path, "majority_atypical")
        folder = "atypical" if label else "normal"
        path = root / "patches" / folder / f"{row['dataset']}_{row['uid']}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: patch listed in {csv_path} not found")
        votes = None
        if has_votes:
            votes = sum(_parse_bool(row[c], csv_path, c) for c in AMIBR_VOTES) / len(AMIBR_VOTES)
            if (votes > 0.5) != bool(label):
                n = len(AMIBR_VOTES)
                raise DatasetFormatError(f"{csv_path}: uid {row['uid']}: majority_atypical="
                                         f"{row['majority_atypical']!r} but {votes * n:.0f} of {n} experts voted "
                                         f"atypical")
        subtypes = tuple(parse_subtype(row[c], csv_path, c) for c in AMIBR_SUBTYPES) if has_subtypes else ()
        records.append(Record(str(path), label, amibr_domain(row["dataset"], row["slide"]),
                              f"{row['dataset']}/{row['slide']}", votes, subtypes))
    return records


MIDOG25_CSV = "MIDOG25_Atypical_Classification_Train_Set.csv"
MIDOG25_IMAGES = "MIDOG25_Binary_Classification_Train_Set"


def load_midog25(root: str | Path) -> list[Record]:
    """MIDOG25 atypical training set: domain = (Scanner, Origin, Species, Tumor); group = filename."""
    root = Path(root)
    csv_path = root / MIDOG25_CSV
    rows = _read_csv(csv_path, {"image_id", "filename", "Tumor", "Scanner", "Origin", "Species", "majority"})
    records = []
    for row in rows:
        majority = row["majority"].strip().upper()
        if majority not in ("AMF", "NMF"):
            raise DatasetFormatError(f"{csv_path}: majority={row['majority']!r} is not AMF or NMF")
        path = root / MIDOG25_IMAGES / row["image_id"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image listed in {csv_path} not found")
        domain = "|".join(row[k].strip() for k in ("Scanner", "Origin", "Species", "Tumor"))
        records.append(Record(str(path), int(majority == "AMF"), domain, row["filename"]))
    return records


def load_omg_octo(csv_path: str | Path, image_column: str = "image", label_column: str = "label",
                  group_column: str | None = None, domain: str = "OMG-Octo") -> list[Record]:
    """OMG-Octo atypical (or any CSV of image path + label): one domain; relative paths are from the CSV."""
    csv_path = Path(csv_path)
    required = {image_column, label_column} | ({group_column} if group_column else set())
    rows = _read_csv(csv_path, required)
    records = []
    for row in rows:
        path = Path(row[image_column])
        if not path.is_absolute():
            path = csv_path.parent / path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image listed in {csv_path} not found")
        label = _parse_bool(row[label_column], csv_path, label_column)
        group = row[group_column] if group_column else path.stem
        records.append(Record(str(path), label, domain, f"{domain}/{group}"))
    return records


LOADERS = {"amibr": load_amibr, "midog25": load_midog25, "omg-octo": load_omg_octo}


def load_datasets(specs: list[str]) -> list[Record]:
    """Load and concatenate ``name=path`` specs (e.g. ``amibr=../shared/data/ami-br``)."""
    records: list[Record] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in LOADERS:
            raise ValueError(f"dataset spec {spec!r}: expected NAME=PATH with NAME in {sorted(LOADERS)}")
        loaded = LOADERS[name](path)
        if len(specs) > 1:  # keep domains of different datasets distinct
            loaded = [replace(r, domain=f"{name}:{r.domain}", group=f"{name}:{r.group}") for r in loaded]
        records.extend(loaded)
    if not records:
        raise ValueError(f"no records in {specs}")
    return records


def read_image(path: str) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I;16B", "I;16L"):
            im = im.convert("RGB")
        return np.array(im)


def vote_targets(records: list[Record]) -> torch.Tensor:
    """The soft atypical target of each figure: the share of experts who called it atypical (``votes``);
    the majority label itself (0 or 1) where a dataset has no votes."""
    return torch.tensor([r.label if r.votes is None else r.votes for r in records], dtype=torch.float32)


def subtype_targets(records: list[Record]) -> torch.Tensor:
    """(N, len(SUBTYPES)): each figure's distribution over the subtypes its experts named (two experts
    naming two subtypes: 1/2 each); a row of zeros where a dataset names none (no subtype loss there)."""
    targets = torch.zeros(len(records), len(SUBTYPES))
    for i, r in enumerate(records):
        for name in r.subtypes:
            targets[i, SUBTYPES.index(name)] += 1.0 / len(r.subtypes)
    return targets


TARGETS = ("majority", "votes")


class FigureDataset(Dataset):
    """Records -> (uint8 image (3, S, S), target, domain index[, subtype distribution]). Images are decoded
    once and cached.

    ``labels`` is always the majority label (every metric and threshold uses it); the training target is
    the same with ``targets="majority"``, the experts' vote share with ``"votes"`` (``vote_targets``).
    ``subtypes=True`` adds each figure's subtype distribution (``subtype_targets``) to every item.
    """

    def __init__(self, records: list[Record], domains: list[str], input_size: int, transform=None,
                 targets: str = "majority", subtypes: bool = False):
        if targets not in TARGETS:
            raise ValueError(f"targets={targets!r}: expected one of {TARGETS}")
        self.records = records
        self.domain_index = {d: i for i, d in enumerate(domains)}
        self.input_size = input_size
        self.transform = transform
        self.images = torch.stack([page_to_tensor(read_image(r.path), input_size) for r in records])
        self.labels = torch.tensor([r.label for r in records], dtype=torch.float32)
        self.targets = vote_targets(records) if targets == "votes" else self.labels
        self.subtypes = subtype_targets(records) if subtypes else None
        self.domains = torch.tensor([self.domain_index[r.domain] for r in records], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        if self.subtypes is not None:
            return image, self.targets[i], self.domains[i], self.subtypes[i]
        return image, self.targets[i], self.domains[i]
