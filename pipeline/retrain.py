"""On-device retraining: behaviour cloning from a distilled dataset with NumPy alone.

A robot that receives a distilled dataset (pipeline/dataset.py) retrains its own policy,
at its own size, in about a second, with no PyTorch and no simulator, and writes an ONNX
actor with the export stage's contract (observation in env units in, action in env units
out, normalisation inside).

The trainer follows the dataset's `BCRecipe` exactly (it is the distillation inner loop
written by hand): an MLP mean mu(s) with a learned state-independent log_std, loss
(1/D) sum_i -log N(a_i | mu(s_i), exp(log_std)^2) over the full batch, global gradient
norm clipped, then Adam at a constant learning rate. Orthogonal init (gain sqrt(2) for
hidden layers, 0.01 for the output layer), zero biases, log_std 0. The deployed action is
clip(mu(normalised obs), -1, 1) mapped to the env's bounds; labels beyond [-1, 1] are
regression targets for the unclipped mean (HaDES's bang-bang labels).

`--mask ACTOR.onnx` keeps the sparse topology of an exported actor: the zero pattern of
its weight initializers becomes a fixed mask (the hidden sizes come from the mask), the
masked weights start and stay exactly zero. The mask's own activations and head (the
RLx2 actor is ReLU with a tanh head) are not copied: the hidden activation is the
dataset recipe's unless `--activation` is given, and the head is always the recipe's
linear mean clipped to [-1, 1].

Files a robot copies (nothing else from the repo is imported; needs numpy and onnx,
onnxruntime optional for the self-check):
    pipeline/__init__.py  pipeline/errors.py  pipeline/dataset.py  pipeline/retrain.py
    export/__init__.py    export/onnx_mlp.py
and runs `python -m pipeline.retrain DATASET --out policy.onnx` from the directory that
holds them. On the development side the same is `tinypolicy retrain ...`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.dataset import ACTIVATIONS, BCRecipe, Dataset, load_dataset
from pipeline.errors import UserError

ADAM_BETAS = (0.9, 0.999)
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6); matched for equal curves
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class MLPParams:
    """weights[l] is [out, in] (the ONNX writer's layout); log_std is [act_dim]."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    log_std: np.ndarray

    @property
    def sizes(self) -> list[int]:
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]


class _FlatLayout:
    """All parameters in one contiguous vector, with per-layer views.

    Clipping and Adam then cost a handful of vector operations per step however many
    layers there are, which keeps a 200-step run on a 64-64 net in tens of milliseconds.
    """

    def __init__(self, sizes: list[int], act_dim: int):
        self.shapes = [(o, i) for i, o in zip(sizes[:-1], sizes[1:])]
        self.act_dim = act_dim
        self.size = sum(o * i + o for o, i in self.shapes) + act_dim

    def views(self, flat: np.ndarray) -> MLPParams:
        weights, biases, offset = [], [], 0
        for out_dim, in_dim in self.shapes:
            weights.append(flat[offset:offset + out_dim * in_dim].reshape(out_dim, in_dim))
            offset += out_dim * in_dim
            biases.append(flat[offset:offset + out_dim])
            offset += out_dim
        return MLPParams(weights, biases, flat[offset:offset + self.act_dim])

    def pack(self, params: MLPParams, dtype) -> np.ndarray:
        flat = np.empty(self.size, dtype=dtype)
        target = self.views(flat)
        for dst, src in zip(target.weights + target.biases, params.weights + params.biases):
            dst[...] = src
        target.log_std[...] = params.log_std
        return flat


