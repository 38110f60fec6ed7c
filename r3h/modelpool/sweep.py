"""`ModelSweep`: several merged models from one run (a Rewarded Soup λ grid, a sweep's grid)."""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

from torch import nn


def write_sweep_manifest(folder: str, manifest: dict) -> None:
    with open(os.path.join(folder, "sweep.json"), "w") as f:
        json.dump(manifest, f, indent=2)


class ModelSweep(nn.ModuleDict):
    """A mapping name → merged model that saves as one sub-folder per model.

    It is an `nn.Module`, so fusion_bench's program hands it to `modelpool.save_model`
    like any model; `save_pretrained(path)` writes `path/<name>/` for each entry and
    `path/sweep.json` with the setting (e.g. the λ) behind each name.

    Names may hold dots (`alpha=0.5,gamma=0.25`), which `nn.ModuleDict` keys cannot: the
    members are registered as `m000`, `m001`, … and `keys()`, `items()`, `values()`,
    iteration and `[name]` use the names. Read-only once built.
    """

    def __init__(self, models: Mapping[str, nn.Module], manifest: Optional[dict] = None):
        names = [str(n) for n in models]
        if len(set(names)) != len(names):
            raise ValueError(f"member names are not unique: {names}")
        super().__init__({f"m{i:03d}": m for i, m in enumerate(models.values())})
        self.member_names = names
        self.manifest = dict(manifest or {})

    def _key(self, name: str) -> str:
        try:
            return f"m{self.member_names.index(name):03d}"
        except ValueError:
            raise KeyError(name) from None

    def keys(self):
        return list(self.member_names)

    def values(self):
        return [self._modules[self._key(n)] for n in self.member_names]

    def items(self):
        return list(zip(self.member_names, self.values()))

    def __iter__(self):
        return iter(self.member_names)

    def __contains__(self, name) -> bool:
        return name in self.member_names

    def __getitem__(self, name):
        return self._modules[self._key(name)]

    def save_pretrained(self, path: str, **kwargs) -> None:
        os.makedirs(path, exist_ok=True)
        for name, model in self.items():
            model.save_pretrained(os.path.join(path, name), **kwargs)
        write_sweep_manifest(path, self.manifest)
