"""Networks, sparse layers, masks and their FLOPs (PyTorch only).

No environment or training-loop code: the export stage and the stages import it on its own.
Above `tinypolicy.ondevice` and below everything else in the layering (docs/DESIGN.md).
"""
from tinypolicy.models.networks import DeterministicActor, GaussianActor, TwinCritic, make_actor
from tinypolicy.models.sparse import SparseLinear, apply_masks, sparse_layers, weight_sparsity
from tinypolicy.models.topology import (
    drop_fraction,
    er_densities,
    gmp_sparsity,
    layer_nnz,
    magnitude_prune,
    prune_to,
    random_masks,
    rigl_update,
    sparsify,
)

__all__ = [
    "DeterministicActor",
    "GaussianActor",
    "SparseLinear",
    "TwinCritic",
    "apply_masks",
    "drop_fraction",
    "er_densities",
    "gmp_sparsity",
    "layer_nnz",
    "magnitude_prune",
    "make_actor",
    "prune_to",
    "random_masks",
    "rigl_update",
    "sparse_layers",
    "sparsify",
    "weight_sparsity",
]
