"""Valid tinypolicy inputs built for tests in a moment, without a training run: a sparse
actor and its checkpoint, a BC dataset, an exported-actor-like ONNX mask."""
from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from tinypolicy.checkpoint import save_checkpoint
from tinypolicy.models import TwinCritic, apply_masks, make_actor, random_masks, sparse_layers
from tinypolicy.ondevice.dataset import Dataset
from tinypolicy.ondevice.onnx_mlp import policy_onnx, save_onnx

HOPPER = {"obs_dim": 11, "act_dim": 3, "action_low": [-1.0] * 3, "action_high": [1.0] * 3,
          "obs_low": [-np.inf] * 11, "obs_high": [np.inf] * 11}


def sparse_actor(algo: str, sparsity: float, hidden=(256, 256), seed: int = 0, obs_dim=11, act_dim=3):
    """A randomly initialised actor with uniformly random masks at `sparsity`, and random biases
    (so that constant neurons emit nonzero values that must be folded)."""
    torch.manual_seed(seed)
    actor = make_actor(algo, obs_dim, act_dim, list(hidden), -np.ones(act_dim), np.ones(act_dim))
    random_masks(sparse_layers(actor), sparsity, torch.Generator().manual_seed(seed))
    apply_masks(actor)
    with torch.no_grad():
        for layer in sparse_layers(actor):
            layer.bias.uniform_(-0.5, 0.5)
    return actor.eval()


def write_checkpoint(path: Path, actor, algo="td3", hidden=(256, 256), env_id="Hopper-v5") -> Path:
    """A checkpoint of `actor` with fresh critics, as `train` writes one without its optimiser state."""
    critic = TwinCritic(HOPPER["obs_dim"], HOPPER["act_dim"], list(hidden))
    save_checkpoint(path, {"config": {"env_id": env_id, "algo": algo, "method": "rlx2", "hidden": list(hidden)},
                           "spaces": HOPPER, "steps_done": 1234, "actor": actor.state_dict(),
                           "critic": critic.state_dict()})
    return path


def synthetic_dataset(rng, env_id="Hopper-v5", obs_dim=11, act_dim=3, size=64) -> Dataset:
    """A learnable synthetic dataset with HaDES-like labels (some beyond [-1, 1]) and
    non-trivial normalisation and action bounds."""
    states = rng.normal(size=(size, obs_dim))
    actions = 1.5 * np.tanh(states @ rng.normal(size=(obs_dim, act_dim)) / np.sqrt(obs_dim))
    return Dataset(env_id, states, actions, obs_mean=rng.normal(size=obs_dim),
                   obs_std=rng.uniform(0.5, 2.0, obs_dim), action_low=-rng.uniform(0.5, 2.0, act_dim),
                   action_high=rng.uniform(0.5, 2.0, act_dim))


def mask_onnx(path: Path, sizes, env_id="Hopper-v5", density=0.2, seed=1) -> list[np.ndarray]:
    """An exported-actor-like mask: ReLU hidden layers, tanh head, exact zeros in the weights."""
    rng = np.random.default_rng(seed)
    weights = [(rng.normal(size=(o, i)) * (rng.random((o, i)) < density)).astype(np.float32)
               for i, o in pairwise(sizes)]
    biases = [rng.normal(size=o).astype(np.float32) for o in sizes[1:]]
    model = policy_onnx(weights, biases, "relu", "tanh", np.zeros(sizes[0]), np.ones(sizes[0]),
                        -np.ones(sizes[-1]), np.ones(sizes[-1]), {"env_id": env_id})
    save_onnx(model, path)
    return [w != 0 for w in weights]
