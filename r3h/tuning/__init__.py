"""Tuning a merging method's options: a grid sweep and an Optuna search over one member runner.

- `members`: `MemberRunner`, a method config built once per member (a grid point, a trial):
  options checked, member configs, the SVD-cache folder, the program's Fabric.
- `sweep`: `MergeSweep` (`method=sweep`), one merged model per grid point.
- `space`, `objective`, `selection`: what a search tries, what it maximises (the 3H
  preference S), which trial it returns (Pareto front, one-standard-error rule).
- `workers`: the study's storage, shared by any number of worker processes.
- `search`: `MergeSearch` (`method=search`), the Optuna loop.
- `report`: the one writer of their reports.
"""

from r3h.tuning.members import MemberRunner
from r3h.tuning.search import MergeSearch
from r3h.tuning.sweep import MergeSweep

__all__ = ["MemberRunner", "MergeSearch", "MergeSweep"]
