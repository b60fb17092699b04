"""The real image: build it and run it as the organisers do (test.sh), and show that test.sh fails
when the Dockerfile is broken, the way grand-challenge-forge tests its templates.

Needs a container engine (docker, or podman with the base image of scripts/base-image.sh; `.ci/run`
sets both up). Without one these tests skip on a developer machine and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def _engine() -> str:
    probe = 'source scripts/engine.sh; if [ "$ENGINE" = podman ] && ! image_exists "$LOCAL_BASE_IMAGE"; ' \
            'then echo podman-without-base; else echo "$ENGINE"; fi'
    return subprocess.run(["bash", "-c", probe], cwd=ROOT, capture_output=True, text=True).stdout.strip()


pytestmark = [pytest.mark.slow]  # builds and runs container images (minutes each)
ENGINE = _engine()
if ENGINE in ("", "podman-without-base"):
    why = ("no container engine here" if not ENGINE else
           "podman without the local base image") + "; run scripts/base-image.sh (Debian, root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must build and run the real image: {why}", pytrace=False)
    pytestmark.append(pytest.mark.skip(reason=why))

# What test.sh needs to build and run the image, copied into a scratch checkout for the broken variants.
CHECKOUT_FILES = ["Dockerfile", ".dockerignore", "build.sh", "test.sh", "process.py", "requirements.txt",
                  "requirements-dev.txt", "pyproject.toml", "scripts", "model", "weights", "test"]


def run_test_sh(cwd, image_tag):
    env = {**os.environ, "IMAGE_TAG": image_tag, "VENV": str(ROOT / ".venv")}
    env.pop("MIDOG_NO_CONTAINER", None)
    return subprocess.run(["bash", "test.sh"], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


def test_the_image_passes_test_sh():
    done = run_test_sh(ROOT, "midog25-t2-mix-align-distil")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "test.sh: the image passed" in done.stdout
    assert log.count("matches test/expected_output.json") == 2  # baked-in weights, then /opt/ml/model
    assert "weights /opt/ml/model " in log and "image check: FAIL" not in log
    # The log's first line names torch and its CUDA build: a CUDA 12 build runs on the platform's drivers.
    pin = next(line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines()
               if line.startswith("torch=="))
    first_line = rf"^runtime: torch {re.escape(pin)}\+cu12\d \(CUDA build 12\.\d+\), device cpu"
    assert re.search(first_line, log, re.M), log[:2000]
    assert re.search(r"image check: ok +torch \S+ is a CUDA 12 build with T4 \(sm_75\) kernels", log), log[-3000:]


BROKEN = {
    # (what is changed in the Dockerfile, replacement, what test.sh must then say)
    "weights not copied": ("COPY weights /opt/app/weights\n", "", "error: "),
    "model package not copied": ("COPY model /opt/app/model\n", "", "ModuleNotFoundError"),
    "runs as root": ("USER user\n", "", "image check: FAIL runs as a non-root user"),
    "app files writable by the user": ("USER user\n", "RUN chown -R user /opt/app\nUSER user\n",
                                       "image check: FAIL cannot write anywhere else"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_test_sh_fails_on_a_broken_dockerfile(tmp_path, name):
    old, new, expected_message = BROKEN[name]
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for item in CHECKOUT_FILES:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, checkout / item, ignore=shutil.ignore_patterns("__pycache__", "*.png"))
        else:
            shutil.copy2(src, checkout / item)
    dockerfile = checkout / "Dockerfile"
    text = dockerfile.read_text()
    assert old in text, f"the Dockerfile changed: update BROKEN[{name!r}]"
    dockerfile.write_text(text.replace(old, new))
    tag = "midog25-t2-broken-" + name.replace(" ", "-")
    try:
        done = run_test_sh(checkout, tag)
    finally:
        subprocess.run([ENGINE, "rmi", "-f", tag], capture_output=True)
    log = done.stdout + done.stderr
    assert done.returncode != 0, f"test.sh passed an image with {name}:\n{log[-3000:]}"
    assert expected_message in log, log[-3000:]
    assert "test.sh: the image passed" not in done.stdout
