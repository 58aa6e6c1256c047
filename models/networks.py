"""Actor and critic networks for TD3 and SAC, built from `SparseLinear` layers.

Actors carry their action bounds as buffers and return actions in env units, so the
exported graph needs nothing from outside the module.
"""
from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

from tinypolicy.models.sparse import SparseLinear

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
# The hidden activations and output squashings an actor may have: ours train with relu and
# tanh; imported policies (`tinypolicy import`) bring tanh trunks (PPO, A2C) and actions
# clipped to the bounds (PPO's unbounded Gaussian mean). Export writes each as it is.
ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh}
SQUASHES = {"tanh": torch.tanh, "clip": lambda z: torch.clamp(z, -1.0, 1.0)}


class MLP(nn.Module):
    """MLP of SparseLinear layers (ReLU unless `activation` says tanh); `ensemble` copies run
    as one batched computation.

    `hidden_dtype = torch.bfloat16` runs the hidden layers in bfloat16 (mixed precision:
    float32 weights, optimiser and output layer), which CPUs with AVX-512 BF16 multiply
    about 3x faster. The output layer stays float32 because Q values and TD errors need
    more than bfloat16's 8 mantissa bits. Inputs of fewer than `MIXED_MIN_BATCH` rows
    (acting on one observation, evaluation rollouts) run in float32: casts cost more than
    bfloat16 saves there, and the policy then acts exactly as its float32 export does."""

    MIXED_MIN_BATCH = 32

    def __init__(self, sizes: list[int], ensemble: int = 1, activation: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList(
            SparseLinear(i, o, ensemble) for i, o in pairwise(sizes))
        self.hidden_dtype: torch.dtype | None = None
        self.activation = activation

    def forward(self, x: torch.Tensor, frozen: bool = False, member: int | None = None) -> torch.Tensor:
        *hidden, last = self.layers
        mixed = self.hidden_dtype is not None and x.dim() >= 2 and x.shape[-2] >= self.MIXED_MIN_BATCH
        dtype = self.hidden_dtype if mixed else None
        act = ACTIVATIONS[self.activation]
        for layer in hidden:
            x = act(layer(x, frozen, member, dtype))
        return last(x.to(last.weight.dtype), frozen, member)  # back from bfloat16 hidden layers


class _BoundedActor(nn.Module):
    """Env-unit observations in, env-unit actions out. With `obs_norm` the actor first
    normalises observations with its `obs_mean` and `obs_std` buffers (an imported policy
    trained on VecNormalize's statistics); without it it has no such buffers, so the state
    dicts of the actors `train` writes stay as they were."""

    def __init__(self, obs_dim: int, action_low, action_high, obs_norm: bool):
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)
        self.obs_norm = obs_norm
        if obs_norm:
            self.register_buffer("obs_mean", torch.zeros(obs_dim))
            self.register_buffer("obs_std", torch.ones(obs_dim))

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std if self.obs_norm else obs

    def to_env_units(self, squashed: torch.Tensor) -> torch.Tensor:
        return squashed * self.action_scale + self.action_bias


class DeterministicActor(_BoundedActor):
    """TD3 actor: obs -> hidden ReLU layers -> tanh, scaled to the action bounds. An imported
    actor may have tanh hidden layers and clip instead of tanh (`output="clip"`)."""

    orthogonal_init = False

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], action_low, action_high,
                 activation: str = "relu", output: str = "tanh", obs_norm: bool = False):
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        self.net = MLP([obs_dim, *hidden, act_dim], activation=activation)
        self.output = output

    def squashed(self, obs: torch.Tensor) -> torch.Tensor:
        """Action in [-1, 1]^A (the space the policy-distance measure uses)."""
        return SQUASHES[self.output](self.net(self.normalise(obs)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.to_env_units(self.squashed(obs))


class GaussianActor(_BoundedActor):
    """SAC actor: a tanh-squashed Gaussian whose mean and log-std share one trunk."""

    orthogonal_init = True
    output = "tanh"  # sampling and its log-probability assume tanh

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], action_low, action_high,
                 activation: str = "relu", obs_norm: bool = False):
        super().__init__(obs_dim, action_low, action_high, obs_norm)
        self.act_dim = act_dim
        self.net = MLP([obs_dim, *hidden, 2 * act_dim], activation=activation)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(self.normalise(obs)).split(self.act_dim, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        return mean, log_std

    def squashed(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.distribution(obs)[0])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action (tanh of the mean) in env units."""
        return self.to_env_units(self.squashed(obs))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised squashed sample in [-1, 1]^A and its log-probability."""
        mean, log_std = self.distribution(obs)
        std = log_std.exp()
        pre_tanh = mean + std * torch.randn_like(mean)
        squashed = torch.tanh(pre_tanh)
        log_prob = (-0.5 * ((pre_tanh - mean) / std) ** 2 - log_std - 0.9189385332046727).sum(-1)
        # log|d tanh(u)/du| written in the numerically stable softplus form.
        log_prob = log_prob - (2.0 * (0.6931471805599453 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        return squashed, log_prob


class TwinCritic(nn.Module):
    """Two Q networks on [obs, squashed action], fused into one ensemble of width 2."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int]):
        super().__init__()
        self.net = MLP([obs_dim + act_dim, *hidden, 1], ensemble=2)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Q values [2, batch] for an action in [-1, 1]^A."""
        return self.net(torch.cat([obs, action], dim=-1), frozen).squeeze(-1)

    def q1_frozen(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The first head only, with detached weights (TD3's actor objective)."""
        return self.net(torch.cat([obs, action], dim=-1), frozen=True, member=0).squeeze(-1)


def make_actor(algo: str, obs_dim: int, act_dim: int, hidden: list[int], action_low, action_high,
               **architecture) -> nn.Module:
    """The actor class for `algo` ("td3" or "sac"); `architecture` holds an imported actor's
    `activation`, `output` (td3 only) and `obs_norm`, as its checkpoint records them."""
    cls = {"td3": DeterministicActor, "sac": GaussianActor}[algo]
    return cls(obs_dim, act_dim, hidden, action_low, action_high, **architecture)
