"""Batched behaviour cloning: P independent policies trained at once on P datasets.

This is the HaDES inner loop (`tinypolicy.ondevice.dataset.BCRecipe`) written as one batched
computation: every layer's weights are stacked over the population ([P, out, in]) and the
forward pass is a batched matmul, so a whole ES population trains in a few tensor ops
instead of a Python loop over members. The on-device NumPy trainer follows the same
recipe step for step; this module is the reference it is tested against.

One BC step, per member p (members never interact):
    mu      = MLP_p(states_p)                           (hidden activation, linear output)
    loss_p  = mean_i sum_j [ (a_ij - mu_ij)^2 / (2 exp(2 log_std_pj)) + log_std_pj + log(2 pi)/2 ]
    g       = grad of loss_p w.r.t. member p's weights, biases and log_std
    g      *= min(1, grad_clip / (||g||_2 + 1e-6))       (norm over all of member p's parameters)
    Adam (beta1 0.9, beta2 0.999, eps = recipe.adam_eps, bias-corrected, constant lr)
The loss recorded for step t is loss_p before update t. With a fixed sparse topology (masks),
the weights outside it start at zero and their gradients are zeroed before the clip, so Adam
never moves them (zero moments give a zero update).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch.nn import functional as F

ADAM_BETAS = (0.9, 0.999)
CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_
HIDDEN_GAIN = math.sqrt(2.0)
OUTPUT_GAIN = 0.01
_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "elu": F.elu}
Activation = str | tuple[str, ...]  # one hidden activation for all members, or one per member


# Deliberate twin: ondevice/retrain.py trains the same recipe in NumPy (a robot has no torch),
# with the same parameter layout; tests/test_retrain.py checks the two step for step.
@dataclass
class BCParams:
    """Parameters of P MLP policies: weights[k] [P, out, in], biases[k] [P, out], log_std [P, act]."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    log_std: torch.Tensor

    @property
    def population(self) -> int:
        return self.log_std.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases, self.log_std]

    def detach(self) -> BCParams:
        return BCParams([w.detach().clone() for w in self.weights], [b.detach().clone() for b in self.biases],
                        self.log_std.detach().clone())

    def member(self, index: int) -> BCParams:
        """Member `index` alone, as a population of one."""
        return self.take([index])

    def take(self, indices) -> BCParams:
        """The members at `indices` (repeats allowed), in that order."""
        pick = torch.as_tensor(indices, dtype=torch.long)
        return BCParams([w[pick] for w in self.weights], [b[pick] for b in self.biases], self.log_std[pick])

    @staticmethod
    def stack(members: list[BCParams]) -> BCParams:
        return BCParams([torch.cat(ws) for ws in zip(*(m.weights for m in members))],
                        [torch.cat(bs) for bs in zip(*(m.biases for m in members))],
                        torch.cat([m.log_std for m in members]))

    def numpy(self) -> dict[str, np.ndarray]:
        """Flat dict of float32 arrays (w0, b0, w1, b1, ..., log_std), e.g. for rollout workers."""
        arrays = {}
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"w{k}"] = w.detach().numpy().astype(np.float32)
            arrays[f"b{k}"] = b.detach().numpy().astype(np.float32)
        arrays["log_std"] = self.log_std.detach().numpy().astype(np.float32)
        return arrays


