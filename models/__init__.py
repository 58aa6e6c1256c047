"""Networks, sparse layers and masks.

Everything here is plain PyTorch with no environment or training-loop code, so the
export stage and the on-device tools can import it on its own.
"""
from models.sparse import SparseLinear, sparse_layers, weight_sparsity, apply_masks
from models.topology import er_densities, layer_nnz, random_masks, drop_fraction, rigl_update
from models.networks import DeterministicActor, GaussianActor, TwinCritic, make_actor

__all__ = [
    "SparseLinear", "sparse_layers", "weight_sparsity", "apply_masks",
    "er_densities", "layer_nnz", "random_masks", "drop_fraction", "rigl_update",
    "DeterministicActor", "GaussianActor", "TwinCritic", "make_actor",
]
