"""Exact removal of dead hidden neurons, with torch-pruning doing the structural surgery.

A hidden neuron is dead when either
- its outgoing weights are all zero: nothing downstream reads it, so it is dropped; or
- its incoming weights are all zero: it emits the constant c = act(bias); c times its
  outgoing column is added to the next layer's bias, then it is dropped.
Dropping neurons can kill others (a neuron whose only reader was dropped), so the two
rules repeat until nothing changes. Inputs and action outputs are never touched.

torch-pruning's DependencyGraph couples layer k's output rows with layer k+1's input
columns (and anything else that reads them), so one group prune keeps the graph
consistent; the rules above only choose which indices to give it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from tinypolicy.export.mlp import MLPPolicy


@dataclass(frozen=True)
class PruneResult:
    policy: MLPPolicy                 # the pruned policy
    kept: list[list[int]]             # per hidden layer: indices of the original neurons kept
    folded: list[int]                 # per hidden layer: constant neurons folded into the next bias


def _dead_neurons(linears: list[nn.Linear], activation: nn.Module) -> list[tuple[int, list[int], int]]:
    """(hidden layer, neuron indices to remove now, how many of them were folded), after
    folding the constant neurons' outputs into the next layer's bias."""
    plan = []
    with torch.no_grad():
        for k in range(len(linears) - 1):
            layer, reader = linears[k], linears[k + 1]
            silent = (reader.weight == 0).all(dim=0)          # nobody reads it
            constant = (layer.weight == 0).all(dim=1)         # it reads nothing
            to_fold = torch.nonzero(constant & ~silent).flatten().tolist()
            for j in to_fold:
                value = activation(layer.bias[j:j + 1])
                reader.bias += reader.weight[:, j] * value
                reader.weight[:, j] = 0.0
            dead = torch.nonzero(silent | constant).flatten().tolist()
            if len(dead) == layer.out_features:
                # The layer is fully dead: the policy is constant from here on. torch-pruning
                # keeps at least one channel, so keep neuron 0 as an exact zero (no inputs,
                # zero bias, no readers) and drop the rest.
                layer.weight[0] = 0.0
                layer.bias[0] = 0.0
                reader.weight[:, 0] = 0.0
                dead = dead[1:]
            if dead:
                plan.append((k, dead, len(to_fold)))
    return plan


def remove_dead_neurons(policy: MLPPolicy) -> PruneResult:
    """Remove every dead hidden neuron of `policy`; the result computes the same function
    up to float32 round-off in the folded biases."""
    if len(policy.weights) == 1:  # no hidden neurons
        return PruneResult(policy, [], [])
    net = policy.trunk()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    # The dependency graph traces with autograd: never build it under no_grad.
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, policy.obs_dim))
    kept = [list(range(l.out_features)) for l in linears[:-1]]
    folded = [0] * len(kept)
    while True:
        plan = _dead_neurons(linears, net[1])
        if not plan:
            break
        for k, dead, n_folded in plan:
            folded[k] += n_folded
            group = graph.get_pruning_group(linears[k], tp.prune_linear_out_channels, idxs=dead)
            group.prune()
            gone = set(dead)
            kept[k] = [n for i, n in enumerate(kept[k]) if i not in gone]
    weights = [l.weight.detach().numpy().copy() for l in linears]
    biases = [l.bias.detach().numpy().copy() for l in linears]
    return PruneResult(policy.with_layers(weights, biases), kept, folded)
