"""The README's results table says what the committed report says: its unseen-domain columns ("before → now",
the AUC and BA changes with their intervals, and the means in the pooled row) are read from
``records/procedures/report/procedures.json`` (``bash lab/scripts/procedures_lodo.sh runs/procedures report``).
Records replaced by a later training change that report; a README left behind is found here."""

import json

import pytest

from tests.conftest import ROOT

REPORT = ROOT / "records" / "procedures" / "report" / "procedures.json"


def signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def interval(values: list[float]) -> str:
    estimate, low, high = values
    return f"{signed(estimate)} [{signed(low)}, {signed(high)}]"


def readme_rows() -> dict[str, list[str]]:
    """The results table's rows (first cell -> cells), the table found by its header."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| domain |") and "before → now" in line)
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("*")] = cells
    return rows


@pytest.mark.skipif(not REPORT.is_file(), reason="no committed procedures report")
def test_readme_unseen_domain_columns_are_the_reports():
    report = json.loads(REPORT.read_text())
    diffs = report["diffs"]["all-figures vs current"]
    rows = readme_rows()
    for domain, diff in diffs.items():
        cells = rows[domain]
        before = report["by_domain"][domain]["current"]["roc_auc"]
        now = report["by_domain"][domain]["all-figures"]["roc_auc"]
        assert cells[5] == f"{before:.3f} → {now:.3f}", domain
        assert cells[6] == interval(diff["auc"]), domain
        assert cells[7] == interval(diff["ba"]), domain
    checks = report["verdicts"]["all-figures vs current"]["checks"]
    assert rows["pooled"][6] == signed(checks["mean_auc"][0])
    assert rows["pooled"][7] == signed(checks["mean_ba"][0])


@pytest.mark.skipif(not REPORT.is_file(), reason="no committed procedures report")
def test_readme_opening_quotes_the_same_report():
    """The opening's numbers on unseen domains (before the contents) are the shipped procedure's in the report:
    each domain's AUC, and the range of its balanced accuracies at the threshold it ships."""
    report = json.loads(REPORT.read_text())
    shipped = {domain: procs["all-figures"] for domain, procs in report["by_domain"].items()}
    opening = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split("## Contents")[0].split())
    for domain, p in shipped.items():
        assert f"{p['roc_auc']:.3f} on {domain}" in opening, domain
    bas = [p["balanced_accuracy"] for p in shipped.values()]
    assert f"balanced accuracy {min(bas):.3f} to {max(bas):.3f}" in opening
