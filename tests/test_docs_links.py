"""Every relative link in the Markdown documentation points at a file that exists and, where it names a
heading (``file.md#anchor``), at a heading of that file, with GitHub's anchors. Sections move between
README, docs/ and records/ as weights are replaced; a stale link is found here rather than by a reader."""

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "records").glob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: Markdown link and code marks dropped, lower case, every character that
    is not a letter, digit, space, hyphen or underscore removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def markdown_lines(path: Path):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in markdown_lines(path):
        match = HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            out.add(anchor if count == 0 else f"{anchor}-{count}")  # repeated headings get -1, -2, ...
            seen[anchor] = count + 1
    return out


def test_github_anchors_are_made_as_github_makes_them():
    assert github_anchor("4. Results") == "4-results"
    assert github_anchor("ERM + curriculum, three seeds (shipped 2026-12-04 18:25 to 2026-12-06 (commit 8d4311f))") \
        == "erm--curriculum-three-seeds-shipped-2026-12-04-1825-to-2026-12-06-commit-8d4311f"
    assert github_anchor("The weights shipped 2026-12-04 to 2026-12-06: `--teachers-only`") \
        == "the-weights-shipped-2026-12-04-to-2026-12-06---teachers-only"
    assert github_anchor("Inference speed (`python benchmarks/inference.py`)") \
        == "inference-speed-python-benchmarksinferencepy"


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_and_anchors_resolve(doc):
    broken = []
    for number, line in markdown_lines(doc):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                broken.append(f"{doc.name}:{number}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{doc.name}:{number}: {target} (no such heading in {dest.name})")
    assert not broken, "\n".join(broken)
