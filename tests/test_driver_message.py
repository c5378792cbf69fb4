"""Why there is no GPU: a node with an NVIDIA driver that torch cannot use gets one line naming the driver, the CUDA
this torch needs and the build to use instead (bin/c2lnf/runtime.py); with --require-gpu that line is the error.
The driver facts are mocked: a fake `nvidia-smi` first on PATH, a fake /proc/driver/nvidia/version, or
`nvidia_driver` itself; torch's CUDA build is patched (torch.version.cuda)."""

from __future__ import annotations

import logging
import os

import pytest

from c2lnf import runtime
from c2lnf.errors import C2LError

SMI_535 = """Mon Dec  7 09:00:00 2026
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""
PROC_570 = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  "
            "(dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 23:30:10 UTC 2025\nGCC version:  gcc version 12.2.0\n")
PROC_470 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n"


@pytest.fixture
def no_driver(monkeypatch, tmp_path):
    """No nvidia-smi on PATH and no /proc file (the state of this machine, made sure)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(runtime, "NVIDIA_PROC_VERSION", tmp_path / "no-such-file")


def fake_smi(monkeypatch, tmp_path, text: str):
    folder = tmp_path / "smi"
    folder.mkdir()
    (folder / "nvidia-smi").write_text("#!/bin/sh\ncat <<'EOF'\n" + text + "EOF\n")
    (folder / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin")


def test_driver_from_nvidia_smi(monkeypatch, tmp_path, no_driver):
    fake_smi(monkeypatch, tmp_path, SMI_535)
    assert runtime.nvidia_driver() == ("535.104.05", "12.2")


def test_driver_from_proc_when_no_nvidia_smi(monkeypatch, tmp_path, no_driver):
    proc = tmp_path / "version"
    proc.write_text(PROC_570)
    monkeypatch.setattr(runtime, "NVIDIA_PROC_VERSION", proc)
    assert runtime.nvidia_driver() == ("570.86.15", "12.8")      # from the release notes' table
    proc.write_text(PROC_470)
    assert runtime.nvidia_driver() == ("470.256.02", None)        # older than CUDA 11.8's 520.61


def test_no_driver(no_driver):
    assert runtime.nvidia_driver() is None
    assert runtime.explain_no_gpu("2.13.0+cu130", "13.0", None) is None


@pytest.mark.parametrize("driver, cuda", [("580.65.06", "13.0"), ("575.57.08", "12.9"), ("550.163.01", "12.4"),
                                          ("535.54.03", "12.2"), ("525.60.13", "12.0"), ("520.61.05", "11.8"),
                                          ("510.47.03", None)])
def test_cuda_of_driver(driver, cuda):
    assert runtime.cuda_of_driver(driver) == cuda


def test_cuda13_torch_on_a_cuda12_driver_names_the_cu12_build():
    why = runtime.explain_no_gpu("2.13.0+cu130", "13.0", ("535.104.05", "12.2"))
    assert "driver 535.104.05 (CUDA <= 12.2) is too old" in why
    assert "built for CUDA 13.0: needs driver >= 580.65" in why
    assert "-profile cu12" in why and "make setup CUDA=12" in why


def test_cuda12_torch_on_a_cuda11_driver_has_no_build_to_offer():
    why = runtime.explain_no_gpu("2.10.0+cu128", "12.8", ("470.256.02", None))
    assert "driver 470.256.02 is too old" in why and "needs driver >= 525.60" in why
    assert "no build of the pipeline runs on it" in why


def test_driver_new_enough_but_no_device_given(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    why = runtime.explain_no_gpu("2.10.0+cu128", "12.8", ("550.54.14", "12.4"))
    assert "suits this torch" in why and "was given no GPU device" in why and "-profile gpu" in why


def test_cpu_only_torch():
    why = runtime.explain_no_gpu("2.13.0+cpu", None, ("580.65.06", "13.0"))
    assert "CPU-only build" in why


@pytest.fixture
def torch_without_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu130")
    return torch


def test_resolve_device_logs_one_driver_line(monkeypatch, torch_without_gpu, caplog):
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: ("550.54.14", "12.4"))
    with caplog.at_level(logging.WARNING, logger="c2l"):
        assert runtime.resolve_device("cuda") == ("cpu", "cpu")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith("no usable GPU: this node's NVIDIA driver 550.54.14 (CUDA <= 12.4) is too old")
    assert "CUDA 13.0" in lines[0] and "-profile cu12" in lines[0] and lines[0].endswith("training on the CPU instead")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="c2l"):      # --device auto: the same line
        assert runtime.resolve_device("auto") == ("cpu", "cpu")
    assert len(caplog.records) == 1


def test_resolve_device_require_gpu_error_is_the_driver_line(monkeypatch, torch_without_gpu):
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: ("550.54.14", "12.4"))
    with pytest.raises(C2LError) as err:
        runtime.resolve_device("cuda", require_gpu=True)
    message = str(err.value)
    assert "--require-gpu" in message and "driver 550.54.14" in message and "needs driver >= 580.65" in message
    assert "-profile cu12" in message and "\n" not in message


def test_resolve_device_without_driver_keeps_the_plain_message(monkeypatch, torch_without_gpu, caplog):
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: None)
    with caplog.at_level(logging.WARNING, logger="c2l"):
        assert runtime.resolve_device("cuda") == ("cpu", "cpu")
        assert runtime.resolve_device("auto") == ("cpu", "cpu")     # a CPU node: auto says nothing
    assert [r.getMessage() for r in caplog.records] == [
        "a GPU was requested but torch sees no CUDA device: training on the CPU instead"]
