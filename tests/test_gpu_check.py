"""scripts/gpu_check.py without a GPU: its parts report pass / skip / FAIL in summary.{json,md},
a CUDA part asked for where there is no CUDA is refused up front, vLLM is skipped saying why.
(The suite never needs a GPU; the CUDA parts themselves run on a GPU machine only.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # each test starts scripts/gpu_check.py


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=str(cwd), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_the_cpu_parts_run_and_vllm_is_skipped(tmp_path):
    p = run("--only", "env,vllm", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no CUDA device" in p.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["part"]: r for r in summary["parts"]}
    assert summary["device"] == "cpu" and rows["env"]["status"] == "pass"
    assert rows["env"]["result"]["cuda"] is False and rows["env"]["result"]["torch"] == torch.__version__
    assert rows["vllm"]["status"] == "skip" and "vLLM" in rows["vllm"]["reason"]
    assert "| vllm | skip |" in (tmp_path / "summary.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_asking_for_cuda_without_it_is_refused_before_any_part(tmp_path):
    p = run("--device", "cuda", "--out", str(tmp_path))
    assert p.returncode == 2 and "sees no CUDA device" in p.stderr
    assert not (tmp_path / "summary.json").exists()


def test_an_unknown_part_is_named(tmp_path):
    p = run("--only", "env,bench", "--out", str(tmp_path), "--device", "cpu")
    assert p.returncode == 2 and "unknown part 'bench'" in p.stderr
