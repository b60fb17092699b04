"""The container's job (process.py) and the batch predictor, end to end on real or generated stacks."""

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

import process
from model.predict import Predictor, format_predictions, p_atypical
from model.predict import main as predict_main
from tests.conftest import ROOT, SAMPLE_STACK, real_or_synthetic_pages, synthetic_pages
from tests.test_readers import write_tiff

SLUG = "stacked-histopathology-roi-cropouts"
OUT_NAME = "multiple-mitotic-figure-classification.json"


def make_job(root, stack_source=None, pages=None, name="stack.tiff", slug=SLUG):
    images = root / "input" / "images" / slug
    images.mkdir(parents=True)
    if stack_source is not None:
        shutil.copy(stack_source, images / name)
    elif pages is not None:
        write_tiff(images / name, pages)
    inputs = [{"interface": {"slug": slug, "kind": "Image", "super_kind": "Image",
                             "relative_path": f"images/{slug}"}, "image": {"name": name}}]
    (root / "input" / "inputs.json").write_text(json.dumps(inputs))
    return root / "input", root / "output"


def run_process(inp, out, weights, *extra):
    return process.main(["--input", str(inp), "--output", str(out), "--weights", str(weights), *extra])


def assert_valid_output(path, n_pages, threshold):
    result = json.loads(path.read_text())
    assert isinstance(result, list) and len(result) == n_pages
    for entry in result:
        assert set(entry) == {"class", "confidence"}
        assert type(entry["confidence"]) is float and 0.0 <= entry["confidence"] <= 1.0
        assert entry["class"] == ("atypical" if p_atypical(entry) >= threshold else "normal")
    return result


