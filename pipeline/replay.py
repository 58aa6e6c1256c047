"""Replay buffer with multi-step windows and RLx2's dynamic capacity.

Transitions live in a ring in collection order; `start` is the oldest and `size` the
count. Dropping the oldest entries (the dynamic-capacity rule) just advances `start`,
and new data grows the buffer back up to its allocated capacity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinypolicy.ondevice.artefact import write_npz
from tinypolicy.ondevice.errors import UserError


@dataclass
class Batch:
    """A minibatch of n-step windows, as float32 tensors.

    The TD target is `returns + discount * V(bootstrap_obs)` where `discount` is
    gamma^(m+1) for a window of m+1 rewards, or 0 when the window ends in a terminal.
    `inter_obs[k]` is s_{t+k+1} and `inter_weight[k]` is gamma^(k+1) when that state
    lies inside the window (else 0): SAC's soft n-step adds an entropy term there.
    """
    obs: torch.Tensor
    actions: torch.Tensor
    returns: torch.Tensor
    bootstrap_obs: torch.Tensor
    discount: torch.Tensor
    inter_obs: torch.Tensor
    inter_weight: torch.Tensor


class ReplayBuffer:
    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "episode_end", "policy_actions")
    FLAGS = ("terminated", "episode_end")  # stored as 0.0 / 1.0, read as bool

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        self.capacity = capacity
        # One float32 row per transition: a sampled window gathers a few adjacent cache lines
        # instead of one random line per field. `columns` places every field but policy_actions.
        o, a = obs_dim, act_dim
        self.columns = {"obs": slice(0, o), "next_obs": slice(o, 2 * o), "actions": slice(2 * o, 2 * o + a),
                        "rewards": 2 * o + a, "terminated": 2 * o + a + 1, "episode_end": 2 * o + a + 2}
        self.rows = np.zeros((capacity, 2 * o + a + 3), np.float32)
        self.policy_actions = np.zeros((capacity, act_dim), np.float32)  # read only by `oldest`
        self.start = 0
        self.size = 0

    def field(self, name: str) -> np.ndarray:
        """All `capacity` entries of one stored field (physical order)."""
        if name == "policy_actions":
            return self.policy_actions
        column = self.rows[:, self.columns[name]]
        return column > 0 if name in self.FLAGS else column

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, policy_action, reward, next_obs, terminated, truncated) -> None:
        """Store one transition. Actions are squashed to [-1, 1]; `policy_action` is the
        noise-free action the policy proposed (the dynamic-capacity rule compares it with
        the current policy)."""
        i = (self.start + self.size) % self.capacity
        row, col = self.rows[i], self.columns
        row[col["obs"]], row[col["next_obs"]], row[col["actions"]] = obs, next_obs, action
        row[col["rewards"]], row[col["terminated"]], row[col["episode_end"]] = reward, terminated, terminated or truncated
        self.policy_actions[i] = policy_action
        if self.size < self.capacity:
            self.size += 1
        else:
            self.start = (self.start + 1) % self.capacity

    def _physical(self, logical: np.ndarray) -> np.ndarray:
        return (self.start + logical) % self.capacity

    def sample(self, batch_size: int, n_step: int, gamma: float, rng: np.random.Generator) -> Batch:
        """Sample windows of up to `n_step` consecutive transitions.

        A window stops after a transition that ends its episode: at a termination the
        target does not bootstrap; at a time-limit truncation it bootstraps from that
        transition's next observation. Windows touching the newest data are shortened.
        """
        col = self.columns
        first = rng.integers(0, self.size, batch_size)
        offsets = np.arange(n_step)
        logical = first[:, None] + offsets                       # [batch, n]
        rows = self.rows[self._physical(logical)]               # [batch, n, width]
        ends = rows[..., col["episode_end"]] > 0
        # Transition t+k is in the window if it exists and no earlier one ended the episode.
        ended_before = np.cumsum(ends, axis=1) - ends > 0
        valid = (logical < self.size) & ~ended_before           # a prefix of every row
        steps = valid.sum(axis=1)
        powers = (gamma ** offsets).astype(np.float32)
        returns = (rows[..., col["rewards"]] * valid) @ powers
        last = rows[np.arange(batch_size), steps - 1]           # [batch, width]
        discount = np.where(last[:, col["terminated"]] > 0, 0.0, gamma ** steps)
        # s_{t+k} (k >= 1) is next_obs of transition t+k-1; outside the window (weight zero) it
        # repeats the window's last state, so the batch depends only on the logical buffer.
        inside = np.minimum(offsets[:-1], steps[:, None] - 1)
        inter_obs = rows[np.arange(batch_size)[None, :], inside.T, col["next_obs"]]  # [n-1, batch, obs]
        inter_w = valid[:, 1:].T * powers[1:, None]
        t = torch.from_numpy
        return Batch(
            obs=t(rows[:, 0, col["obs"]].copy()), actions=t(rows[:, 0, col["actions"]].copy()),
            returns=t(returns.astype(np.float32)), bootstrap_obs=t(last[:, col["next_obs"]].copy()),
            discount=t(discount.astype(np.float32)),
            inter_obs=t(inter_obs), inter_weight=t(inter_w.astype(np.float32)))

    def oldest(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Observations and stored policy actions of the `count` oldest transitions."""
        idx = self._physical(np.arange(min(count, self.size)))
        return self.rows[idx, self.columns["obs"]], self.policy_actions[idx]

    def drop_oldest(self, count: int) -> None:
        count = min(count, self.size)
        self.start = (self.start + count) % self.capacity
        self.size -= count

    def shrink_if_stale(self, distance: float, threshold: float, min_size: int) -> int:
        """RLx2's dynamic-capacity rule (as in the official code): if the policy distance
        of the oldest data exceeds `threshold`, drop the oldest 10% of the current size,
        never going below `min_size`. Returns how many transitions were dropped."""
        if distance <= threshold or self.size <= min_size:
            return 0
        count = min(self.size // 10, self.size - min_size)
        self.drop_oldest(count)
        return count

    def save(self, path: Path) -> None:
        idx = self._physical(np.arange(self.size))
        write_npz(path, {"capacity": np.int64(self.capacity), **{f: self.field(f)[idx] for f in self.FIELDS}})

    @classmethod
    def load(cls, path: Path, obs_dim: int, act_dim: int, capacity: int) -> ReplayBuffer:
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with data:
                arrays = {f: data[f] for f in cls.FIELDS}
        except Exception as exc:  # truncated zips raise BadZipFile, foreign files many others
            raise UserError(f"cannot read replay buffer {path}: {exc}") from None
        size = len(arrays["rewards"])
        if arrays["obs"].shape != (size, obs_dim) or arrays["actions"].shape != (size, act_dim) or size > capacity:
            raise UserError(f"replay buffer {path} does not match this run's dimensions")
        buffer = cls(obs_dim, act_dim, capacity)
        for f, column in buffer.columns.items():
            buffer.rows[:size, column] = arrays[f]
        buffer.policy_actions[:size] = arrays["policy_actions"]
        buffer.size = size
        return buffer