def _orthogonal(rng: np.random.Generator, out_dim: int, in_dim: int, gain: float) -> np.ndarray:
    """A (semi-)orthogonal [out, in] matrix, as torch.nn.init.orthogonal_ draws it."""
    flat = rng.standard_normal((max(out_dim, in_dim), min(out_dim, in_dim)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    return gain * (q if out_dim >= in_dim else q.T)


def init_params(sizes: list[int], seed: int, masks: list[np.ndarray] | None = None) -> MLPParams:
    """The recipe's init. With masks, weights outside a mask are zero and the kept ones are
    scaled by 1/sqrt(layer density), as models.sparse does, so that each unit's
    pre-activation scale matches the dense init's despite its fewer inputs."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for layer, (in_dim, out_dim) in enumerate(zip(sizes[:-1], sizes[1:])):
        gain = 0.01 if layer == len(sizes) - 2 else math.sqrt(2.0)
        weight = _orthogonal(rng, out_dim, in_dim, gain)
        if masks is not None:
            weight = weight * masks[layer] / math.sqrt(max(masks[layer].mean(), 1e-12))
        weights.append(weight.astype(np.float32))
        biases.append(np.zeros(out_dim, dtype=np.float32))
    return MLPParams(weights, biases, np.zeros(sizes[-1], dtype=np.float32))


def _activate(name: str, x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x) if name == "tanh" else np.maximum(x, 0.0, out=x)


def policy_mean(params: MLPParams, activation: str, states: np.ndarray) -> np.ndarray:
    """mu(s) in policy units, unclipped, for normalised states [N, obs_dim]."""
    h = states
    *hidden, last = range(len(params.weights))
    for layer in hidden:
        h = _activate(activation, h @ params.weights[layer].T + params.biases[layer])
    return h @ params.weights[last].T + params.biases[last]


def loss_and_grad(params: MLPParams, activation: str, states: np.ndarray, actions: np.ndarray,
                  grads: MLPParams | None = None) -> float:
    """The recipe's Gaussian NLL (mean over pairs, summed over action dims). With `grads`
    (same layout as `params`) its gradient is written there."""
    inputs = [states]
    h = states
    for weight, bias in zip(params.weights[:-1], params.biases[:-1]):
        h = _activate(activation, h @ weight.T + bias)
        inputs.append(h)
    mu = h @ params.weights[-1].T + params.biases[-1]

    inv_var = np.exp(-2.0 * params.log_std)
    error = actions - mu
    mean_sq = (error * error).mean(axis=0)
    loss = float(0.5 * (mean_sq * inv_var).sum() + params.log_std.sum() + HALF_LOG_2PI * len(inv_var))
    if grads is None:
        return loss

    grads.log_std[...] = 1.0 - mean_sq * inv_var
    delta = error * (-inv_var / states.shape[0])  # dL/dmu
    for layer in range(len(params.weights) - 1, -1, -1):
        np.matmul(delta.T, inputs[layer], out=grads.weights[layer])
        delta.sum(axis=0, out=grads.biases[layer])
        if layer:
            delta = delta @ params.weights[layer]
            h = inputs[layer]
            delta *= (1.0 - h * h) if activation == "tanh" else (h > 0)
    return loss


def train_bc(states: np.ndarray, actions: np.ndarray, recipe: BCRecipe, init: MLPParams,
             masks: list[np.ndarray] | None = None, dtype=np.float32) -> tuple[MLPParams, np.ndarray]:
    """Full-batch BC for `recipe.steps` steps from `init`.

    Returns the trained parameters (fresh arrays) and the loss before each step, the curve
    the torch inner loop (the HaDES trainer) reports for the same init.
    """
    layout = _FlatLayout(init.sizes, init.log_std.shape[0])
    flat = layout.pack(init, dtype)
    grad = np.zeros_like(flat)
    params, grads = layout.views(flat), layout.views(grad)
    grad_mask = None
    if masks is not None:
        mask_params = MLPParams([m.astype(dtype) for m in masks], [np.ones_like(b) for b in init.biases],
                                np.ones_like(init.log_std))
        grad_mask = layout.pack(mask_params, dtype)
        flat *= grad_mask
    states, actions = states.astype(dtype, copy=False), actions.astype(dtype, copy=False)

    beta1, beta2 = ADAM_BETAS
    exp_avg, exp_avg_sq = np.zeros_like(flat), np.zeros_like(flat)
    step_dir, denom = np.empty_like(flat), np.empty_like(flat)
    losses = np.empty(recipe.steps)
    for step in range(1, recipe.steps + 1):
        losses[step - 1] = loss_and_grad(params, recipe.activation, states, actions, grads)
        if grad_mask is not None:
            grad *= grad_mask
        norm = math.sqrt(float(np.dot(grad, grad)))
        clip = recipe.grad_clip / (norm + CLIP_EPS)
        if clip < 1.0:
            grad *= clip
        # Adam exactly as torch.optim.Adam computes it (bias corrections folded into the step).
        exp_avg *= beta1
        exp_avg += (1.0 - beta1) * grad
        exp_avg_sq *= beta2
        np.multiply(grad, grad, out=step_dir)
        exp_avg_sq += (1.0 - beta2) * step_dir
        np.sqrt(exp_avg_sq, out=denom)
        denom /= math.sqrt(1.0 - beta2 ** step)
        denom += recipe.adam_eps
        np.divide(exp_avg, denom, out=step_dir)
        step_dir *= recipe.lr / (1.0 - beta1 ** step)
        flat -= step_dir
    trained = layout.views(flat.copy())
    return trained, losses
