"""DPO training as fusion_bench algorithms: `method=train/dpo` trains one model of the
pool (the base by default) on preference data, or on a data mixture (the paper's
Table 2 baselines); `method=train/continual_dpo` trains stage after stage (the
paper's continual setting), saving every stage.

Both return the trained model, so `merged_model_save_path=...` saves it and a
taskpool scores it, exactly as after a merge:

    fusion_bench method=train/dpo modelpool=tiny_3h method.data.datasets=[toy_truthy] \\
        method.output_dir=outputs/honesty taskpool=3h_tiny
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from omegaconf import OmegaConf

from fusion_bench.method.base_algorithm import BaseAlgorithm
from fusion_bench.mixins.serialization import auto_register_config
from r3h.core.paths import run_output_dir
from r3h.io.plain import to_container
from r3h.modelpool.sources import BASE, model_path
from r3h.training.dpo import check_recipe, recipe, train_dpo

log = logging.getLogger(__name__)

RECIPE_KEYS = ("beta", "learning_rate", "global_batch_size", "per_device_batch_size", "num_train_epochs",
               "lr_scheduler_type", "warmup_ratio", "max_length", "loss_type", "bf16", "gradient_checkpointing",
               "seed")


def parse_data(data) -> Tuple[List[Any], Optional[Any]]:
    """(dataset specs, mixture or None) from a `data` option: a list of dataset specs,
    or {datasets: [...], mixture: <config with _target_ or a Mixture>}."""
    data = to_container(data)
    if data is None:
        raise ValueError("data: no preference data given (method.data.datasets=[name, ...])")
    if isinstance(data, (list, tuple)):
        return list(data), None
    if not isinstance(data, Mapping):
        raise ValueError(f"data must be a list of datasets or {{datasets, mixture}}, got {data!r}")
    unknown = sorted(set(data) - {"datasets", "mixture"})
    if unknown:
        raise ValueError(f"data: unknown key(s) {unknown}; use `datasets` and `mixture`")
    datasets = list(data.get("datasets") or [])
    if not datasets:
        raise ValueError("data.datasets is empty: name at least one preference dataset")
    mixture = data.get("mixture")
    if isinstance(mixture, Mapping):
        if "_target_" not in mixture:
            raise ValueError("data.mixture needs a `_target_` (e.g. r3h.data.HeuristicMixture)")
        from hydra.utils import instantiate

        mixture = instantiate(OmegaConf.create(dict(mixture)), _convert_="all")
    return datasets, mixture


def load_training_data(data, out_dir: Optional[str] = None, on_invalid: str = "drop") -> Tuple[List[dict], dict]:
    """Load (and mix) the preference data of a `data` option; with `out_dir`, write the
    pairs and their manifest there (`pairs.jsonl`, `manifest.json`)."""
    from r3h.data import load_preference_data, write_mixture

    specs, mixture = parse_data(data)
    if mixture is not None:
        return mixture.build(specs, out_dir=out_dir, on_invalid=on_invalid)
    pairs, sources = [], {}
    for spec in specs:
        got, counts = load_preference_data(spec, on_invalid=on_invalid)
        name = spec if isinstance(spec, str) else spec.get("name", "?")
        if name in sources:
            raise ValueError(f"data: dataset {name!r} is listed twice")
        sources[name] = {"available": len(got), "taken": len(got), "load": counts}
        pairs += got
    manifest = {"method": "concatenate", "sources": sources, "totals": {"taken": len(pairs)}}
    if out_dir is not None:
        write_mixture(pairs, manifest, out_dir)
    return pairs, manifest


def _load_trained(folder: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    model.r3h_tokenizer_dir = folder
    model.r3h_merge_info = None
    return model


@auto_register_config
class DPOTraining(BaseAlgorithm):
    """Train one model of the pool with DPO (TRL's DPOTrainer) on preference data.

    Args:
        data: dataset names/specs (see `r3h.data.load_preference_data`), or
            {datasets: [...], mixture: {_target_: r3h.data.HeuristicMixture | RewardModelSelection
            | HummerSelection, ...}} for the paper's data-mixture baselines.
        model: the pool entry to train (default `_pretrained_`).
        ref_model: the DPO reference (default: the model itself); another base is an error.
        output_dir: where the trained model goes (default `<log dir>/dpo_model`); the
            data and their manifest go to `<output_dir>.data`.
        beta, learning_rate, global_batch_size, per_device_batch_size, num_train_epochs,
        lr_scheduler_type, warmup_ratio, max_length, loss_type, bf16, gradient_checkpointing,
        seed: the recipe (defaults: the paper's, `r3h.training.PAPER_RECIPE`).
        trainer_kwargs: more `trl.DPOConfig` options.
        on_invalid: `drop` (count in the manifest) or `error` for empty/identical pairs.
    """

    def __init__(self, data=None, model: str = BASE, ref_model: Optional[str] = None, output_dir: Optional[str] = None,
                 beta: float = 0.1, learning_rate: float = 5e-7, global_batch_size: int = 128,
                 per_device_batch_size: int = 2, num_train_epochs: float = 1, lr_scheduler_type: str = "cosine",
                 warmup_ratio: float = 0.1, max_length: int = 4096, loss_type=("sigmoid",), bf16="auto",
                 gradient_checkpointing="auto", seed: int = 42, trainer_kwargs=None, on_invalid: str = "drop",
                 cpu: Optional[bool] = None, **kwargs):
        super().__init__(**kwargs)

    def recipe(self) -> Dict[str, Any]:
        r = recipe(**{k: to_container(getattr(self, k)) for k in RECIPE_KEYS}, **dict(to_container(self.trainer_kwargs) or {}))
        r["loss_type"] = list(r["loss_type"])
        check_recipe(r)
        return r

    def _output_dir(self, default_name: str) -> str:
        return run_output_dir(self.output_dir, self, default_name, sub=default_name)

    def _start(self, modelpool) -> str:
        if hasattr(modelpool, "prepare"):
            modelpool.prepare()
        names = list(modelpool._models)
        if self.model not in names:
            raise ValueError(f"model: '{self.model}' is not in the pool (models: {names})")
        return model_path(modelpool, self.model)

    def _ref(self, modelpool) -> Optional[str]:
        if self.ref_model is None:
            return None
        if self.ref_model in modelpool._models:
            return model_path(modelpool, self.ref_model)
        return str(self.ref_model)

    def run(self, modelpool):
        r = self.recipe()  # option errors before any data or model is loaded
        start = self._start(modelpool)
        out = self._output_dir("dpo_model")
        pairs, manifest = load_training_data(self.data, out_dir=out + ".data", on_invalid=self.on_invalid)
        log.info("DPO: training %s on %d pairs -> %s", self.model, len(pairs), out)
        train_dpo(start, pairs, out, ref_model=self._ref(modelpool), data_manifest=manifest, cpu=self.cpu, **r)
        return _load_trained(out)


@auto_register_config
class ContinualDPO(DPOTraining):
    """The paper's continual setting: DPO stages in sequence, each starting from the
    previous stage's model (and using it as the DPO reference), each stage saved.

    Args:
        stages: list of {name, data}; `data` as in `train/dpo`. The paper's order is
            Helpfulness&Honesty, then Helpfulness&Harmlessness, then Helpfulness.
        output_dir: stage i goes to `<output_dir>/stage<i>_<name>` (default `<log dir>/continual`).
        Other options as `train/dpo` (one recipe for every stage).
    """

    def __init__(self, stages=None, **kwargs):
        super().__init__(**kwargs)

    def parsed_stages(self) -> List[Tuple[str, Any]]:
        stages = to_container(self.stages)
        if not stages:
            raise ValueError("stages: give at least one {name, data} stage")
        out = []
        for i, s in enumerate(stages):
            if not isinstance(s, Mapping) or "data" not in s or "name" not in s:
                raise ValueError(f"stages[{i}] must be {{name, data}}, got {s!r}")
            parse_data(s["data"])  # errors before any training
            out.append((str(s["name"]), s["data"]))
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: names must be unique, got {names}")
        return out

    def stage_dirs(self) -> List[str]:
        root = self._output_dir("continual")
        return [os.path.join(root, f"stage{i + 1}_{name}") for i, (name, _) in enumerate(self.parsed_stages())]

    def run(self, modelpool):
        r = self.recipe()
        stages = self.parsed_stages()
        current = self._start(modelpool)
        for (name, data), folder in zip(stages, self.stage_dirs()):
            if os.path.exists(os.path.join(folder, "r3h_train.json")):
                log.info("continual DPO: stage %s is already trained (%s)", name, folder)
            else:
                pairs, manifest = load_training_data(data, out_dir=folder + ".data", on_invalid=self.on_invalid)
                log.info("continual DPO: stage %s, %d pairs, from %s", name, len(pairs), current)
                train_dpo(current, pairs, folder, data_manifest={"stage": name, **manifest}, cpu=self.cpu, **r)
            current = folder
        return _load_trained(current)
