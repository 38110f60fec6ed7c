"""Where a run writes: file-name slugs and the run's output/log folder.

fusion_bench's programs set ``_program`` on the method, model pool and task pool they
build, and share one Fabric (hence one logger and one log folder) with them; r3h writes
its reports and outputs there, or into ``./outputs/<name>`` outside a program.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

__all__ = ["slug", "run_log_dir", "run_output_dir", "write_run_report"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def slug(text: Any, default: str = "_") -> str:
    """A file or folder name for ``text``: each run of characters outside
    ``[A-Za-z0-9._=-]`` becomes one ``_``, leading and trailing ``_`` are dropped, and an
    empty result is ``default``. E.g. ``"ties k=0.2 (run 1)" -> "ties_k=0.2_run_1"``."""
    return _UNSAFE.sub("_", str(text)).strip("_") or default


def run_log_dir(obj) -> Optional[str]:
    """The absolute log folder of the fusion_bench run ``obj`` (a method, pool or task
    pool) belongs to: its program's ``log_dir`` (``obj._program``, set by fusion_bench's
    programs). None outside a program, or when the program has none; an error while
    asking (no Fabric, no logger) counts as none."""
    program = getattr(obj, "_program", None)
    if program is None:
        return None
    try:
        log_dir = getattr(program, "log_dir", None)
    except Exception:  # no fabric / logger: not fatal
        return None
    return os.path.abspath(os.fspath(log_dir)) if log_dir else None


def run_output_dir(explicit: Any, obj, default: str, sub: Optional[str] = None) -> str:
    """Where ``obj`` writes its outputs, as an absolute path: ``explicit`` when given (``~``
    expanded); else the run's log folder (:func:`run_log_dir`), joined with ``sub`` when
    given; else ``./outputs/<default>``."""
    if explicit:
        return os.path.abspath(os.path.expanduser(str(explicit)))
    log_dir = run_log_dir(obj)
    if log_dir:
        return os.path.join(log_dir, sub) if sub else log_dir
    return os.path.abspath(os.path.join("outputs", default))


def write_run_report(obj, filename: str, report) -> Optional[str]:
    """Write ``report`` as JSON (``r3h.io.plain.write_json_atomic``) to ``filename`` in the
    log folder of the run ``obj`` belongs to (:func:`run_log_dir`); the path, or None outside
    a program."""
    from r3h.io.plain import write_json_atomic

    log_dir = run_log_dir(obj)
    if not log_dir:
        return None
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, filename)
    write_json_atomic(path, report)
    return path
