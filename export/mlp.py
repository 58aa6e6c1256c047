"""The deployable form of an actor: a plain MLP in NumPy arrays, with its I/O scaling.

Every export target (ONNX, C, int8) is written from an `MLPPolicy`, so the PyTorch
module's quirks (ensemble dimension, masks as buffers, SAC's log-std head) are resolved
once, here. The policy maps observations in env units to actions in env units:

    x = (obs - obs_mean) / obs_std
    x = act(W_k x + b_k)            for every hidden layer (act = relu or tanh)
    z = W_L x + b_L
    actions = squash(z) * (high - low) / 2 + (high + low) / 2

with squash = tanh or clip(-1, 1), exactly as `tinypolicy.ondevice.onnx_mlp.policy_onnx` writes it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import torch
from torch import nn

from tinypolicy.models import DeterministicActor, GaussianActor, sparse_layers
from tinypolicy.ondevice.onnx_mlp import HIDDEN_ACTIVATIONS, OUTPUTS, policy_onnx

TORCH_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}  # every HIDDEN_ACTIVATIONS entry


@dataclass(frozen=True)
class MLPPolicy:
    weights: tuple[np.ndarray, ...]        # float32 [out, in] per layer
    biases: tuple[np.ndarray, ...]         # float32 [out] per layer
    hidden_activation: str
    output: str
    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_low: np.ndarray
    action_high: np.ndarray

    def __post_init__(self):
        if self.hidden_activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"hidden_activation must be one of {sorted(HIDDEN_ACTIVATIONS)}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}")
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError("one bias per weight matrix, at least one layer")
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {k}: weight {w.shape} and bias {b.shape} do not fit")
            if k and w.shape[1] != self.weights[k - 1].shape[0]:
                raise ValueError(f"layer {k} takes {w.shape[1]} inputs, layer {k - 1} gives "
                                 f"{self.weights[k - 1].shape[0]}")
        for name in ("obs_mean", "obs_std"):
            if getattr(self, name).shape != (self.obs_dim,):
                raise ValueError(f"{name} must have shape ({self.obs_dim},)")
        for name in ("action_low", "action_high"):
            if getattr(self, name).shape != (self.act_dim,):
                raise ValueError(f"{name} must have shape ({self.act_dim},)")

    @property
    def obs_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def act_dim(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def widths(self) -> list[int]:
        return [self.obs_dim, *(w.shape[0] for w in self.weights)]

    def nnz(self) -> list[int]:
        return [int(np.count_nonzero(w)) for w in self.weights]

    def macs(self) -> int:
        """Multiply-accumulates of one dense evaluation of these shapes."""
        return sum(w.size for w in self.weights)

    def with_layers(self, weights, biases) -> MLPPolicy:
        return replace(self, weights=tuple(weights), biases=tuple(biases))

    def onnx(self, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        return policy_onnx(list(self.weights), list(self.biases), self.hidden_activation, self.output,
                           self.obs_mean, self.obs_std, self.action_low, self.action_high, metadata)

    def trunk(self) -> nn.Sequential:
        """The layers as nn.Linear and activation modules (what torch-pruning operates on)."""
        modules: list[nn.Module] = []
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            linear = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(w))
                linear.bias.copy_(torch.from_numpy(b))
            modules.append(linear)
            if k < len(self.weights) - 1:
                modules.append(TORCH_ACTIVATIONS[self.hidden_activation]())
        return nn.Sequential(*modules).float().eval()

    def torch_module(self) -> TorchPolicy:
        return TorchPolicy(self)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Float32 PyTorch forward pass of an observation batch [n, obs_dim] (the reference
        the exported files are checked against)."""
        with torch.no_grad():
            return self.torch_module()(torch.as_tensor(obs, dtype=torch.float32)).numpy()


class TorchPolicy(nn.Module):
    """An `MLPPolicy` as a PyTorch module: obs [batch, obs_dim] -> actions, env units."""

    def __init__(self, policy: MLPPolicy):
        super().__init__()
        self.trunk = policy.trunk()
        self.squash = torch.tanh if policy.output == "tanh" else (lambda z: torch.clamp(z, -1.0, 1.0))
        low, high = torch.from_numpy(policy.action_low), torch.from_numpy(policy.action_high)
        self.register_buffer("obs_mean", torch.from_numpy(policy.obs_mean).float())
        self.register_buffer("obs_std", torch.from_numpy(policy.obs_std).float())
        self.register_buffer("action_scale", ((high - low) / 2.0).float())
        self.register_buffer("action_offset", ((high + low) / 2.0).float())
        self.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = self.trunk((obs - self.obs_mean) / self.obs_std)
        return self.squash(z) * self.action_scale + self.action_offset


def policy_from_actor(actor: torch.nn.Module) -> MLPPolicy:
    """The deterministic policy of a TD3 or SAC actor, with its masked (dense-shaped) weights,
    its hidden activation, output squashing and observation normalisation (an imported actor's
    may differ from ReLU, tanh and none).

    SAC's actor acts with tanh(mean): the log-std rows of its last layer never reach the
    action, so they are dropped here.
    """
    if not isinstance(actor, (DeterministicActor, GaussianActor)):
        raise TypeError(f"cannot export a {type(actor).__name__}")
    weights, biases = [], []
    for layer in sparse_layers(actor):
        weights.append((layer.weight.detach()[0] * layer.mask[0]).float().numpy().copy())
        biases.append(layer.bias.detach()[0].float().numpy().copy())
    if isinstance(actor, GaussianActor):
        weights[-1], biases[-1] = weights[-1][:actor.act_dim].copy(), biases[-1][:actor.act_dim].copy()
    scale = actor.action_scale.float().numpy()
    offset = actor.action_bias.float().numpy()
    obs_dim = weights[0].shape[1]
    obs_mean, obs_std = ((actor.obs_mean.float().numpy(), actor.obs_std.float().numpy()) if actor.obs_norm else
                         (np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32)))
    return MLPPolicy(tuple(weights), tuple(biases), actor.net.activation, actor.output,
                     obs_mean=obs_mean.copy(), obs_std=obs_std.copy(),
                     action_low=(offset - scale).astype(np.float32),
                     action_high=(offset + scale).astype(np.float32))
