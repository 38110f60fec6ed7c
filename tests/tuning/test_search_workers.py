"""Search workers that share one study (`r3h.tuning.workers`): `n_trials` is the study's
total across worker processes, and a killed worker's running trial is failed and retried.

Each worker is its own Python process on one SQLite study (`method.storage`), scoring with
the stand-in benchmark of tests/tuning/test_search.py (a merge's score from its α), slowed down so
that the workers' trials overlap."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.core.test_svd_cache import write_pool
from tests.tuning.test_search import BESTS, AlphaDimension

REPO = Path(__file__).resolve().parents[2]

WORKER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.core.test_svd_cache import pool_of
from r3h.tuning import MergeSearch
paths, kw = json.loads(sys.argv[2]), json.loads(sys.argv[3])
s = MergeSearch(methods={"tsvm": {"alpha": {"low": 0.0, "high": 1.2}}}, compare_defaults=False, test_split=None, **kw)
s.run(pool_of(paths))
rep = s.last_report
print("REPORT " + json.dumps({"chosen": rep["chosen"]["trial"], "n_trials": rep["n_trials"],
                              "selection": rep["selection"]}))
"""


class SlowAlphaDimension(AlphaDimension):
    """`AlphaDimension`, `delay` seconds slower; it hangs while the file `hang` exists. With
    `ready`, a worker's first trial writes its file there and waits (up to 5 minutes) until
    `workers` workers have, so every worker is inside a trial at once."""

    def __init__(self, column, dimension, best, split="test", stderr=None, delay=0.0, hang=None, ready=None,
                 workers=1):
        super().__init__(column, dimension, best, split, stderr)
        self.delay, self.hang, self.ready, self.workers = delay, hang, ready, workers

    def run(self, ctx):
        if self.ready:
            Path(self.ready, str(os.getpid())).touch()
            deadline = time.time() + 300
            while len(os.listdir(self.ready)) < self.workers and time.time() < deadline:
                time.sleep(0.2)
        while self.hang and os.path.exists(self.hang):
            time.sleep(0.2)
        time.sleep(self.delay)
        return super().run(ctx)


def taskpool(tokenizer, delay, hang=None, ready=None, workers=1):
    bench = lambda c, d: {"_target_": "tests.tuning.test_search_workers.SlowAlphaDimension", "column": c,  # noqa: E731
                          "dimension": d, "best": BESTS[d], "delay": delay, "hang": hang, "ready": ready,
                          "workers": workers}
    return {"_target_": "r3h.evaluation.taskpool.ThreeHTaskPool", "tokenizer": tokenizer,
            "benchmarks": {f"Probe-{d}": bench(f"Probe-{d}", d) for d in BESTS}}


def start(paths, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(REPO), json.dumps(paths), json.dumps(kw)],
                            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout=600) -> dict:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()  # leave no worker behind
        p.communicate()
        raise
    assert p.returncode == 0, out[-4000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("REPORT "))[len("REPORT "):])


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return {k: str(v) for k, v in write_pool(tmp_path_factory.mktemp("pool")).items()}


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_workers_share_one_budget_and_one_selection(paths, tmp_path, tiny_lm_path):
    storage = f"sqlite:///{tmp_path / 'study.sqlite'}"
    ready = tmp_path / "ready"  # no worker scores before both are up, so both take part
    ready.mkdir()
    kw = dict(taskpool=taskpool(tiny_lm_path, delay=0.1, ready=str(ready), workers=2), storage=storage,
              n_trials=8, output_dir=str(tmp_path / "out"))
    workers = [start(paths, **kw), start(paths, **kw)]
    reports = [finish(p) for p in workers]
    study = optuna.load_study(study_name="r3h_search", storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    numbers = [t.number for t in study.trials]
    assert len(complete) == 8  # the study's total, not 8 per worker
    assert len(numbers) == len(set(numbers))
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)]
    # both workers took part (the trials name the process that ran them)
    assert len({t.user_attrs.get("worker") for t in complete}) == 2
    # one selection: both workers saw the same 8 trials and chose the same one
    assert reports[0] == reports[1] and reports[0]["n_trials"] == 8
    on_disk = json.loads((tmp_path / "out" / "search_report.json").read_text())
    assert on_disk["chosen"]["trial"] == reports[0]["chosen"]
    assert len(json.loads((tmp_path / "out" / "trials.json").read_text())) == 8


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_workers_trial_is_failed_and_retried(paths, tmp_path, tiny_lm_path):
    storage = f"sqlite:///{tmp_path / 'study.sqlite'}"
    hang = tmp_path / "hang"
    hang.write_text("")
    kw = dict(storage=storage, n_trials=3, output_dir=str(tmp_path / "out"), heartbeat=1)
    first = start(paths, taskpool=taskpool(tiny_lm_path, 0.0, str(hang)), **kw)
    deadline = time.time() + 300
    running = []
    beats = 0
    # the first worker's first trial (tsvm at its defaults) hangs in its scoring; it is killed once
    # that trial has sent a heartbeat (Optuna counts a running trial that never sent one as alive)
    while not running or not beats:
        assert first.poll() is None and time.time() < deadline, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.5)
        try:
            running = optuna.load_study(study_name="r3h_search", storage=storage).get_trials(
                states=(TrialState.RUNNING,))
        except (KeyError, ValueError):  # the study is not created yet
            continue
        if running:
            with sqlite3.connect(str(tmp_path / "study.sqlite"), timeout=60) as db:
                beats = db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    hang.unlink()
    report = finish(start(paths, taskpool=taskpool(tiny_lm_path, 0.0), **kw))
    study = optuna.load_study(study_name="r3h_search", storage=storage)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in failed] == [running[0].number]
    assert len(complete) == 3 and report["n_trials"] == 3
    with warnings.catch_warnings():  # "experimental" in Optuna's words
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = [t for t in complete if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) is not None]
    assert len(retried) == 1 and retried[0].params == failed[0].params  # the same options, run again
    assert retried[0].user_attrs.get("defaults")  # still the defaults trial the selection compares against


def test_open_storage_waits_for_a_schema_another_worker_creates(monkeypatch, tmp_path):
    """Two workers opening a new database at once both create Optuna's schema: the one whose
    INSERT INTO alembic_version loses opens again; any other failure is an error naming the URL."""
    from sqlalchemy.exc import IntegrityError

    from r3h.tuning import workers

    calls = []

    def racing(url, **kw):
        calls.append(url)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(workers.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 'study.sqlite'}"
    assert workers.open_storage(url, heartbeat=None) == "storage" and len(calls) == 2

    def broken(url, **kw):
        calls.append(url)
        raise RuntimeError("no such dialect")

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(ValueError, match="storage: cannot open 'nosuch://x'"):
        workers.open_storage("nosuch://x", heartbeat=None)
    assert len(calls) == 1  # not a schema race: no second try

    def always_racing(url, **kw):
        calls.append(url)
        raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", always_racing)
    with pytest.raises(ValueError, match="storage: cannot open"):
        workers.open_storage(url, heartbeat=None)
    assert len(calls) == workers.SCHEMA_RETRIES + 1
