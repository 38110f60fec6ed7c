"""Dataset records from a local file, a hub-layout folder or the hub (``datasets``).

`load_records` is the one loader of raw dataset records, used by the benchmarks
(`r3h.evaluation`) and the preference-data registry (`r3h.data`): a single local JSON, JSONL
(through :mod:`r3h.io.records`) or CSV file, or ``pkg://<package>/<file>``, is read here; a
folder laid out as a hub repository, a hub id or a builder with ``data_files`` goes through
``datasets.load_dataset``.
"""

from __future__ import annotations

import csv
import json
import os
from importlib import resources
from typing import List, Mapping, Optional

from r3h.io.records import read_records

__all__ = ["load_records", "resolve_data_path", "is_local_file", "read_local_records"]


def resolve_data_path(path: str) -> str:
    """A local path; ``pkg://<package>/<file>`` resolves inside an installed package."""
    if path.startswith("pkg://"):
        package, _, rel = path[len("pkg://"):].partition("/")
        if not package or not rel:
            raise ValueError(f"{path!r}: a package path reads pkg://<package>/<file>")
        return str(resources.files(package).joinpath(rel))
    return os.path.expanduser(path)


def is_local_file(path: str) -> bool:
    """A single local file (read here). A local *folder* is a dataset repository laid out as on
    the hub (README configs and data files) and goes through ``datasets``, like the hub copy."""
    if os.path.isdir(os.path.expanduser(path)):
        return False
    return path.startswith("pkg://") or os.path.exists(os.path.expanduser(path)) or \
        path.lower().endswith((".json", ".jsonl", ".csv")) or path.startswith((".", "/", "~"))


def read_local_records(dataset: str, path: str, split: Optional[str]) -> List[dict]:
    file = resolve_data_path(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{dataset}: data file {file} does not exist")
    lower = file.lower()
    try:
        if lower.endswith(".csv"):
            with open(file, newline="", encoding="utf-8") as f:
                return [dict(r) for r in csv.DictReader(f)]
        if lower.endswith(".jsonl"):
            return read_records(file, strict=True)
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{dataset}: cannot parse {file}: {e}") from None
    if isinstance(data, Mapping):  # {"data": [...]} or {"<split>": [...]}
        for key in ((split,) if split else ()) + ("data", "train", "test"):
            if key in data and isinstance(data[key], list):
                data = data[key]
                break
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise ValueError(f"{dataset}: {file} must hold a list of records (JSON objects)")
    return [dict(r) for r in data]


def load_records(dataset: str, path: str, *, name: Optional[str] = None, split: Optional[str] = None,
                 revision: Optional[str] = None, data_files=None) -> List[dict]:
    """The records of a benchmark's data: a local JSON/JSONL/CSV file (or ``pkg://``), or
    ``datasets.load_dataset(path, name, split=..., revision=..., data_files=...)`` (a hub id, a
    builder such as ``json`` with ``data_files`` (local files or URLs), or a local folder laid out
    as the hub repository)."""
    if data_files is None and is_local_file(path):
        return read_local_records(dataset, path, split)
    if os.path.isdir(os.path.expanduser(path)):
        path = os.path.expanduser(path)
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets comes with fusion_bench
        raise ImportError(f"{dataset}: loading {path!r} from the hub needs the `datasets` package") from None
    where = f"{path!r}" + "".join(f", {k}={v!r}" for k, v in
                                  (("name", name), ("split", split), ("revision", revision),
                                   ("data_files", data_files)) if v is not None)
    try:
        ds = datasets.load_dataset(path, name, split=split or "train", revision=revision, data_files=data_files)
    except Exception as e:
        raise RuntimeError(f"{dataset}: cannot load the dataset {where}: {type(e).__name__}: {e}") from e
    return [dict(r) for r in ds]
