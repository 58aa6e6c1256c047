"""Sparse topology: Erdős–Rényi layer densities, initial masks and RigL/SET updates."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tinypolicy.models.sparse import SparseLinear, sparse_layers


def er_densities(shapes: Sequence[tuple[int, int]], sparsity: float) -> list[float]:
    """Erdős–Rényi densities eps*(in+out)/(in*out) whose weighted mean is 1 - sparsity.

    A layer whose density would exceed 1 is made dense and eps is re-solved for the rest,
    repeating until every density is at most 1.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    sizes = [i * o for o, i in shapes]
    target = (1.0 - sparsity) * sum(sizes)
    dense: set[int] = set()
    while True:
        budget = target - sum(sizes[j] for j in dense)
        raw = sum(i + o for j, (o, i) in enumerate(shapes) if j not in dense)
        eps = budget / raw if raw else 0.0
        densities = [1.0 if j in dense else eps * (i + o) / (i * o) for j, (o, i) in enumerate(shapes)]
        over = {j for j, d in enumerate(densities) if d > 1.0 and j not in dense}
        if not over:
            return densities
        dense |= over


def layer_nnz(shapes: Sequence[tuple[int, int]], sparsity: float) -> list[int]:
    """Integer nonzeros per layer, ER-distributed, summing exactly to round((1-S)*total)."""
    sizes = [i * o for o, i in shapes]
    exact = [d * n for d, n in zip(er_densities(shapes, sparsity), sizes)]
    nnz = [min(n, math.floor(x)) for x, n in zip(exact, sizes)]
    remainder = round((1.0 - sparsity) * sum(sizes)) - sum(nnz)
    by_fraction = sorted(range(len(shapes)), key=lambda j: exact[j] - nnz[j], reverse=True)
    while remainder > 0:
        for j in by_fraction:
            if remainder and nnz[j] < sizes[j]:
                nnz[j] += 1
                remainder -= 1
    return nnz


@torch.no_grad()
def random_masks(layers: Sequence[SparseLinear], sparsity: float, generator: torch.Generator) -> None:
    """Give each layer (each ensemble member separately) a uniformly random topology.

    This is the paper's "random sparse topology"; the official code instead keeps the
    largest initial weights. Weights are re-initialised afterwards by the caller so that
    their scale matches the new fan-in.
    """
    shapes = [(l.out_features, l.in_features) for l in layers]
    for layer, nnz in zip(layers, layer_nnz(shapes, sparsity)):
        flat = torch.zeros(layer.ensemble, layer.out_features * layer.in_features)
        for member in range(layer.ensemble):
            keep = torch.randperm(flat.shape[1], generator=generator)[:nnz]
            flat[member, keep] = 1.0
        layer.mask.copy_(flat.view_as(layer.mask))


def sparsify(net: torch.nn.Module, sparsity: float, orthogonal: bool, generator: torch.Generator) -> None:
    """Give `net` an ER-distributed random topology and re-initialise its weights for it."""
    layers = sparse_layers(net)
    if sparsity > 0:
        random_masks(layers, sparsity, generator)
    for layer in layers:
        layer.reset_parameters(orthogonal=orthogonal)


def drop_fraction(step: int, end: int, initial: float = 0.5) -> float:
    """Cosine-annealed RigL drop fraction: initial/2 * (1 + cos(pi * step / end)), 0 after end."""
    if step >= end:
        return 0.0
    return 0.5 * initial * (1.0 + math.cos(math.pi * step / end))


@torch.no_grad()
def rigl_update(layer: SparseLinear, dense_grad: torch.Tensor | None, fraction: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop the smallest-|w| fraction of active weights and grow as many new ones.

    Growth picks the largest |dense_grad| among positions not kept (RigL), or uniformly
    random positions when dense_grad is None (SET). New weights start at zero; a weight
    dropped and regrown in the same update keeps its value. The nnz of every ensemble
    member is unchanged. Returns a bool tensor marking positions whose membership changed
    (callers reset optimiser state there).
    """
    ensemble = layer.ensemble
    mask = layer.mask.view(ensemble, -1)
    weight = layer.weight.detach().view(ensemble, -1)  # shares the version counter: casts refresh
    active = int(mask[0].sum())
    k = math.floor(fraction * active)
    if k == 0 or active == mask.shape[1]:
        return torch.zeros_like(layer.mask, dtype=torch.bool)

    neg_inf = torch.tensor(-math.inf)
    keep_score = torch.where(mask.bool(), weight.abs(), neg_inf)
    kept = torch.zeros_like(mask, dtype=torch.bool)
    kept.scatter_(1, keep_score.topk(active - k, dim=1).indices, True)

    if dense_grad is None:
        grow_score = torch.rand(mask.shape, generator=generator)
    else:
        grow_score = dense_grad.view(ensemble, -1).abs()
    grow_score = torch.where(kept, neg_inf, grow_score)
    new_mask = kept.clone()
    new_mask.scatter_(1, grow_score.topk(k, dim=1).indices, True)

    was_active = mask.bool()
    changed = new_mask ^ was_active
    weight[changed] = 0.0  # dropped weights vanish, grown weights start at zero
    mask.copy_(new_mask.float())
    return changed.view_as(layer.mask)


def gmp_sparsity(step: int, start: int, end: int, final: float) -> float:
    """Zhu & Gupta's (2017) cubic schedule s_t = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3),
    from 0 at `start` to `final` at `end`: it prunes fast while the network is redundant and
    slowly as it approaches the target."""
    if step <= start:
        return 0.0
    if step >= end:
        return final
    return final * (1.0 - (1.0 - (step - start) / (end - start)) ** 3)


@torch.no_grad()
def magnitude_prune(layer: SparseLinear, nnz: int) -> torch.Tensor:
    """Keep the `nnz` largest-|w| weights among those alive in each ensemble member, zero
    the rest for good (pruning never regrows). Returns a bool tensor of the positions
    removed (callers reset optimiser state there)."""
    mask = layer.mask.view(layer.ensemble, -1)
    weight = layer.weight.detach().view(layer.ensemble, -1)  # shares the version counter: casts refresh
    alive = int(mask[0].sum())
    if nnz >= alive:
        return torch.zeros_like(layer.mask, dtype=torch.bool)
    score = torch.where(mask.bool(), weight.abs(), torch.tensor(-math.inf))
    kept = torch.zeros_like(mask, dtype=torch.bool)
    kept.scatter_(1, score.topk(nnz, dim=1).indices, True)
    removed = mask.bool() & ~kept
    weight[removed] = 0.0
    mask.copy_(kept.float())
    return removed.view_as(layer.mask)


def prune_to(layers: Sequence[SparseLinear], sparsity: float) -> list[torch.Tensor]:
    """Magnitude-prune each layer to its ER share of `sparsity` (the per-layer densities a
    sparse-from-scratch network of that sparsity has, so both end with the same shapes and
    FLOPs). Returns each layer's removed positions."""
    shapes = [(l.out_features, l.in_features) for l in layers]
    return [magnitude_prune(layer, nnz) for layer, nnz in zip(layers, layer_nnz(shapes, sparsity))]
