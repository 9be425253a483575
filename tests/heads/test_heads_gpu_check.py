"""benchmarks/gpu_check.py on a machine without CUDA: exits 0 with a clear message."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would measure")
def test_gpu_check_without_cuda_exits_0_with_message():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "no CUDA device available" in run.stdout
    assert "Run it on a GPU machine" in run.stdout


def test_gpu_check_help():
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--no-epoch" in run.stdout
