"""Export and bench: exact dead-neuron removal, ONNX/C parity, metadata, refusals, bench schema."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import TwinCritic, apply_masks, make_actor, random_masks, sparse_layers
from pipeline.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
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
    critic = TwinCritic(HOPPER["obs_dim"], HOPPER["act_dim"], list(hidden))
    save_checkpoint(path, {"config": {"env_id": env_id, "algo": algo, "method": "rlx2", "hidden": list(hidden)},
                           "spaces": HOPPER, "steps_done": 1234, "actor": actor.state_dict(),
                           "critic": critic.state_dict()})
    return path


def tinypolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
