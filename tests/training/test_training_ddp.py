"""DPO with several processes: `torchrun ... fusion_bench method=train/dpo_toy` on CPU (gloo)
takes the same step as one process with the same global batch, up to round-off, and
writes one complete output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from r3h.toy.build import build_tiny_3h

FUSION_BENCH = str(Path(sys.executable).with_name("fusion_bench"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# One global batch of 32 pairs, one SGD step, plain DPO (a mean over pairs): two processes of
# 16 pairs each average to the same gradient as one process of 32.
DATA = "method.data.datasets=[{name: toy_truthy, limit: 32}]"
ONE_STEP = ["method.num_train_epochs=1", "method.warmup_ratio=0", "method.loss_type=[sigmoid]",
            "method.learning_rate=0.5", "+method.trainer_kwargs.optim=sgd"]


def _run(cmd, cwd):
    env = dict(os.environ, HYDRA_FULL_ERROR="1", FUSION_BENCH_PROJECT_ROOT=str(cwd))
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun is not installed next to python")
def test_two_processes_train_the_same_model_as_one(tmp_path):
    base = build_tiny_3h()["_pretrained_"]
    common = ["method=train/dpo_toy", "modelpool=tiny_3h", DATA, *ONE_STEP, "print_config=false"]
    _run([FUSION_BENCH, *common, f"method.output_dir={tmp_path / 'one'}"], tmp_path)
    _run([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29533", FUSION_BENCH, *common,
          "method.per_device_batch_size=16", f"method.output_dir={tmp_path / 'two'}"], tmp_path)
    one, two = json.loads((tmp_path / "one" / "r3h_train.json").read_text()), \
        json.loads((tmp_path / "two" / "r3h_train.json").read_text())
    assert (one["processes"], one["gradient_accumulation_steps"]) == (1, 1)
    assert (two["processes"], two["gradient_accumulation_steps"]) == (2, 1)  # 16 x 1 x 2 = the global 32
    assert one["pairs"] == two["pairs"] == 32
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    start = load_file(os.path.join(base, "model.safetensors"))
    update = max((a[k] - start[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert update > 1e-3  # training moved the weights
    assert diff < 1e-3 * update, (diff, update)  # the same step up to round-off
