"""Fingerprints of the toy build, stage by stage, so that two machines can compare their
builds line by line and find the first stage whose output differs.

Each fingerprint is the first 16 hex digits of a sha256:

* `tokenizer`: the vocabulary (word -> id), the special tokens and the chat template;
* `data:sft`, `data:<dataset>`: the training records as canonical JSON;
* `init`: the initial weights of the SFT base (`build.make_model(seed)`);
* `base`, each expert, baseline and continual stage: the saved weights (`weights`), and
  the model's greedy answers to every test question (`answers`, with the `AVG` they score);
* `merge:r_tsvm`: the weights and answers of `method=r_tsvm` at its defaults on the pool.

Weights are hashed tensor by tensor in name order: name, shape and the little-endian
bytes of the float32 values (the dtype the toy's models are saved in). The `answers`
of a trained model are discrete (greedy decoding is an argmax), so they agree between
machines whose weights differ only in their last bits; the weights' hash does not
(docs/toy.md, "Reproducibility").

    python -m r3h.toy --fingerprints [--seeds 0]

prints them (and builds what is missing); `build_tiny_3h` writes the weights' stages
to `<root>/fingerprints.json` as it builds.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Dict, Iterable, List, Mapping, Optional

from r3h.io.digest import json_digest, tensors_digest, weights_digest  # noqa: F401 (the toy's fingerprints use them)

FILE = "fingerprints.json"
#: the merge whose weights and answers are fingerprinted (the issue's command)
MERGE = "r_tsvm"


def tokenizer_digest(tok) -> str:
    """The vocabulary (word -> id), special tokens and chat template of a tokenizer."""
    return json_digest({"vocab": sorted(tok.get_vocab().items(), key=lambda kv: kv[1]),
                        "special": {k: str(v) for k, v in tok.special_tokens_map.items()},
                        "template": tok.chat_template})


def environment() -> Dict[str, object]:
    """What decides the floating-point path of a build: CPU, library versions, settings."""
    import torch
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
                                                 "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS") if k in os.environ}}


def input_stages(seed: int = 0) -> Dict[str, Dict[str, str]]:
    """The stages that depend on no floating-point training: tokenizer, data, initial weights."""
    from r3h.toy import build, world

    out = {"tokenizer": {"digest": tokenizer_digest(build.make_tokenizer())},
           "data:sft": {"digest": json_digest(world.sft_records(seed))}}
    for d in world.DATASETS:
        out[f"data:{d}"] = {"digest": json_digest(world.preference_dataset(d, seed))}
    out["init"] = {"weights": tensors_digest(build.make_model(seed).state_dict())}
    return out


def model_stages(root: str) -> Dict[str, str]:
    """stage name -> folder for every trained model of a toy root, in build order."""
    from r3h.toy import build

    names = ["base", *build.EXPERTS, *build.BASELINES]
    names += [f"continual/stage{i + 1}_{n}" for i, (n, _) in enumerate(build.CONTINUAL)]
    return {n: os.path.join(root, n) for n in names if os.path.exists(os.path.join(root, n, "r3h_train.json"))}


def read(root: str) -> Dict[str, dict]:
    path = os.path.join(root, FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("stages", {})


def write(root: str, stages: Mapping[str, dict]) -> str:
    """Write `<root>/fingerprints.json` (stages and the environment), atomically."""
    path = os.path.join(root, FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"environment": environment(), "stages": dict(stages)}, f, indent=2)
    os.replace(tmp, path)
    return path


def record_weights(root: str, seed: int = 0) -> Dict[str, dict]:
    """Fingerprint the inputs and every trained model's weights of `root` (answers already
    recorded are kept while the weights are unchanged); write and return them."""
    old = read(root)
    stages = input_stages(seed)
    for name, folder in model_stages(root).items():
        w = weights_digest(folder)
        kept = old.get(name, {}) if old.get(name, {}).get("weights") == w else {}
        stages[name] = {**kept, "weights": w}
    for name in old:  # a merge's line, kept while the experts it came from are unchanged
        if name.startswith("merge:") and all(old.get(n, {}).get("weights") == stages.get(n, {}).get("weights")
                                              for n in old[name].get("from", [])):
            stages[name] = old[name]
    write(root, stages)
    return stages


def answers_digest(model, out_dir: str, split: str = "test") -> Dict[str, object]:
    """The greedy answers of `model` to every question of `split` (3h_tiny taskpool):
    {"answers": digest of (column, prompt, response) in order, "correct": {column: number of
    aligned answers}, "AVG": their score}."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from r3h.methods.configs import load_config

    cfg = OmegaConf.create(load_config("taskpool", "3h_tiny"))
    cfg.print_table = False
    cfg.split = split
    cfg.output_dir = out_dir
    report = instantiate(cfg, _recursive_=False).evaluate(model)
    rows = []
    for column in report["scores"]:
        with open(report["details"][column]["files"]["generations"]) as f:
            rows += [(column, r["prompt"], r["response"]) for r in map(json.loads, f) if r]
    correct = {c: report["details"][c]["correct"] for c in report["scores"]}
    return {"answers": json_digest(rows), "correct": correct, "AVG": round(report["averages"]["AVG"], 2)}


