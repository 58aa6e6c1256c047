"""Analytic FLOPs and parameter counts of sparse networks, from their masks.

A multiply-accumulate is two FLOPs; a sparse layer costs 2 * nnz per sample plus its
bias. Training FLOPs follow RLx2's accounting: forward, plus about twice that backward.
"""
from __future__ import annotations

from torch import nn

from tinypolicy.models import sparse_layers


def inference_flops(net: nn.Module, sparse: bool = True) -> int:
    """FLOPs of one forward pass on one sample (per ensemble member, summed)."""
    total = 0
    for layer in sparse_layers(net):
        weights = int(layer.mask.sum()) if sparse else layer.mask.numel()
        total += 2 * weights + layer.bias.numel()
    return total


def weight_count(net: nn.Module, sparse: bool = True) -> int:
    """Weights of the sparse layers (biases excluded), nonzero only when `sparse`."""
    return sum(int(l.mask.sum()) if sparse else l.mask.numel() for l in sparse_layers(net))


def training_flops_per_step(actor: nn.Module, critic: nn.Module, policy_freq: int, sparse: bool = True) -> float:
    """FLOPs of one TD3 env step's updates (batch of one): target (actor + twin critic
    forward), critic forward + backward (about 3x forward), and every `policy_freq`
    steps an actor update (actor 3x forward, one critic head forward and backward)."""
    a, c = inference_flops(actor, sparse), inference_flops(critic, sparse)
    return (a + c) + 3 * c + (3 * a + 1.5 * c) / policy_freq
