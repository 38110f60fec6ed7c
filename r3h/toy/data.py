"""The toy world's preference datasets in r3h's data registry (`r3h.data.registry`).

`register_toy_datasets` (run at ``import r3h.toy``) registers each dataset of
`r3h.toy.world.DATASETS` as a source built in memory, so
``r3h.data.load_preference_data("toy_truthy")`` goes through exactly the code of the real
datasets.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Tuple

from r3h.data.preference import normalize_record
from r3h.data.registry import ConvertContext, PreferenceSource, register_source
from r3h.toy import world

__all__ = ["convert_toy", "toy_sources", "register_toy_datasets"]


def convert_toy(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """Toy pairs are already normalised: keep each pair's own dimension tags."""
    return [normalize_record(r, None, ctx.source, r.get("dimensions") or ctx.dimensions, i)
            for i, r in enumerate(records)], {}


def toy_sources() -> Dict[str, PreferenceSource]:
    """The toy 3H world's datasets (r3h.toy.world.DATASETS), built in memory."""
    return {name: PreferenceSource(name=name, dimensions=tuple(spec["dimensions"]),
                                   builder=functools.partial(world.preference_dataset, name),
                                   converter=convert_toy, required=("prompt", "chosen", "rejected"),
                                   title=name, note="Synthetic toy 3H data (r3h.toy.world); built in memory.")
            for name, spec in world.DATASETS.items()}


def register_toy_datasets() -> List[str]:
    """Register the toy datasets in the data registry; returns their names."""
    return [register_source(s).name for s in toy_sources().values()]
