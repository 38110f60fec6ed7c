#!/usr/bin/env bash
# Every CUDA path of r3h in one command, install included (issue 20, item 8); aims at under 8 minutes
# on one H100. Not run on a GPU yet: see docs/installation.md.
#
#   bash scripts/gpu_check.sh                      # install into ./.venv-gpu, then every part on CUDA
#   bash scripts/gpu_check.sh --no-install         # in the active environment
#   bash scripts/gpu_check.sh --no-install --device cpu --skip bench_tsvm   # the CPU-reachable parts
#
# Other arguments go to scripts/gpu_check.py (--out, --only, --skip, --layers, --dpo-steps). It writes
# <out>/summary.{json,md} (default benchmarks/results/gpu_check) and the logs of its subprocesses there,
# prints the summary, and exits 1 when a part failed.
set -euo pipefail
cd "$(dirname "$0")/.."
install=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-install" ]; then install=0; else args+=("$a"); fi
done
if [ "$install" = 1 ]; then
  t0=$(date +%s)
  python3 -m venv .venv-gpu
  . .venv-gpu/bin/activate
  python -m pip install -q --upgrade pip
  # torch from PyPI: on Linux x86-64 its wheel is the CUDA build (R3H_TORCH pins a version)
  R3H_TORCH="${R3H_TORCH:-2.13.0}" bash scripts/install.sh
  # vLLM when it installs beside this torch (it pins its own); the vllm part is skipped otherwise
  python -m pip install -q "vllm" "torch==${R3H_TORCH:-2.13.0}" || echo "gpu_check: vLLM did not install; its part will be skipped"
  echo "gpu_check: install took $(( $(date +%s) - t0 )) s"
fi
exec python scripts/gpu_check.py ${args[@]+"${args[@]}"}
