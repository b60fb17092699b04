"""The container's job (process.py) and the batch predictor, end to end on real or generated stacks."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch
from sklearn.metrics import roc_auc_score

import process
from model.predict import NonFiniteOutputError, Predictor, format_predictions, p_atypical
from model.predict import main as predict_main
from tests.conftest import ROOT, SAMPLE_STACK, labelled_pages, real_or_synthetic_pages, synthetic_pages
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


def distinct_pages(n: int, size: int = 64) -> list[np.ndarray]:
    """Pages whose P(atypical) under the untrained fixture network all differ (a colour ramp), so that a
    page-order error (a shift, a chunk written twice) changes the output beyond float32 noise."""
    pages = []
    for i, v in enumerate(np.linspace(0, 255, n)):
        page = np.zeros((size, size, 3), np.uint8)
        page[..., 0], page[..., 1], page[..., 2] = v, 255 - v, (i * 37) % 256
        pages.append(page)
    return pages


def test_200_pages_in_bounded_chunks(tmp_path, untrained_weights):
    pages = distinct_pages(200)
    inp, out = make_job(tmp_path, pages=pages)
    assert run_process(inp, out, untrained_weights, "--no-amp") == 0
    result = assert_valid_output(out / OUT_NAME, 200, 0.5)
    # Chunking (64 pages at a time) must not change the answer or the order: the stack in one
    # forward pass gives every page the same P(atypical), in float32 to 1e-5.
    whole = Predictor(untrained_weights, "cpu", amp=False, chunk_size=256).predict_pages(pages)
    assert np.abs(np.diff(whole)).min() > 1e-4, "fixture pages must be distinguishable for this test"
    np.testing.assert_allclose([p_atypical(r) for r in result], whole, atol=1e-5, rtol=0)


def test_page_order_check_sees_a_one_page_shift(untrained_weights):
    """The check above fails when pages come back shifted by one (as a chunk off-by-one would do)."""
    pages = distinct_pages(200)
    whole = Predictor(untrained_weights, "cpu", amp=False, chunk_size=256).predict_pages(pages)
    shifted = np.concatenate([whole[:64], whole[65:], whole[-1:]])
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(shifted, whole, atol=1e-5, rtol=0)


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


def test_confidence_is_p_atypical_for_every_page():
    """confidence = P(atypical) whatever the class (the official evaluator since 2025-07-27)."""
    probs = [0.0, 0.2, 0.39, 0.4, 0.8, 1.0]
    out = format_predictions(probs, threshold=0.4)
    assert [e["class"] for e in out] == ["normal", "normal", "normal", "atypical", "atypical", "atypical"]
    assert [e["confidence"] for e in out] == pytest.approx(probs)
    assert all(type(e["confidence"]) is float for e in out)
    with pytest.raises(NonFiniteOutputError):
        format_predictions([0.3, float("nan")], threshold=0.4)


def official_auc(labels, results) -> float:
    """ROC AUC exactly as the official evaluator computes it from a written output file."""
    return roc_auc_score(labels, [r["confidence"] for r in results])


def test_leaderboard_auc_from_the_written_json_equals_the_models_auc(tmp_path, shipped_weights):
    """Real AMi-Br figures (or generated ones) packed as a stack, through process.py with the shipped
    weights: the AUC the official evaluator computes from ``confidence`` alone equals the AUC of the
    network's P(atypical). The pre-2025-07-27 convention (1 - P for 'normal') fails this."""
    pages, labels = labelled_pages(16)
    inp, out = make_job(tmp_path, pages=pages)
    assert run_process(inp, out, shipped_weights) == 0
    results = json.loads((out / OUT_NAME).read_text())
    probs = Predictor(shipped_weights, "cpu").predict_pages(pages)
    assert official_auc(labels, results) == pytest.approx(roc_auc_score(labels, probs), abs=1e-9)
    np.testing.assert_allclose([r["confidence"] for r in results], probs, atol=1e-12, rtol=0)
    card = json.loads((shipped_weights / "model_card.json").read_text())
    assert any(r["class"] == "normal" for r in results)  # else the conventions would not differ here
    legacy = [{"class": r["class"], "confidence": r["confidence"] if r["class"] == "atypical"
               else 1 - r["confidence"]} for r in results]
    assert [r["class"] == "atypical" for r in results] == [p >= card["threshold"] for p in probs]
    assert official_auc(labels, legacy) != pytest.approx(roc_auc_score(labels, probs), abs=1e-3)


