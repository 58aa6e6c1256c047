"""Analytic FLOPs and parameter counts of sparse networks, from their masks.

A multiply-accumulate is two FLOPs; a sparse layer costs 2 * nnz per sample plus its
bias. Training FLOPs follow RLx2's accounting: forward, plus about twice that backward.
"""
from __future__ import annotations

from torch import nn

from models import sparse_layers


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
