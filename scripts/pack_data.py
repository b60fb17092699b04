"""Pack an image-folder dataset losslessly into a few parts small enough to travel, and unpack it.

    python scripts/pack_data.py pack ../shared/data/ami-br .data/pack --parts 2
    python scripts/pack_data.py unpack .data/pack/part1.zip .data/pack/part2.zip --out .data/ami-br

Why: a GPU machine reached over a size-limited transfer (64 MiB per call here) cannot take the
AMi-Br PNGs (90 MB) in one go. Every PNG is re-encoded as lossless WebP (about 0.8x the PNG
bytes), stored uncompressed in zip parts balanced by size (a zip entry costs ~100 bytes of
headers where a tar member costs ~770), and each part carries a manifest of SHA-256 digests of
the decoded pixels, which ``unpack`` checks before it writes the PNG back. Non-image files
(the CSV) travel as they are in part 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def pixel_digest(image: Image.Image) -> str:
    array = np.asarray(image)
    return hashlib.sha256(f"{image.mode}{array.shape}".encode() + array.tobytes()).hexdigest()


def encode(path: Path) -> tuple[bytes, str]:
    with Image.open(path) as im:
        im.load()
        buf = io.BytesIO()
        im.save(buf, format="WEBP", lossless=True, quality=100, method=4, exact=True)
        data = buf.getvalue()
        digest = pixel_digest(im)
    with Image.open(io.BytesIO(data)) as back:
        if pixel_digest(back.convert(im.mode)) != digest:
            raise ValueError(f"{path}: WebP round trip is not lossless")
    return data, digest


def add_bytes(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    archive.writestr(zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0)), data, compress_type=zipfile.ZIP_STORED)


def pack(src: Path, out: Path, parts: int, workers: int) -> None:
    images = sorted(p for p in src.rglob("*.png"))
    others = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() != ".png")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            encoded = list(pool.map(encode, images, chunksize=32))
    else:
        encoded = [encode(p) for p in images]
    bins: list[list[int]] = [[] for _ in range(parts)]
    sizes = [0] * parts
    for i in sorted(range(len(images)), key=lambda i: -len(encoded[i][0])):  # largest first, smallest bin
        b = sizes.index(min(sizes))
        bins[b].append(i)
        sizes[b] += len(encoded[i][0])
    out.mkdir(parents=True, exist_ok=True)
    for b, members in enumerate(bins):
        manifest = {}
        with zipfile.ZipFile(out / f"part{b + 1}.zip", "w") as archive:
            if b == 0:
                for p in others:
                    add_bytes(archive, p.relative_to(src).as_posix(), p.read_bytes())
            for i in members:
                rel = images[i].relative_to(src).with_suffix(".webp").as_posix()
                add_bytes(archive, rel, encoded[i][0])
                manifest[images[i].relative_to(src).as_posix()] = encoded[i][1]
            add_bytes(archive, f"manifest-part{b + 1}.json", json.dumps(manifest, indent=0).encode())
        size = (out / f"part{b + 1}.zip").stat().st_size
        print(f"{out / f'part{b + 1}.zip'}: {len(members)} images, {size / 2**20:.2f} MiB")
    png = sum(p.stat().st_size for p in images)
    print(f"{len(images)} images: PNG {png / 2**20:.2f} MiB -> WebP {sum(sizes) / 2**20:.2f} MiB")


def unpack(parts: list[Path], out: Path) -> None:
    n = 0
    for part_path in parts:
        with zipfile.ZipFile(part_path) as archive:
            members = {m.filename: m for m in archive.infolist() if not m.is_dir()}
            manifests = [name for name in members if name.startswith("manifest-part")]
            if len(manifests) != 1:
                raise SystemExit(f"{part_path}: expected one manifest, found {manifests}")
            manifest = json.loads(archive.read(members[manifests[0]]))
            for name, member in members.items():
                if name in manifests:
                    continue
                if ".." in Path(name).parts or name.startswith("/"):
                    raise SystemExit(f"{part_path}: unsafe member name {name!r}")
                data = archive.read(member)
                if name.endswith(".webp"):
                    png_name = name[:-len(".webp")] + ".png"
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                        if pixel_digest(im) != manifest.get(png_name):
                            raise SystemExit(f"{part_path}: {name} does not decode to the packed pixels")
                        target = out / png_name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        im.save(target, format="PNG", compress_level=1)
                    n += 1
                else:
                    target = out / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
            missing = [k for k in manifest if not (out / k).is_file()]
            if missing:
                raise SystemExit(f"{part_path}: {len(missing)} images of the manifest not written, e.g. {missing[0]}")
    print(f"unpacked {n} images into {out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("src", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--parts", type=int, default=2)
    a.add_argument("--workers", type=int, default=2)
    b = sub.add_parser("unpack")
    b.add_argument("parts", type=Path, nargs="+")
    b.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.src, args.out, args.parts, args.workers)
    else:
        unpack(args.parts, args.out)


if __name__ == "__main__":
    sys.exit(main())
