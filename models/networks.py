"""Actor and critic networks for TD3 and SAC, built from `SparseLinear` layers.

Actors carry their action bounds as buffers and return actions in env units, so the
exported graph needs nothing from outside the module.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tinypolicy.models.sparse import SparseLinear

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class MLP(nn.Module):
    """ReLU MLP of SparseLinear layers; `ensemble` copies run as one batched computation.

    `hidden_dtype = torch.bfloat16` runs the hidden layers in bfloat16 (mixed precision:
    float32 weights, optimiser and output layer), which CPUs with AVX-512 BF16 multiply
    about 3x faster. The output layer stays float32 because Q values and TD errors need
    more than bfloat16's 8 mantissa bits. Inputs of fewer than `MIXED_MIN_BATCH` rows
    (acting on one observation, evaluation rollouts) run in float32: casts cost more than
    bfloat16 saves there, and the policy then acts exactly as its float32 export does."""

    MIXED_MIN_BATCH = 32

    def __init__(self, sizes: list[int], ensemble: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(
            SparseLinear(i, o, ensemble) for i, o in zip(sizes[:-1], sizes[1:]))
        self.hidden_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, frozen: bool = False, member: int | None = None) -> torch.Tensor:
        *hidden, last = self.layers
        mixed = self.hidden_dtype is not None and x.dim() >= 2 and x.shape[-2] >= self.MIXED_MIN_BATCH
        dtype = self.hidden_dtype if mixed else None
        for layer in hidden:
            x = F.relu(layer(x, frozen, member, dtype))
        return last(x.float(), frozen, member)


class _BoundedActor(nn.Module):
    def __init__(self, action_low, action_high):
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def to_env_units(self, squashed: torch.Tensor) -> torch.Tensor:
        return squashed * self.action_scale + self.action_bias


class DeterministicActor(_BoundedActor):
    """TD3 actor: obs -> hidden ReLU layers -> tanh, scaled to the action bounds."""

    orthogonal_init = False

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], action_low, action_high):
        super().__init__(action_low, action_high)
        self.net = MLP([obs_dim, *hidden, act_dim])

    def squashed(self, obs: torch.Tensor) -> torch.Tensor:
        """Action in [-1, 1]^A (the space the policy-distance measure uses)."""
        return torch.tanh(self.net(obs))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.to_env_units(self.squashed(obs))


class GaussianActor(_BoundedActor):
    """SAC actor: a tanh-squashed Gaussian whose mean and log-std share one trunk."""

    orthogonal_init = True

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], action_low, action_high):
        super().__init__(action_low, action_high)
        self.act_dim = act_dim
        self.net = MLP([obs_dim, *hidden, 2 * act_dim])

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).split(self.act_dim, dim=-1)
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


def make_actor(algo: str, obs_dim: int, act_dim: int, hidden: list[int], action_low, action_high) -> nn.Module:
    """The actor class for `algo` ("td3" or "sac")."""
    cls = {"td3": DeterministicActor, "sac": GaussianActor}[algo]
    return cls(obs_dim, act_dim, hidden, action_low, action_high)