def test_the_two_conventions_disagree_on_a_hand_made_output():
    """Hand-made: 2 atypical and 2 normal figures, ranked perfectly by P(atypical). Written as
    P(atypical) the official AUC is 1; written as confidence in the stated class it drops to 0.25."""
    labels = [1, 1, 0, 0]
    probs = [0.9, 0.45, 0.3, 0.05]
    right = format_predictions(probs, threshold=0.5)
    assert [r["class"] for r in right] == ["atypical", "normal", "normal", "normal"]
    assert official_auc(labels, right) == 1.0
    legacy = [{"class": "atypical", "confidence": 0.9}, {"class": "normal", "confidence": 0.55},
              {"class": "normal", "confidence": 0.7}, {"class": "normal", "confidence": 0.95}]
    assert official_auc(labels, legacy) == 0.25


class NaNAfter(torch.nn.Module):
    """Wraps a network; its output is NaN while ``poison`` is True (e.g. a float16 overflow)."""

    def __init__(self, model, poison_under_autocast_only: bool):
        super().__init__()
        self.model, self.only_autocast = model, poison_under_autocast_only
        self.config = model.config

    def forward(self, x):
        z = self.model(x)
        if not self.only_autocast or torch.is_autocast_enabled(x.device.type):
            z = z + float("nan")
        return z


def test_non_finite_output_under_autocast_falls_back_to_float32(untrained_weights, capsys):
    predictor = Predictor(untrained_weights, "cpu")
    predictor.amp_dtype = torch.bfloat16
    reference = Predictor(untrained_weights, "cpu", amp=False).predict_pages(synthetic_pages(3))
    predictor.model = NaNAfter(predictor.model, poison_under_autocast_only=True)
    probs = predictor.predict_pages(synthetic_pages(3))
    assert np.isfinite(probs).all() and predictor.fp32_fallbacks == 1
    np.testing.assert_allclose(probs, reference, atol=1e-6)
    assert "recomputed in float32" in capsys.readouterr().err


def test_non_finite_output_in_float32_fails_and_writes_nothing(tmp_path, monkeypatch, untrained_weights, capsys):
    real_init = Predictor.__init__

    def poisoned_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.model = NaNAfter(self.model, poison_under_autocast_only=False)

    monkeypatch.setattr(Predictor, "__init__", poisoned_init)
    inp, out = make_job(tmp_path, pages=synthetic_pages(3))
    assert run_process(inp, out, untrained_weights) == 1
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # after the fallback warning where autocast is on
    assert last.startswith("error: ") and "not finite" in last and "float32" in last, err
    assert not (out / OUT_NAME).exists()


def test_log_names_torch_cuda_build_device_and_precision(tmp_path, untrained_weights, capsys):
    inp, out = make_job(tmp_path, pages=synthetic_pages(2))
    assert run_process(inp, out, untrained_weights, "--device", "cpu") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"runtime: torch {torch.__version__} (")
    assert "device cpu" in first and "autocast" in first
    if torch.version.cuda:
        assert f"CUDA build {torch.version.cuda}" in first


def test_log_says_why_cuda_is_unusable_and_runs_on_the_cpu(tmp_path, monkeypatch, untrained_weights, capsys):
    """A GPU with a driver too old for torch's CUDA build: the log says so, the run goes on on the CPU."""
    import warnings

    from model import runtime

    def too_old():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).",
                      stacklevel=2)
        return False

    driver_file = tmp_path / "nvidia-version"
    driver_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 2024\n")
    monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", driver_file)
    monkeypatch.setattr(runtime.nvidia_driver_version, "__defaults__", (driver_file,))
    monkeypatch.setattr(torch.cuda, "is_available", too_old)
    runtime.cuda_status.cache_clear()
    try:
        inp, out = make_job(tmp_path, pages=synthetic_pages(2))
        assert run_process(inp, out, untrained_weights) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert "device cpu (CUDA unusable:" in first and "470.256.02" in first and "too old" in first, first
        assert_valid_output(out / OUT_NAME, 2, 0.5)
        assert run_process(inp, tmp_path / "out2", untrained_weights, "--device", "cuda") == 1
        assert "CUDA is not usable here" in capsys.readouterr().err
    finally:
        runtime.cuda_status.cache_clear()


def test_the_pinned_torch_is_a_cuda_12_build_with_t4_kernels():
    """Grand Challenge runs on T4 GPUs (sm_75) with drivers documented up to R550: a CUDA 13 build
    (driver R580+) would fall back to the CPU there. The venv's torch is the image's torch."""
    pinned = next(line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith("torch=="))
    assert torch.__version__.split("+")[0] == pinned
    assert torch.version.cuda is not None and torch.version.cuda.startswith("12."), torch.version.cuda
    assert "sm_75" in torch._C._cuda_getArchFlags().split()


