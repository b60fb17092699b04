import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.datasets import (
    MIDOG25_CSV,
    MIDOG25_IMAGES,
    DatasetFormatError,
    FigureDataset,
    amibr_domain,
    load_amibr,
    load_datasets,
    load_midog25,
    load_omg_octo,
)
from tests.conftest import AMIBR, needs_amibr, synthetic_pages

AMIBR_COLUMNS = ["", "slide", "dataset", "uid", "x", "y", "expert1_label", "expert2_label", "expert1_atypical",
                 "expert2_atypical", "expert3_atypical", "majority_atypical"]


def _write_csv(path: Path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# (slide, dataset, the three experts' atypical votes, the two experts' subtypes), spelt as AMI-BR.csv spells them
AMIBR_FIXTURE = [
    ("002.tiff", "MIDOG21", (True, True, True), ("AMF segregation", "AMF segregation")),
    ("060.tiff", "MIDOG21", (False, False, False), ("NMF prometaphase", "NMF metaphase")),
    ("120.tiff", "MIDOG21", (False, True, False), ("NMF metaphase", "AMF other")),
    ("05_stitched1.tif", "TUPAC16", (False, True, True), ("NMF ring shape", "AMF bipolar assymetric")),
    ("05_stitched1.tif", "TUPAC16", (False, False, False), ("NMF anaphase-telophase", "NMF anaphase-telophase")),
    ("07_stitched1.tif", "TUPAC16", (False, False, False), ("NMF metaphase", "NMF metaphase")),
]


def make_amibr(root: Path, spec=AMIBR_FIXTURE) -> Path:
    pages = synthetic_pages(len(spec))
    rows = []
    for uid, ((slide, dataset, votes, subtypes), page) in enumerate(zip(spec, pages)):
        atypical = sum(votes) >= 2
        folder = root / "patches" / ("atypical" if atypical else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(page).save(folder / f"{dataset}_{uid}.png")
        rows.append([uid, slide, dataset, uid, 10, 20, *subtypes, *votes, atypical])
    _write_csv(root / "AMI-BR.csv", AMIBR_COLUMNS, rows)
    return root


def test_amibr_loader_on_fixture_with_the_real_columns(tmp_path):
    records = load_amibr(make_amibr(tmp_path))
    assert [r.label for r in records] == [1, 0, 0, 1, 0, 0]
    assert [r.domain for r in records] == ["MIDOG21-XR", "MIDOG21-S360", "MIDOG21-CS2", "TUPAC16", "TUPAC16",
                                           "TUPAC16"]
    assert records[3].group == records[4].group != records[5].group
    assert [r.votes for r in records] == [1.0, 0.0, 1 / 3, 2 / 3, 0.0, 0.0]
    assert records[3].subtypes == ("NMF ring shape", "AMF bipolar asymmetric")  # the CSV's spelling mended


def test_amibr_missing_patch_names_the_file(tmp_path):
    root = make_amibr(tmp_path)
    next((root / "patches" / "normal").glob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_amibr(root)


@needs_amibr
def test_amibr_loader_on_real_data_counts():
    records = load_amibr(AMIBR)
    assert len(records) == 2894 and sum(r.label for r in records) == 648
    by_domain = {}
    for r in records:
        by_domain.setdefault(r.domain, [0, 0])[r.label] += 1
    assert by_domain == {"MIDOG21-XR": [279, 79], "MIDOG21-S360": [328, 97], "MIDOG21-CS2": [378, 131],
                         "TUPAC16": [1261, 341]}
    assert len({r.group for r in records}) == 146


@pytest.mark.parametrize("slide,domain", [("001.tiff", "MIDOG21-XR"), ("050.tiff", "MIDOG21-XR"),
                                          ("051.tiff", "MIDOG21-S360"), ("150.tiff", "MIDOG21-CS2")])
def test_amibr_scanner_from_slide_number(slide, domain):
    assert amibr_domain("MIDOG21", slide) == domain
    with pytest.raises(DatasetFormatError):
        amibr_domain("MIDOG21", "151.tiff")


def test_midog25_loader_fixture(tmp_path):
    images = tmp_path / MIDOG25_IMAGES
    images.mkdir()
    header = ["image_id", "filename", "coordinateX", "coordinateY", "Tumor", "Scanner", "Origin", "Species",
              "expert1", "expert2", "expert3", "majority"]
    rows = []
    for i, page in enumerate(synthetic_pages(4)):
        Image.fromarray(page).save(images / f"{i}.png")
        scanner = "Aperio" if i < 2 else "3DHistech"
        rows.append([f"{i}.png", f"wsi_{i // 2}.tiff", 5, 5, "lymphoma", scanner, "UMC", "canine",
                     "AMF", "NMF", "AMF", "AMF" if i % 2 else "NMF"])
    _write_csv(tmp_path / MIDOG25_CSV, header, rows)
    records = load_midog25(tmp_path)
    assert [r.label for r in records] == [0, 1, 0, 1]
    assert records[0].domain == "Aperio|UMC|canine|lymphoma" != records[2].domain
    assert records[0].group == records[1].group == "wsi_0.tiff"
    rows[0][-1] = "maybe"
    _write_csv(tmp_path / MIDOG25_CSV, header, rows)
    with pytest.raises(DatasetFormatError, match="AMF or NMF"):
        load_midog25(tmp_path)


def test_omg_octo_loader_fixture_and_combination(tmp_path):
    octo = tmp_path / "octo"
    octo.mkdir()
    for i, page in enumerate(synthetic_pages(3)):
        Image.fromarray(page).save(octo / f"f{i}.png")
    _write_csv(octo / "labels.csv", ["image", "label"], [["f0.png", "AMF"], ["f1.png", "NMF"], ["f2.png", "1"]])
    records = load_omg_octo(octo / "labels.csv")
    assert [r.label for r in records] == [1, 0, 1] and {r.domain for r in records} == {"OMG-Octo"}
    amibr = make_amibr(tmp_path / "amibr")
    both = load_datasets([f"amibr={amibr}", f"omg-octo={octo / 'labels.csv'}"])
    assert len(both) == 9
    assert {r.domain for r in both} >= {"amibr:TUPAC16", "omg-octo:OMG-Octo"}
    with pytest.raises(ValueError, match="NAME=PATH"):
        load_datasets(["nope=/x"])
    _write_csv(octo / "bad.csv", ["file", "label"], [["f0.png", "1"]])
    with pytest.raises(DatasetFormatError, match="missing columns"):
        load_omg_octo(octo / "bad.csv")


def test_figure_dataset_tensors(tmp_path):
    records = load_amibr(make_amibr(tmp_path))
    domains = sorted({r.domain for r in records})
    ds = FigureDataset(records, domains, input_size=64)
    image, label, domain = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype.is_floating_point is False
    assert label.item() == 1.0 and domains[domain] == "MIDOG21-XR"
    assert np.isclose(ds.labels.mean().item(), 2 / 6)
