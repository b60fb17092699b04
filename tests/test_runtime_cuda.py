"""model.runtime on a GPU, on machines without one: the container's first log line and the autocast dtype.

Grand Challenge runs the container on a Tesla T4 (sm_75); CI has no GPU. These tests replace exactly what
model/runtime.py asks torch about (``torch.cuda.is_available``, ``current_device``,
``get_device_capability``, ``get_device_name``, ``get_arch_list``, ``torch.version.cuda``, the NVIDIA
driver file) plus what ``torch.cuda.is_bf16_supported`` asks in turn (``get_device_properties`` and its
bf16 tensor probe, which succeeds on any CUDA GPU, a T4 included), so that the CUDA branches run on a CPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import process
from model import runtime
from tests.conftest import ROOT

TORCH = "2.10.0+cu128"
# torch.cuda.get_arch_list() of the pinned cu128 wheel (docs/container.md §4).
CU128_ARCHS = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
T4_LINE = ("runtime: torch 2.10.0+cu128 (CUDA build 12.8), device cuda:0 (Tesla T4, sm_75, driver 535.183.01), "
           "autocast float16")
DRIVER_535 = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.183.01  Release Build\n"
DRIVER_470 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 2024\n"


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """``machine(gpu=(name, (major, minor)) or None, driver=text or None, ...)`` fakes torch's view of one."""

    def fake(gpu=("Tesla T4", (7, 5)), driver=DRIVER_535, available=True, cuda="12.8", version=TORCH,
             arch_list=CU128_ARCHS, says=None, threads=2, native_bf16=False):
        driver_file = tmp_path / "nvidia-driver-version"
        if driver is not None:
            driver_file.write_text(driver)
        monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", driver_file)
        monkeypatch.setattr(runtime.nvidia_driver_version, "__defaults__", (driver_file,))
        monkeypatch.setattr(torch, "__version__", version)
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(torch.version, "hip", None)

        def is_available():
            if says:
                warnings.warn(says, stacklevel=2)
            return available

        monkeypatch.setattr(torch.cuda, "is_available", is_available)
        if gpu is not None:
            name, (major, minor) = gpu

            def of_gpu_0(value):
                def query(device=None):
                    assert device in (None, 0), f"asked about GPU {device!r} of a one-GPU machine"
                    return value
                return query

            monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
            monkeypatch.setattr(torch.cuda, "get_device_name", of_gpu_0(name))
            monkeypatch.setattr(torch.cuda, "get_device_capability", of_gpu_0((major, minor)))
            monkeypatch.setattr(torch.cuda, "get_device_properties",
                                of_gpu_0(SimpleNamespace(name=name, major=major, minor=minor)))
            monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
            # torch.cuda.is_bf16_supported()'s last resort: make a bf16 tensor on the GPU. That works on a T4.
            monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: native_bf16)
        runtime.cuda_status.cache_clear()

    yield fake
    runtime.cuda_status.cache_clear()


# --------------------------------------------------------------------------------------------
# a usable GPU: the T4 line, fp16 for inference
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["auto", "cuda", "cuda:0"])
def test_a_t4_gives_the_documented_runtime_line_with_float16_autocast(machine, name):
    machine()
    assert runtime.cuda_status() == (True, None)
    device = runtime.resolve_device(name)
    assert device.type == "cuda"
    assert runtime.autocast_dtype(device) is torch.float16
    assert runtime.describe_runtime(device, runtime.autocast_dtype(device)) == T4_LINE
    assert T4_LINE in (ROOT / "docs" / "container.md").read_text()  # what the docs show a submitter


def test_the_line_without_autocast_and_without_a_readable_driver_version(machine):
    machine(driver=None)
    device = runtime.resolve_device("auto")
    assert runtime.describe_runtime(device, None) == (
        "runtime: torch 2.10.0+cu128 (CUDA build 12.8), device cuda:0 (Tesla T4, sm_75, driver ?), "
        "autocast off (float32)")


@pytest.mark.parametrize("gpu, training_dtype", [
    (("Tesla T4", (7, 5)), torch.float16),  # no bf16 tensor cores: bf16 would only be emulated
    (("Tesla V100-SXM2-16GB", (7, 0)), torch.float16),
    (("NVIDIA A100-SXM4-40GB", (8, 0)), torch.bfloat16),
    (("NVIDIA H100 80GB HBM3", (9, 0)), torch.bfloat16),
])
def test_autocast_on_cuda_is_float16_for_inference_and_bf16_for_training_only_where_native(
        machine, gpu, training_dtype):
    machine(gpu=gpu)
    device = runtime.resolve_device("auto")
    assert device.type == "cuda"
    assert runtime.autocast_dtype(device) is torch.float16  # inference, on every GPU
    assert runtime.autocast_dtype(device, training=True) is training_dtype


