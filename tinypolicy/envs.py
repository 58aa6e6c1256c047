"""Gymnasium environment construction with clear errors for ids we cannot train on."""
from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np

from tinypolicy.ondevice.errors import UserError


def make_env(env_id: str, seed: int | None = None) -> gym.Env:
    """Create a Gymnasium env with a bounded Box action space and a flat Box observation."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise UserError(f"unknown or unavailable environment id {env_id!r}: {exc}") from None
    except ImportError as exc:
        raise UserError(f"environment {env_id!r} needs a missing package: {exc}") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise UserError(f"{env_id} has a {type(env.action_space).__name__} action space; "
                        "tinypolicy trains continuous-control (Box action) policies only")
    if not np.all(np.isfinite(env.action_space.low)) or not np.all(np.isfinite(env.action_space.high)):
        env.close()
        raise UserError(f"{env_id} has an unbounded action space; a tanh policy needs finite bounds")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        env.close()
        raise UserError(f"{env_id} must have a flat Box observation space, "
                        f"got {env.observation_space}")
    if seed is not None:
        env.action_space.seed(seed)
    return env


def actor_policy(actor) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a torch actor (obs batch -> action batch in env units) as obs -> action."""
    import torch

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        return actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()

    return policy


def evaluate_policy(policy, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` deterministic episodes; `policy` maps an obs array to an action."""
    env = make_env(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.asarray(returns)


def random_policy_returns(env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes of uniformly random actions: the floor every policy must beat."""
    space = make_env(env_id, seed=seed).action_space
    return evaluate_policy(lambda obs: space.sample(), env_id, episodes, seed)
