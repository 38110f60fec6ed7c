"""Pure tensor functions behind the merging methods.

Everything here works on one tensor name at a time: the base tensor θ0 and the
experts' task vectors τi = θi − θ0, in float32. No pools, configs or I/O.
"""

from r3h.ops.consensus import disjoint_merge, sign_consensus_mask
from r3h.ops.isotropic import iso_c, iso_cts, iso_cts_split
from r3h.ops.model_stock import model_stock_ratio
from r3h.ops.ram import overlap_counts, ram_lambda, ram_merge, ram_rho, update_masks
from r3h.ops.rng import tensor_generator
from r3h.ops.svc import svc, svc_factors
from r3h.ops.sparsify import (
    breadcrumbs_mask,
    dare_mask,
    magnitude_mask,
    magprune_mask,
    rescale_kept,
)
from r3h.ops.wudi import wudi, wudi_statistics

__all__ = [
    "breadcrumbs_mask",
    "dare_mask",
    "disjoint_merge",
    "iso_c",
    "iso_cts",
    "iso_cts_split",
    "magnitude_mask",
    "magprune_mask",
    "model_stock_ratio",
    "overlap_counts",
    "ram_lambda",
    "ram_merge",
    "ram_rho",
    "rescale_kept",
    "sign_consensus_mask",
    "svc",
    "svc_factors",
    "tensor_generator",
    "update_masks",
    "wudi",
    "wudi_statistics",
]