def test_the_container_prints_the_t4_line_first(machine, monkeypatch, tmp_path, capsys):
    """process.py's own first print, with and without --no-amp, on a faked T4."""
    machine()
    slug = process.STACK_SLUG
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "inputs.json").write_text(json.dumps([{"interface": {"slug": slug, "relative_path": f"images/{slug}"},
                                                  "image": {"name": "stack.tiff"}}]))

    def stop_after_the_runtime_line(input_dir, socket):
        raise process.InputError("stopped after the runtime line")

    monkeypatch.setattr(process, "socket_image", stop_after_the_runtime_line)
    for extra, autocast in (((), "float16"), (("--no-amp",), "off (float32)")):
        assert process.main(["--input", str(inp), "--output", str(tmp_path / "out"), *extra]) == 1
        captured = capsys.readouterr()
        assert captured.err.strip() == "error: stopped after the runtime line"
        assert captured.out.splitlines()[0] == T4_LINE.replace("autocast float16", f"autocast {autocast}")


def test_the_predictor_on_a_t4_autocasts_float16_and_describes_it(machine, monkeypatch, untrained_weights):
    import model.predict as predict

    machine()
    real_load_model = predict.load_model
    monkeypatch.setattr(predict, "load_model", lambda weights, device: real_load_model(weights, "cpu"))
    predictor = predict.Predictor(untrained_weights)
    assert predictor.device == torch.device("cuda") and predictor.amp_dtype is torch.float16
    assert predictor.describe_runtime() == T4_LINE
    assert predict.Predictor(untrained_weights, amp=False).amp_dtype is None


# --------------------------------------------------------------------------------------------
# CUDA present but unusable, CUDA usable but not chosen, no GPU: the CPU line says which
# --------------------------------------------------------------------------------------------

def cpu_line(where: str, bf16: str = "no", autocast: str = "off (float32)", torch_build: str = "CUDA build 12.8",
             version: str = TORCH) -> str:
    return f"runtime: torch {version} ({torch_build}), device cpu {where}, 2 threads, native bf16 {bf16}, " \
           f"autocast {autocast}"


def assert_cpu_fallback(reason: str, line: str) -> None:
    assert runtime.cuda_status() == (False, reason)
    device = runtime.resolve_device("auto")
    assert device == torch.device("cpu")
    assert runtime.describe_runtime(device, runtime.autocast_dtype(device)) == line
    with pytest.raises(RuntimeError) as info:
        runtime.resolve_device("cuda")
    assert str(info.value) == f"--device cuda asked for, but CUDA is not usable here: {reason}"


def test_a_gpu_without_kernels_in_this_torch_build_runs_on_the_cpu_and_says_why(machine):
    machine(gpu=("Tesla P100-PCIE-16GB", (6, 0)))
    reason = ("Tesla P100-PCIE-16GB is sm_60, but torch 2.10.0+cu128 has kernels only for "
              "sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120")
    assert_cpu_fallback(reason, cpu_line(f"(CUDA unusable: {reason}; running on the CPU)"))


def test_a_driver_too_old_for_the_cuda_build_runs_on_the_cpu_and_quotes_torch(machine):
    machine(gpu=None, driver=DRIVER_470, available=False,
            says="CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).")
    reason = ("torch.cuda.is_available() is False with NVIDIA driver 470.256.02 and torch's CUDA 12.8 build "
              "(CUDA 12.x needs driver >= 525, 13.x >= 580): torch says \"CUDA initialization: The NVIDIA driver "
              "on your system is too old (found version 11040).\"")
    assert_cpu_fallback(reason, cpu_line(f"(CUDA unusable: {reason}; running on the CPU)"))


def test_a_cpu_only_torch_beside_an_nvidia_driver_runs_on_the_cpu_and_says_why(machine):
    machine(gpu=None, available=False, cuda=None, version="2.10.0+cpu", native_bf16=True)
    reason = "torch 2.10.0+cpu is a CPU-only build (NVIDIA driver 535.183.01 present)"
    assert_cpu_fallback(reason, cpu_line(f"(CUDA unusable: {reason}; running on the CPU)", bf16="yes",
                                         autocast="bfloat16", torch_build="CPU-only build", version="2.10.0+cpu"))


def test_a_usable_gpu_left_aside_for_the_cpu(machine):
    machine()
    assert runtime.describe_runtime(runtime.resolve_device("cpu"), None) == cpu_line("(CUDA usable but not chosen)")


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this machine has an NVIDIA device node")
def test_no_gpu_at_all_gives_the_documented_cpu_line(machine):
    machine(gpu=None, driver=None, available=False, native_bf16=True)
    assert runtime.cuda_status() == (False, None)
    device = runtime.resolve_device("auto")
    line = cpu_line("(no NVIDIA GPU found)", bf16="yes", autocast="bfloat16")
    assert runtime.describe_runtime(device, runtime.autocast_dtype(device)) == line
    assert line in (ROOT / "docs" / "container.md").read_text()
    with pytest.raises(RuntimeError, match="CUDA is not usable here: no NVIDIA GPU found$"):
        runtime.resolve_device("cuda")