def test_real_stack_with_shipped_weights_in_a_subprocess(tmp_path, shipped_weights):
    """The organisers' stack (or a generated one) through `python process.py`: format, rerun identity, batch parity."""
    source = SAMPLE_STACK if SAMPLE_STACK.is_file() else None
    inp, out = make_job(tmp_path, source, None if source else real_or_synthetic_pages(16), name="stack_5.tiff")
    if SAMPLE_STACK.is_file():
        shutil.copy(SAMPLE_STACK.parent / "inputs.json", inp / "inputs.json")
    cmd = [sys.executable, str(ROOT / "process.py"), "--input", str(inp), "--output", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "weights" in first.stdout and "timings" in first.stdout
    card = json.loads((shipped_weights / "model_card.json").read_text())
    result = assert_valid_output(out / OUT_NAME, 16, card["threshold"])
    bytes_first = (out / OUT_NAME).read_bytes()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0 and (out / OUT_NAME).read_bytes() == bytes_first
    assert predict_main([str(inp / "images" / SLUG), "--out", str(tmp_path / "batch"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "batch" / "stack_5.json").read_text()) == result


@pytest.mark.parametrize("variant", ["mha", "rgba", "uint16", "single", "ragged", "grey"])
def test_stack_variants(tmp_path, untrained_weights, variant):
    pages = synthetic_pages(4)
    name = "stack.tiff"
    images = None
    if variant == "mha":
        name = "stack.mha"
    elif variant == "rgba":
        images = [np.concatenate([p, np.full(p.shape[:2] + (1,), 255, np.uint8)], 2) for p in pages]
    elif variant == "uint16":
        images = [p.astype(np.uint16) * 257 for p in pages]
    elif variant == "single":
        images = pages[:1]
    elif variant == "ragged":
        images = [pages[0], pages[1][:96, :110], np.pad(pages[2], ((0, 40), (0, 0), (0, 0)))]
    elif variant == "grey":
        images = [p[:, :, 1] for p in pages]
    inp, out = make_job(tmp_path, pages=images if variant != "mha" else None, name=name)
    if variant == "mha":
        sitk.WriteImage(sitk.GetImageFromArray(np.stack(pages), isVector=True), str(inp / "images" / SLUG / name))
        images = pages
    assert run_process(inp, out, untrained_weights) == 0
    result = assert_valid_output(out / OUT_NAME, len(images), 0.5)
    if variant in ("rgba", "uint16"):  # same pixels in another container: same answer
        ref_inp, ref_out = make_job(tmp_path / "ref", pages=pages)
        assert run_process(ref_inp, ref_out, untrained_weights) == 0
        ref = json.loads((ref_out / OUT_NAME).read_text())
        assert [r["class"] for r in ref] == [r["class"] for r in result]
        np.testing.assert_allclose([p_atypical(r) for r in ref], [p_atypical(r) for r in result], atol=1e-6)


def test_200_pages_in_bounded_chunks(tmp_path, untrained_weights):
    pages = synthetic_pages(200, size=64)
    inp, out = make_job(tmp_path, pages=pages)
    assert run_process(inp, out, untrained_weights) == 0
    result = assert_valid_output(out / OUT_NAME, 200, 0.5)
    # Chunking must not change the answer: page 150 alone gives the same P(atypical).
    alone = Predictor(untrained_weights).predict_pages(pages[150:151])
    assert p_atypical(result[150]) == pytest.approx(float(alone[0]), abs=1e-3)


def _error_case(tmp_path, case, untrained_weights):
    weights = untrained_weights
    inp, out = make_job(tmp_path, pages=synthetic_pages(2))
    images = inp / "images" / SLUG
    expect = None
    if case == "no inputs.json":
        (inp / "inputs.json").unlink()
        expect = "inputs.json"
    elif case == "bad json":
        (inp / "inputs.json").write_text("{not json")
        expect = "not valid JSON"
    elif case == "unknown interface":
        data = json.loads((inp / "inputs.json").read_text())
        data[0]["interface"]["slug"] = "something-else"
        (inp / "inputs.json").write_text(json.dumps(data))
        expect = "unsupported interface"
    elif case == "no image":
        (images / "stack.tiff").unlink()
        expect = "no .tif/.tiff/.mha image"
    elif case == "several images":
        write_tiff(images / "other.tiff", synthetic_pages(1))
        expect = "several images"
    elif case == "unreadable image":
        (images / "stack.tiff").write_bytes(b"garbage" * 20)
        expect = "cannot read image"
    elif case == "zero pages":
        (images / "stack.tiff").unlink()
        tifffile.imwrite(images / "stack.tiff", np.zeros((0, 8, 8), np.uint8))
        expect = "stack.tiff"
    elif case == "unsupported pixel type":
        (images / "stack.tiff").unlink()
        tifffile.imwrite(images / "stack.tiff", np.zeros((8, 8, 3), np.int16))
        expect = "unsupported pixel type"
    elif case == "missing weights":
        weights = tmp_path / "empty"
        weights.mkdir()
        expect = "model_card.json"
    elif case == "corrupt weights":
        weights = tmp_path / "corrupt"
        shutil.copytree(untrained_weights, weights)
        (weights / "model.safetensors").write_bytes(b"\x00" * 100)
        expect = "model.safetensors"
    return inp, out, weights, expect


ERROR_CASES = ["no inputs.json", "bad json", "unknown interface", "no image", "several images", "unreadable image",
               "zero pages", "unsupported pixel type", "missing weights", "corrupt weights"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_cases_name_the_file_exit_nonzero_and_write_nothing(tmp_path, capsys, untrained_weights, case):
    inp, out, weights, expect = _error_case(tmp_path, case, untrained_weights)
    code = run_process(inp, out, weights)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert expect in err, err
    assert not (out / OUT_NAME).exists()
    assert not out.exists() or not any(out.iterdir())


def test_error_exit_code_from_the_command_line(tmp_path):
    inp = tmp_path / "input"
    inp.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "process.py"), "--input", str(inp), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 1 and "inputs.json: not found" in done.stderr


def test_no_network_access(tmp_path, monkeypatch, untrained_weights):
    """Any socket use during a run fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    inp, out = make_job(tmp_path, pages=synthetic_pages(3))
    assert run_process(inp, out, untrained_weights) == 0


def test_uploaded_model_overrides_baked_in_weights(tmp_path, monkeypatch, untrained_weights, shipped_weights):
    monkeypatch.setattr(process, "GC_MODEL_DIR", untrained_weights)
    assert process.choose_weights(None) == untrained_weights
    monkeypatch.setattr(process, "GC_MODEL_DIR", tmp_path / "absent")
    assert process.choose_weights(None).resolve() == shipped_weights.resolve()


def test_batch_predictor_over_a_folder(tmp_path, untrained_weights):
    folder = tmp_path / "stacks"
    folder.mkdir()
    write_tiff(folder / "a.tiff", synthetic_pages(3))
    write_tiff(folder / "b.tif", synthetic_pages(5, seed=1))
    code = predict_main([str(folder), "--out", str(tmp_path / "out"), "--weights", str(untrained_weights),
                         "--no-progress"])
    assert code == 0
    assert len(json.loads((tmp_path / "out" / "a.json").read_text())) == 3
    assert len(json.loads((tmp_path / "out" / "b.json").read_text())) == 5
    assert predict_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o2"), "--no-progress"]) == 1


@pytest.mark.parametrize("dtype_name", ["bfloat16"])
def test_reduced_precision_parity_with_fp32(shipped_weights, dtype_name):
    """bf16 (CPU) autocast changes P(atypical) by at most 0.02 on real figures."""
    import torch

    pages = real_or_synthetic_pages(16)
    fp32 = Predictor(shipped_weights, "cpu", amp=False)
    low = Predictor(shipped_weights, "cpu")
    low.amp_dtype = getattr(torch, dtype_name)
    diff = np.abs(fp32.predict_pages(pages) - low.predict_pages(pages))
    assert diff.max() <= 0.02, diff.max()


def test_confidence_follows_the_official_evaluator_rule():
    """confidence is in the stated class; the evaluator's rebuild gives back P(atypical) exactly."""
    probs = [0.0, 0.2, 0.39, 0.4, 0.8, 1.0]
    out = format_predictions(probs, threshold=0.4)
    assert [e["class"] for e in out] == ["normal", "normal", "normal", "atypical", "atypical", "atypical"]
    assert [e["confidence"] for e in out] == pytest.approx([1.0, 0.8, 0.61, 0.4, 0.8, 1.0])
    assert [p_atypical(e) for e in out] == pytest.approx(probs)
    assert all(type(e["confidence"]) is float for e in out)