def init_params(population: int, obs_dim: int, act_dim: int, hidden: tuple[int, ...],
                seed: int | torch.Generator, masks: list[torch.Tensor] | None = None) -> BCParams:
    """Orthogonal init (gain sqrt(2) hidden, 0.01 output), zero biases, log_std 0; one draw per member.

    With `masks` ([out, in] per layer, shared by all members), weights outside them are zero and
    the kept ones are scaled by 1/sqrt(layer density), as the on-device trainer does."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    sizes = [obs_dim, *hidden, act_dim]
    weights, biases = [], []
    for k, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        gain = OUTPUT_GAIN if k == len(sizes) - 2 else HIDDEN_GAIN
        layer = torch.empty(population, fan_out, fan_in)
        for p in range(population):
            torch.nn.init.orthogonal_(layer[p], gain=gain, generator=generator)
        if masks is not None:
            mask = masks[k].to(layer.dtype)
            layer = layer * mask / math.sqrt(max(float(mask.mean()), 1e-12))
        weights.append(layer)
        biases.append(torch.zeros(population, fan_out))
    return BCParams(weights, biases, torch.zeros(population, act_dim))


def _activation(activation: Activation):
    """The hidden activation as a function of [P, B, width] pre-activations."""
    if isinstance(activation, str):
        return _ACTIVATIONS[activation]
    names = list(dict.fromkeys(activation))
    picks = [torch.tensor([a == name for a in activation]).view(-1, 1, 1) for name in names[1:]]

    def mixed(x: torch.Tensor) -> torch.Tensor:
        # Every activation on every member, then each member's own: a few elementwise kernels
        # cost less than training each activation's members as a separate batch.
        y = _ACTIVATIONS[names[0]](x)
        for name, pick in zip(names[1:], picks):
            y = torch.where(pick, _ACTIVATIONS[name](x), y)
        return y
    return mixed


def policy_mean(params: BCParams, states: torch.Tensor, activation: Activation = "tanh") -> torch.Tensor:
    """mu for every member: states [P, B, obs] -> [P, B, act]."""
    act = _activation(activation)
    x = states
    last = len(params.weights) - 1
    for k, (w, b) in enumerate(zip(params.weights, params.biases)):
        x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        if k < last:
            x = act(x)
    return x


def gaussian_nll(params: BCParams, states: torch.Tensor, actions: torch.Tensor, activation: Activation) -> torch.Tensor:
    """Per-member mean negative log-likelihood of the labels, [P]."""
    mu = policy_mean(params, states, activation)
    log_std = params.log_std.unsqueeze(1)
    per_pair = (0.5 * (actions - mu) ** 2 * torch.exp(-2.0 * log_std) + log_std
                + 0.5 * math.log(2.0 * math.pi)).sum(-1)
    return per_pair.mean(-1)


def bc_steps(states: torch.Tensor, actions: torch.Tensor, init: BCParams, lr: float, activation: Activation = "tanh",
             adam_eps: float = 1e-5, grad_clip: float = 0.5, masks: list[torch.Tensor] | None = None,
             ) -> Iterator[tuple[BCParams, torch.Tensor]]:
    """BC one step at a time, without end: yields (the parameters after the step, the loss [P]
    before it). The parameters are live tensors that the next step updates in place (detach
    what you keep); a run of n steps is the first n of a longer run at the same lr.

    states [P, D, obs] and actions [P, D, act] (a single [D, *] dataset is broadcast to all
    members); `masks` ([out, in] per layer) fix a sparse topology for all members; `init`
    is not modified. Float32 throughout.
    """
    population = init.population
    states = torch.as_tensor(states, dtype=torch.float32)
    actions = torch.as_tensor(actions, dtype=torch.float32)
    if states.dim() == 2:
        states, actions = states.expand(population, *states.shape), actions.expand(population, *actions.shape)
    if states.shape[0] != population or actions.shape[:2] != states.shape[:2]:
        raise ValueError(f"states {tuple(states.shape)} and actions {tuple(actions.shape)} "
                         f"do not match a population of {population}")
    params = init.detach()
    grad_masks = [None] * len(params.weights)
    if masks is not None:
        grad_masks = [m.to(torch.float32) for m in masks]
        for w, m in zip(params.weights, grad_masks):
            w.mul_(m)
    tensors = params.tensors()
    for t in tensors:
        t.requires_grad_(True)
    optimiser = torch.optim.Adam(tensors, lr=lr, betas=ADAM_BETAS, eps=adam_eps)
    while True:
        loss = gaussian_nll(params, states, actions, activation)
        grads = list(torch.autograd.grad(loss.sum(), tensors))  # members are independent: sum = per-member grads
        for k, m in enumerate(grad_masks):
            if m is not None:
                grads[k] = grads[k] * m
        sq_norm = sum(g.pow(2).reshape(population, -1).sum(1) for g in grads)
        scale = (grad_clip / (sq_norm.sqrt() + CLIP_EPS)).clamp(max=1.0)
        for t, g in zip(tensors, grads):
            t.grad = g * scale.view(-1, *([1] * (g.dim() - 1)))
        optimiser.step()
        yield params, loss.detach()


def train_bc(states: torch.Tensor, actions: torch.Tensor, init: BCParams, steps: int, lr: float,
             activation: Activation = "tanh", adam_eps: float = 1e-5, grad_clip: float = 0.5,
             masks: list[torch.Tensor] | None = None) -> tuple[BCParams, torch.Tensor]:
    """Train every member on its own dataset for `steps` steps (`bc_steps`); returns (trained
    parameters, loss curve [P, steps])."""
    losses = torch.empty(init.population, steps)
    params = init
    for step, (params, loss) in zip(range(steps), bc_steps(states, actions, init, lr, activation, adam_eps,
                                                           grad_clip, masks)):
        losses[:, step] = loss
    return params.detach(), losses