def test_arch_support_rule():
    from model.runtime import arch_supported

    assert arch_supported((7, 5), ["sm_70", "sm_75", "sm_80"])
    assert arch_supported((8, 9), ["sm_80", "sm_86"])  # same major, newer minor runs the sm_86 cubin
    assert not arch_supported((7, 5), ["sm_80", "sm_90"])
    assert arch_supported((7, 5), ["sm_80", "compute_70"])  # PTX is compiled for newer GPUs
    assert not arch_supported((6, 1), ["sm_70", "compute_70"])


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", None),
                                         ("ALL", None), ("", None)])
def test_a_onednn_isa_cap_below_bf16_turns_bf16_autocast_off(monkeypatch, cap, native):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN run as on a CPU without bf16 instructions (docs/speed.md's
    fp32 measurements): the CPU's flags no longer count and inference runs in fp32. A cap at or above
    AVX512_CORE_BF16, or none, leaves the decision to the CPU's flags (``None`` here)."""
    from model import runtime

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    runtime.cpu_has_fast_bf16.cache_clear()
    try:
        cpuinfo = Path("/proc/cpuinfo")
        flags = cpuinfo.read_text() if cpuinfo.exists() else ""
        from_flags = "amx_bf16" in flags or "avx512_bf16" in flags
        expected = from_flags if native is None else native
        assert runtime.cpu_has_fast_bf16() is expected
        assert runtime.autocast_dtype(torch.device("cpu")) == (torch.bfloat16 if expected else None)
    finally:
        runtime.cpu_has_fast_bf16.cache_clear()


def test_driver_version_parsing(tmp_path):
    from model.runtime import nvidia_driver_version

    f = tmp_path / "version"
    f.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.183.01  Release Build\n")
    assert nvidia_driver_version(f) == "535.183.01"
    assert nvidia_driver_version(tmp_path / "absent") is None


def test_stack_norm_comes_from_the_card_or_the_caller_and_stays_in_its_stack(tmp_path, untrained_weights):
    """Test-time batch-norm adaptation (experiments §33): off unless the card or the caller asks; an
    infinite prior is no adaptation; the card's prior is used by default; a stack never affects the next."""
    from model.weights import WeightsError, read_card, write_card

    pages, others = distinct_pages(16), synthetic_pages(16, seed=5)
    plain = Predictor(untrained_weights, "cpu", amp=False).predict_pages(pages)
    assert Predictor(untrained_weights, "cpu", amp=False).stack_norm is None
    np.testing.assert_allclose(Predictor(untrained_weights, "cpu", amp=False, stack_norm=float("inf"))
                               .predict_pages(pages), plain, atol=1e-5, rtol=0)
    adapted = Predictor(untrained_weights, "cpu", amp=False, stack_norm=16).predict_pages(pages)
    assert np.abs(adapted - plain).max() > 1e-3
    weights = tmp_path / "weights"
    shutil.copytree(untrained_weights, weights)
    write_card(read_card(weights) | {"stack_norm": {"prior": 16}}, weights)
    predictor = Predictor(weights, "cpu", amp=False)
    assert predictor.stack_norm == 16.0 and "adaptation (prior 16, all layers)" in predictor.describe()
    np.testing.assert_allclose(predictor.predict_pages(pages), adapted, atol=1e-6, rtol=0)
    predictor.predict_pages(others)
    np.testing.assert_allclose(predictor.predict_pages(pages), adapted, atol=1e-6, rtol=0)
    np.testing.assert_allclose(Predictor(weights, "cpu", amp=False, stack_norm=None).predict_pages(pages), plain,
                               atol=1e-6, rtol=0)
    with pytest.raises(WeightsError, match="single view"):
        Predictor(weights, "cpu", tta="dihedral")
    with pytest.raises(WeightsError, match="must be >= 0"):
        Predictor(weights, "cpu", stack_norm=-1)
    with pytest.raises(WeightsError, match="scope 'late'"):
        Predictor(weights, "cpu", stack_norm=16, stack_scope="late")
    write_card(read_card(weights) | {"stack_norm": {"prior": 16, "scope": "early"}}, weights)
    early = Predictor(weights, "cpu", amp=False)
    assert early.stack_scope == "early" and "early layers" in early.describe()
    by_caller = Predictor(untrained_weights, "cpu", amp=False, stack_norm=16, stack_scope="early")
    np.testing.assert_allclose(early.predict_pages(pages), by_caller.predict_pages(pages), atol=1e-6, rtol=0)