def record_all(cache_dir: Optional[str] = None, seed: int = 0, work_dir: Optional[str] = None,
               baselines: bool = False, continual: bool = False) -> Dict[str, dict]:
    """Build (what is missing of) toy seed `seed`, then fingerprint every stage: inputs,
    weights, the answers of every trained model and of `MERGE` at its defaults."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM

    from r3h.toy import build

    build.build_tiny_3h(cache_dir, seed=seed)
    if baselines:
        build.build_baselines(cache_dir, seed=seed)
    if continual:
        build.build_continual(cache_dir, seed=seed)
    root = build.root_dir(cache_dir, seed)
    stages = record_weights(root, seed)
    work = work_dir or tempfile.mkdtemp(prefix="r3h-fingerprints-")
    try:
        for name, folder in model_stages(root).items():
            if "answers" not in stages[name]:
                model = AutoModelForCausalLM.from_pretrained(folder)
                stages[name].update(answers_digest(model, os.path.join(work, name.replace("/", "_"))))
        key = f"merge:{MERGE}"
        if "answers" not in stages.get(key, {}):
            stages[key] = {"from": ["base", *build.EXPERTS], **_merge_stage(cache_dir, seed, work)}
        write(root, stages)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return stages


def _merge_stage(cache_dir, seed: int, work: str) -> Dict[str, object]:
    from r3h.methods.configs import build_method, load_method_config
    from r3h.toy.pool import Tiny3HPool

    merged = build_method(load_method_config(MERGE)).run(Tiny3HPool(cache_dir=cache_dir, seed=seed))
    return {"weights": tensors_digest(merged.state_dict()), **answers_digest(merged, os.path.join(work, "merge"))}


def lines(stages: Mapping[str, Mapping[str, object]]) -> List[str]:
    """One line per stage: name, then its fingerprints (`digest` / `weights` / `answers`, AVG)."""
    width = max(len(n) for n in stages) if stages else 0
    out = []
    for name, fp in stages.items():
        parts = [f"{k} {fp[k]}" for k in ("digest", "weights", "answers", "AVG") if k in fp]
        out.append(f"{name:<{width}}  " + "  ".join(parts))
    return out


def compare(a: Mapping[str, Mapping], b: Mapping[str, Mapping], keys: Iterable[str] = ("digest", "weights",
                                                                                          "answers")) -> List[str]:
    """The stages (in `a`'s order) whose fingerprints differ between two builds: ["stage key", ...]."""
    return [f"{n} {k}" for n in a if n in b for k in keys if k in a[n] and k in b[n] and a[n][k] != b[n][k]]
