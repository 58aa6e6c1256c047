"""Networks, sparse layers, masks and their FLOPs (PyTorch only).

No environment or training-loop code: the export stage and the stages import it on its own.
Above `tinypolicy.ondevice` and below everything else in the layering (docs/DESIGN.md).
"""
from tinypolicy.models.sparse import SparseLinear, sparse_layers, weight_sparsity, apply_masks
from tinypolicy.models.topology import er_densities, layer_nnz, random_masks, sparsify, drop_fraction, rigl_update
from tinypolicy.models.networks import DeterministicActor, GaussianActor, TwinCritic, make_actor

__all__ = [
    "SparseLinear", "sparse_layers", "weight_sparsity", "apply_masks",
    "er_densities", "layer_nnz", "random_masks", "sparsify", "drop_fraction", "rigl_update",
    "DeterministicActor", "GaussianActor", "TwinCritic", "make_actor",
]
