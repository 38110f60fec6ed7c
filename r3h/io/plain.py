"""Plain Python values: from what Hydra hands over (`to_container`), and for JSON (`jsonable`)."""

import math
import os
from collections.abc import Mapping
from fractions import Fraction

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_container(x):
    """Plain Python containers (dicts, lists) from OmegaConf values; anything else as is."""
    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return x


def jsonable(x):
    """Plain JSON values, for every report and manifest r3h writes: mappings -> dicts with
    ``str`` keys, lists/tuples/sets and OmegaConf lists -> lists, non-finite floats -> None,
    fractions -> ``"n/d"``, paths -> ``str``, numpy/torch scalars -> float, anything else
    -> ``str(x)``."""
    if isinstance(x, (DictConfig, ListConfig)):
        x = to_container(x)
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in x]
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Fraction):
        return f"{x.numerator}/{x.denominator}"
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    try:
        return jsonable(float(x))  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(x)


def write_json_atomic(path: str, obj) -> None:
    """Write `jsonable(obj)` to `path` through a temporary file and `os.replace`: a reader never
    sees a half-written file."""
    import json
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(jsonable(obj), f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
