"""One way to find a method's config and build the method from it.

`load_config(group, name)` composes `config/<group>/<name>.yaml` with Hydra, through the
search path the `fusion_bench` CLI uses (r3h's configs, the project's `./config`, then
fusion_bench's), so `defaults:` work as on the command line; `load_method_config` adds the
checks a method config needs; `build_method` instantiates it with Hydra's `instantiate`,
exactly as `fusion_bench method=<name>` does. The merge sweep (`r3h.sweeps`), the merge
search (`r3h.search`) and the toy (`r3h.toy`) build every method here.

What a sweep or a search does differently for a method is what the method declares
(class attributes of `r3h.methods.base.MergeAlgorithm`): `uses_svd_cache` (TSVM, R-TSVM:
an `svd_cache` folder shares one SVD pass), `multi_preference` (Rewarded Soup: a list of
λ gives every member in one pass), `distributed` (TSVM, R-TSVM: run over the Fabric ranks).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, List, Mapping

from omegaconf import DictConfig, OmegaConf

from r3h.io.plain import to_container

__all__ = ["CONFIG_ROOT", "load_config", "load_method_config", "method_class", "build_method", "option_names",
           "declares"]

#: r3h's config folder (`config/` of the repository, installed as `r3h/config`)
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "config"
META_KEYS = ("_target_", "_recursive_", "_usage_", "_version_")


def load_config(group: str, name: str) -> Dict[str, Any]:
    """The config `<group>=<name>` as a plain dict, composed by Hydra as `fusion_bench
    <group>=<name>` composes it (its `defaults` applied): inside a running Hydra app (the
    `fusion_bench` CLI) through the app's own search path, otherwise through the one the
    CLI would build from this folder (`./config` when there is one)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    name = str(name).strip().removesuffix(".yaml")
    override = f"+{group}={name}"
    try:
        if GlobalHydra.instance().is_initialized():
            cfg = compose(overrides=[override])
        else:
            primary = Path.cwd() / "config"
            with initialize_config_dir(config_dir=str(primary if primary.is_dir() else CONFIG_ROOT), version_base=None):
                cfg = compose(overrides=[override])
    except MissingConfigException:
        folders = [CONFIG_ROOT / group, Path.cwd() / "config" / group]
        raise ValueError(f"{group}: no config '{name}' in {', '.join(str(f) for f in folders)}") from None
    got = OmegaConf.select(cfg, group.replace("/", "."))
    if not isinstance(got, DictConfig):
        raise ValueError(f"{group}: the config '{name}' is not a mapping")
    return dict(to_container(got))


def load_method_config(method) -> Dict[str, Any]:
    """The method config as a plain dict with `_target_`: a config name (`r_tsvm`, as for
    `method=`, under r3h's `config/method/` or `./config/method/`) or a mapping."""
    method = to_container(method)
    if isinstance(method, Mapping):
        cfg, where = dict(method), "method"
    elif isinstance(method, str) and method.strip():
        cfg, where = load_config("method", method), f"config '{method.strip()}'"
    else:
        raise ValueError(f"method: expected a method config name or a config with _target_, got {method!r}")
    if not cfg.get("_target_"):
        raise ValueError(f"method: {where} has no _target_ (the class to run)")
    if str(cfg["_target_"]).endswith(".MergeSweep"):
        raise ValueError("method: a sweep cannot sweep a sweep")
    return cfg


def method_class(cfg: Mapping[str, Any]):
    """The class a method config's `_target_` names (ValueError naming it if it cannot be imported)."""
    from hydra.utils import get_class

    try:
        return get_class(str(cfg["_target_"]))
    except Exception as exc:
        raise ValueError(f"method: cannot import _target_ {cfg['_target_']!r} ({exc})") from exc


def build_method(cfg: Mapping[str, Any], **options):
    """The method of config `cfg` with `options` on top: Hydra's `instantiate`, the options as
    plain Python values (as `fusion_bench method=...` builds it, nested configs not instantiated)."""
    from hydra.utils import instantiate

    method_class(cfg)  # a clear error for a bad _target_
    return instantiate({**cfg, **options}, _recursive_=False, _convert_="all")


def option_names(obj) -> List[str]:
    """The options of a built method: its fusion_bench `config` keys, or its constructors' parameters."""
    cfg = getattr(obj, "config", None)
    if cfg is None:
        names = []
        for klass in type(obj).__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                names += [p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")]
        return sorted(set(names))
    return sorted(k for k in cfg.keys() if k not in META_KEYS)


def declares(cls, capability: str) -> bool:
    """Whether a method class declares `capability` (`uses_svd_cache`, `multi_preference`,
    `distributed`). A fusion_bench class that declares nothing is `distributed` when it runs on
    Fabric (fusion_bench's `LightningFabricMixin`)."""
    value = getattr(cls, capability, None)
    if value is None and capability == "distributed":
        from fusion_bench.mixins.lightning_fabric import LightningFabricMixin

        return issubclass(cls, LightningFabricMixin)
    return bool(value)
