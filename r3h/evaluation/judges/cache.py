"""The on-disk SQLite cache of raw judge texts (:class:`JudgeCache`)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Optional, Union



# -------------------------------------------------------------------------------- cache


def default_judge_cache_path() -> str:
    """``$R3H_CACHE/judges.sqlite`` (``R3H_CACHE`` defaults to ``~/.cache/r3h``)."""
    root = os.environ.get("R3H_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "r3h"))
    return os.path.join(root, "judges.sqlite")


class JudgeCache:
    """An on-disk SQLite cache of raw judge texts, shared by threads and processes.

    Keys come from :meth:`TemplateJudge.cache_key`. The raw text is stored, not the parsed
    value, so parsing happens (and can be fixed) at read time.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
        with self._lock, self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, judge TEXT, rubric TEXT, "
                "template TEXT, raw TEXT NOT NULL, created REAL)")

    def get(self, key: str) -> Optional[str]:
        with self._lock:
            row = self._conn.execute("SELECT raw FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, raw: str, *, judge: str = "", rubric: str = "", template: str = "") -> None:
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                               (key, judge, rubric, template, raw, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _open_cache(cache) -> Optional[JudgeCache]:
    if cache is None or cache is False:
        return None
    if cache is True:
        return JudgeCache(default_judge_cache_path())
    if isinstance(cache, JudgeCache):
        return cache
    return JudgeCache(cache)
