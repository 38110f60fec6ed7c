"""MergeKit 0.1.4's side of the parity tests (tests/methods/test_mergekit_parity.py): its own
task objects (`GTATask`, `ModelStockMergeTask`, `LinearMergeTask`), built by the methods of its
registry with its defaults and executed directly, without its graph runner. No r3h code inside.

Importing this module needs MergeKit 0.1.4 (benchmarks/parity-requirements.txt); without it the
importing test module fails (tests/optional.py).

MergeKit 0.1.4 pins pydantic~=2.10.6; with pydantic >= 2.11 its package
`mergekit.merge_methods` fails at import (the `easy_define` methods, e.g. multislerp,
hand functions to `pydantic.create_model`, which 2.11 reads as annotations). The
modules needed here do not use `easy_define`, so on that failure they are imported
under a bare package object instead of the failing `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import types
import warnings

import torch

from tests.optional import missing, need

mergekit = need("mergekit", "MergeKit 0.1.4 (benchmarks/parity-requirements.txt)")

MK_VERSION = importlib.metadata.version("mergekit")
if MK_VERSION != "0.1.4":
    missing(f"MergeKit 0.1.4, the parity reference (installed: {MK_VERSION}),")


def _import_merge_methods():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importlib.import_module("mergekit.merge_methods")
        except Exception:  # pydantic >= 2.11: see the module docstring
            pkg = types.ModuleType("mergekit.merge_methods")
            pkg.__path__ = [os.path.join(os.path.dirname(mergekit.__file__), "merge_methods")]
            sys.modules["mergekit.merge_methods"] = pkg
            mergekit.merge_methods = pkg
        from mergekit.merge_methods import registry

    return registry


_registry = _import_merge_methods()
from mergekit import sparsify as mk_sparsify  # noqa: E402
from mergekit.architecture import WeightInfo  # noqa: E402
from mergekit.common import ImmutableMap, ModelReference  # noqa: E402
from mergekit.io.tasks import GatherTensors  # noqa: E402
from mergekit.merge_methods.generalized_task_arithmetic import ConsensusMethod  # noqa: E402


MK = _registry.REGISTERED_MERGE_METHODS
NAME = "model.layers.0.mlp.up_proj.weight"
BASE_REF = ModelReference.parse("base_model")

__all__ = ["MK", "NAME", "ConsensusMethod", "TorchWithMasks", "expert_names", "mk_gta", "mk_linear", "mk_model_stock",
           "mk_sparsify", "mk_variant"]


def expert_names(n):
    return [f"expert_{i}" for i in range(n)]


def _refs(n):
    return [ModelReference.parse(name) for name in expert_names(n)]


def _gather(models):
    wi = WeightInfo(name=NAME)
    return GatherTensors(weight_info=ImmutableMap({m: wi for m in models}))


def mk_gta(method, base, experts, weights, params=None, tparams=None):
    """Run MergeKit's GTATask for `method` (a registry name or a GeneralizedTaskArithmeticMerge)
    with MergeKit's defaults, overridden by `params` (int8_mask, normalize, rescale,
    lambda) and per-model `tparams` (density, gamma, epsilon)."""
    if isinstance(method, str):
        method = MK[method]
    refs = _refs(len(experts))
    p = {d.name: d.default_value for d in method.parameters()}
    p.update(params or {})
    tp = {}
    for ref, w in zip(refs, weights):
        d = {x.name: x.default_value for x in method.tensor_parameters()}
        d["weight"] = w
        d.update(tparams or {})
        tp[ref] = ImmutableMap(d)
    task = method.make_task(
        output_weight=WeightInfo(name=NAME),
        tensors=_gather([BASE_REF, *refs]),
        base_model=BASE_REF,
        parameters=ImmutableMap(p),
        tensor_parameters=ImmutableMap(tp),
    )
    tensors = {BASE_REF: base.clone(), **{r: e.clone() for r, e in zip(refs, experts)}}
    return task.execute(tensors=tensors)


def mk_model_stock(base, experts, filter_wise=False):
    refs = _refs(len(experts))
    task = MK["model_stock"].make_task(
        output_weight=WeightInfo(name=NAME),
        tensors=_gather([BASE_REF, *refs]),
        base_model=BASE_REF,
        parameters=ImmutableMap({"filter_wise": filter_wise}),
        tensor_parameters=ImmutableMap({}),
    )
    tensors = {BASE_REF: base.clone(), **{r: e.clone() for r, e in zip(refs, experts)}}
    return task.execute(tensors=tensors)


def mk_linear(experts, weights, normalize=True):
    refs = _refs(len(experts))
    task = MK["linear"].make_task(
        output_weight=WeightInfo(name=NAME),
        tensors=_gather(refs),
        base_model=None,
        parameters=ImmutableMap({"normalize": normalize}),
        tensor_parameters=ImmutableMap({r: ImmutableMap({"weight": w}) for r, w in zip(refs, weights)}),
    )
    return task.execute(tensors={r: e.clone() for r, e in zip(refs, experts)})


def mk_variant(name, **update):
    """A registry GTA method with some fields changed (e.g. consensus_method=count)."""
    return MK[name].model_copy(update=update)


class TorchWithMasks:
    """Stands in for `torch` inside `mergekit.sparsify`: `bernoulli` returns r3h's masks
    (in expert order) and records the probabilities MergeKit asked for."""

    def __init__(self, masks):
        self._masks = list(masks)
        self.probs = []

    def bernoulli(self, p, *args, **kwargs):
        self.probs.append(p.detach().clone())
        mask = self._masks[len(self.probs) - 1]
        return mask.reshape(p.shape).to(p.dtype)

    def __getattr__(self, attr):
        return getattr(torch, attr)
