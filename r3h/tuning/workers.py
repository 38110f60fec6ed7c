"""A search's study, shared by any number of worker processes (Optuna's RDB storage).

Every worker opens the same study (`storage`: any SQLAlchemy URL, SQLite on one machine,
PostgreSQL or MySQL on a cluster) and runs trials until the study, all workers together,
holds `n_trials` completed ones:

- **The budget is the study's total.** Before each trial a worker counts the completed and
  the running trials; it starts one only while they fall short of `n_trials`, and waits
  while the rest of the budget is running elsewhere. Two workers can still ask at the same
  instant: a trial then checks that the completed trials and the running ones created before
  it (lower numbers) leave it room, else it ends as pruned (`BudgetTaken`) without merging.
  (Optuna's `MaxTrialsCallback` stops a worker only after a trial ends, so N workers
  overshoot by up to N − 1.)
- **A killed worker's trial is retried.** A running trial sends a heartbeat every
  `heartbeat` seconds; one silent for twice that is marked failed by the next worker that
  looks (Optuna's `fail_stale_trials`) and enqueued again with the same options
  (`RetryHeartbeatStaleTrialCallback`, up to 3 times). Failed trials do not count. (Optuna
  counts a running trial that never sent a heartbeat as alive: a worker killed in the instant
  between starting a trial and its first heartbeat leaves that trial running, and the other
  workers wait for it; mark it failed by hand, `study.tell(number, state=TrialState.FAIL)`.)
- **SQLite** takes one writer at a time: a worker waits up to 60 s for the lock
  (`connect_args.timeout`) instead of failing with "database is locked".
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Optional

log = logging.getLogger(__name__)

__all__ = ["open_storage", "BudgetTaken", "check_budget", "run_trials"]

#: seconds a SQLite writer waits for the lock
SQLITE_TIMEOUT_S = 60
#: retries of a trial whose worker died
MAX_RETRY = 3
#: attempts at opening a storage whose schema another worker is creating at the same time
SCHEMA_RETRIES = 5


class BudgetTaken(Exception):
    """A trial that found the study's budget taken by trials started before it."""


def open_storage(url: str, heartbeat: Optional[int] = 30):
    """Optuna's RDB storage of `url` with heartbeats every `heartbeat` seconds (None: none)
    and the retry of stale trials."""
    import optuna
    from optuna.storages import RDBStorage

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if str(url).startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats and retries are "experimental" in Optuna's words since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        kwargs = {}
        if heartbeat:
            stale = "heartbeat_stale_trial_callback" if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback") \
                else "failed_trial_callback"
            kwargs = {"heartbeat_interval": int(heartbeat), "grace_period": 2 * int(heartbeat),
                      stale: retry(max_retry=MAX_RETRY)}
        for attempt in range(SCHEMA_RETRIES + 1):
            try:
                return RDBStorage(str(url), engine_kwargs=engine_kwargs, **kwargs)
            except Exception as exc:
                # Two workers that open a new database at once both create Optuna's schema: the
                # loser's INSERT INTO alembic_version fails (IntegrityError, or "table already
                # exists"); once the winner's schema is there, opening again succeeds.
                if attempt < SCHEMA_RETRIES and _is_schema_race(exc):
                    log.info("storage %s: schema created by another worker, opening again", url)
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise ValueError(f"storage: cannot open {url!r} as an Optuna RDB storage (a SQLAlchemy URL such "
                                 f"as sqlite:///study.sqlite or postgresql://user@host/db): {exc}") from exc


def _is_schema_race(exc: Exception) -> bool:
    """Whether `exc` is the database error of a schema another worker is creating at the same time."""
    try:
        from sqlalchemy.exc import IntegrityError, OperationalError
    except ImportError:  # pragma: no cover - optuna's RDB storage needs sqlalchemy
        return False
    return isinstance(exc, (IntegrityError, OperationalError))


def _count(study, *states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def check_budget(study, trial, n_trials: Optional[int]) -> None:
    """Raise `BudgetTaken` when the completed trials and the running ones numbered below
    `trial` already fill `n_trials`."""
    from optuna.trial import TrialState

    if n_trials is None:
        return
    earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
               if t.state == TrialState.COMPLETE or t.number < trial.number]
    if len(earlier) >= n_trials:
        raise BudgetTaken(f"trial {trial.number}: the study's {n_trials} trials are taken by other workers")


def run_trials(study, objective: Callable, n_trials: Optional[int], timeout: Optional[float],
               poll: float = 1.0) -> None:
    """Run `objective` trials of `study` until it holds `n_trials` completed trials (all
    workers together) or `timeout` seconds have passed (no trial starts after that)."""
    import optuna
    from optuna.trial import TrialState

    t0 = time.monotonic()

    def guarded(trial):
        try:
            check_budget(study, trial, n_trials)
        except BudgetTaken as exc:
            raise optuna.TrialPruned(str(exc)) from None
        return objective(trial)

    waiting = False
    while timeout is None or time.monotonic() - t0 < timeout:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        done = _count(study, TrialState.COMPLETE)
        if n_trials is not None and done >= n_trials:
            return
        running = _count(study, TrialState.RUNNING)
        if n_trials is not None and done + running >= n_trials:
            if not waiting:
                log.info("search: %d trials done, %d running elsewhere: waiting for them", done, running)
            waiting = True
            time.sleep(poll)
            continue
        waiting = False
        study.optimize(guarded, n_trials=1, catch=())
