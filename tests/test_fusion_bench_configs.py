"""Installing r3h changes no fusion_bench command: r3h's configs only add names.

For every config that fusion_bench ships (`fusion_bench_config`: method, modelpool, taskpool),
Hydra's config repository, built with the search path that r3h's plugin edits, loads the same
`_target_` from the same provider as a repository whose search path leaves r3h's out; and a
few whole `fusion_bench` compositions resolve fusion_bench's classes with r3h installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.config_repository import ConfigRepository
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import r3h

FB = Path(importlib.util.find_spec("fusion_bench_config").submodule_search_locations[0])
R3H = Path(r3h.__file__).parent / "config"
GROUPS = ("method", "modelpool", "taskpool")


def fb_configs():
    return sorted(str(p.relative_to(FB).with_suffix("")) for g in GROUPS for p in (FB / g).rglob("*.yaml"))


def repositories():
    """(with r3h, without r3h): config repositories over the search path the plugins build."""
    with_r3h = create_config_search_path(str(FB))
    assert "r3h" in [e.provider for e in with_r3h.get_path()], "r3h's search-path plugin is not active"
    without = create_config_search_path(str(FB))
    without.config_search_path = [e for e in without.get_path() if e.provider != "r3h"]
    return ConfigRepository(with_r3h), ConfigRepository(without)


def resolved(repo: ConfigRepository, name: str):
    got = repo.load_config(name)
    return (got.provider, OmegaConf.select(got.config, "_target_", default=None)) if got else None


def test_r3h_adds_names_only():
    clash = sorted(str(p.relative_to(R3H)) for p in R3H.rglob("*.yaml") if (FB / p.relative_to(R3H)).exists())
    assert clash == [], f"r3h configs shadow fusion_bench's: {clash}"


@pytest.mark.slow
def test_every_fusion_bench_config_resolves_the_same():
    names = fb_configs()
    assert len(names) > 100  # fusion_bench 0.2.33 ships a few hundred
    with_r3h, without = repositories()
    differ = {n: (resolved(without, n), resolved(with_r3h, n)) for n in names
              if resolved(with_r3h, n) != resolved(without, n)}
    assert differ == {}


def compose_target(group: str, option: str) -> str:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(FB), version_base=None):
            cfg = compose(config_name="fabric_model_fusion", overrides=[f"{group}={option}"])
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.select(cfg, f"{group}._target_")


def test_whole_commands_resolve_fusion_bench_classes_with_r3h_installed():
    assert compose_target("method", "task_arithmetic") == "fusion_bench.method.TaskArithmeticAlgorithm"
    assert compose_target("method", "ties_merging") == "fusion_bench.method.TiesMergingAlgorithm"
    assert compose_target("method", "simple_average") == "fusion_bench.method.SimpleAverageAlgorithm"
    assert compose_target("method", "ties") == "r3h.methods.TiesMerging"  # a name fusion_bench has not




def fusion_bench_class_names() -> set[str]:
    import inspect
    import pkgutil

    import fusion_bench.method as fbm
    names = set()
    for info in pkgutil.walk_packages(fbm.__path__, fbm.__name__ + "."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # optional dependencies of some fusion_bench methods (CLIP, peft extras ...)
            continue
        names |= {n for n, o in vars(module).items() if inspect.isclass(o) and o.__module__.startswith("fusion_bench")}
    return names


def test_no_r3h_class_takes_a_fusion_bench_class_name():
    import inspect
    import pkgutil
    fb = fusion_bench_class_names()
    assert {"TaskArithmeticAlgorithm", "DareTiesMerging", "ModelStock"} <= fb  # the walk reaches them
    ours = set()
    for info in pkgutil.walk_packages(r3h.__path__, "r3h."):
        if not info.name.endswith("__main__"):
            module = importlib.import_module(info.name)
            ours |= {n for n, o in vars(module).items() if inspect.isclass(o) and o.__module__ == module.__name__}
    assert "RTSVM" in ours and "TaskArithmetic" in ours
    assert ours & fb == set()
