"""r3h's merging methods, each a fusion_bench `BaseAlgorithm` (config name → class):

weight_average → WeightAverage, rewarded_soup → RewardedSoup,
r3h_task_arithmetic → TaskArithmetic, ties → TiesMerging, dare → DareMerging,
dare_ties → DareTies, della → DellaMerging, della_ties → DellaTiesMerging,
breadcrumbs → BreadcrumbsMerging, breadcrumbs_ties → BreadcrumbsTiesMerging,
model_stock → ModelStockMerging, tsvm → TSVM, r_tsvm → RTSVM; beyond the paper:
iso_c → IsoC, iso_cts → IsoCTS, wudi → WUDI, ram → RAM, ram_plus → RAMPlus. Any of them
calibrates its merged matrices with SVC through `calibration: svc` (`MergeAlgorithm`).

`RESM` is `RTSVM` under the name arXiv 2502.06876v3 gives it ("Reweighting Enhanced task
Singular Merging"); its configs `resm`, `resm_no_outlier`, `resm_no_rank` are those of
`r_tsvm`, composed through Hydra `defaults` (ALIASES: alias config name → config name).
"""

from r3h.methods.base import MergeAlgorithm
from r3h.methods.breadcrumbs import BreadcrumbsMerging, BreadcrumbsTiesMerging
from r3h.methods.dare import DareMerging, DareTies
from r3h.methods.isotropic import IsoC, IsoCTS
from r3h.methods.della import DellaMerging, DellaTiesMerging
from r3h.methods.model_stock import ModelStockMerging
from r3h.methods.ram import RAM, RAMPlus
from r3h.methods.rewarded_soup import RewardedSoup
from r3h.methods.task_arithmetic import TaskArithmetic
from r3h.methods.ties import TiesMerging
from r3h.methods.tsvm import RTSVM, TSVM
from r3h.methods.weight_average import WeightAverage
from r3h.methods.wudi import WUDI

METHODS = {
    "weight_average": WeightAverage,
    "rewarded_soup": RewardedSoup,
    "r3h_task_arithmetic": TaskArithmetic,
    "ties": TiesMerging,
    "dare": DareMerging,
    "dare_ties": DareTies,
    "della": DellaMerging,
    "della_ties": DellaTiesMerging,
    "breadcrumbs": BreadcrumbsMerging,
    "breadcrumbs_ties": BreadcrumbsTiesMerging,
    "model_stock": ModelStockMerging,
    "tsvm": TSVM,
    "r_tsvm": RTSVM,
    "iso_c": IsoC,
    "iso_cts": IsoCTS,
    "wudi": WUDI,
    "ram": RAM,
    "ram_plus": RAMPlus,
}

#: the merges published after the paper (the README's "beyond the paper" group), and among them
#: the subspace merges that followed TSVM; the toy's verdict keeps the paper's claims among the
#: paper's methods and asks of these its own question
BEYOND_PAPER = ["iso_c", "iso_cts", "wudi", "ram", "ram_plus"]
NEWER_SUBSPACE = ["iso_c", "iso_cts", "wudi"]

RESM = RTSVM
ALIASES = {"resm": "r_tsvm", "resm_no_outlier": "r_tsvm_no_outlier", "resm_no_rank": "r_tsvm_no_rank"}

__all__ = ["METHODS", "ALIASES", "BEYOND_PAPER", "NEWER_SUBSPACE", "MergeAlgorithm", "RESM", *[c.__name__ for c in METHODS.values()]]
