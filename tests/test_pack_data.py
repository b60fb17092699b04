"""scripts/pack_data.py: lossless WebP parts that unpack to the same pixels, and refuse tampering."""

import importlib.util
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, synthetic_pages

spec = importlib.util.spec_from_file_location("pack_data", ROOT / "scripts" / "pack_data.py")
pack_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack_data)


def make_dataset(root, n=10):
    for i, page in enumerate(synthetic_pages(n)):
        folder = root / "patches" / ("atypical" if i % 3 == 0 else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(page).save(folder / f"MIDOG21_{i}.png")
    (root / "AMI-BR.csv").write_text("uid,majority_atypical\n" + "".join(f"{i},{i % 3 == 0}\n" for i in range(n)))


def test_round_trip_is_pixel_exact(tmp_path):
    src, out = tmp_path / "src", tmp_path / "back"
    make_dataset(src)
    pack_data.main(["pack", str(src), str(tmp_path / "pack"), "--parts", "3", "--workers", "1"])
    parts = sorted((tmp_path / "pack").glob("part*.zip"))
    assert len(parts) == 3
    pack_data.main(["unpack", *map(str, parts), "--out", str(out)])
    originals = sorted(src.rglob("*.png"))
    assert len(originals) == 10
    for png in originals:
        back = out / png.relative_to(src)
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(back))), back
    assert (out / "AMI-BR.csv").read_bytes() == (src / "AMI-BR.csv").read_bytes()


def test_unpack_refuses_pixels_that_differ_from_the_manifest(tmp_path):
    src = tmp_path / "src"
    make_dataset(src, n=4)
    pack_data.main(["pack", str(src), str(tmp_path / "pack"), "--parts", "1", "--workers", "1"])
    good = tmp_path / "pack" / "part1.zip"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        names = [n for n in zin.namelist() if n.endswith(".webp")]
        for name in zin.namelist():
            data = zin.read(name)
            if name == names[0]:  # another image's pixels under this name
                data = zin.read(names[1])
            zout.writestr(name, data)
    with pytest.raises(SystemExit, match="does not decode to the packed pixels"):
        pack_data.main(["unpack", str(bad), "--out", str(tmp_path / "back")])
