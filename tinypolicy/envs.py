"""Gymnasium environment construction with clear errors for ids we cannot train on, and
seeded rollouts of a policy."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from tinypolicy.ondevice.errors import UserError

Policy = Callable[[np.ndarray], np.ndarray]


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


def env_spaces(env: gym.Env) -> dict:
    """The spaces record a checkpoint keeps: observation and action sizes and bounds, as lists."""
    obs, act = env.observation_space, env.action_space
    return {"obs_dim": obs.shape[0], "act_dim": act.shape[0], "obs_low": obs.low.tolist(),
            "obs_high": obs.high.tolist(), "action_low": act.low.tolist(), "action_high": act.high.tolist()}


def require_dims(env_id: str, spaces: dict, what: str) -> None:
    """Refuse, on one line, a policy (`what`) whose observation and action sizes (`spaces`'
    obs_dim and act_dim) are not those of `env_id`."""
    env = make_env(env_id)
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    if dims != (spaces["obs_dim"], spaces["act_dim"]):
        raise UserError(f"{what} takes {spaces['obs_dim']} observations and gives {spaces['act_dim']} actions; "
                        f"{env_id} has {dims[0]} and {dims[1]}")


def actor_policy(actor) -> Policy:
    """Wrap a torch actor (obs batch -> action batch in env units) as obs -> action."""
    import torch

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        return actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()

    return policy


class Step(NamedTuple):
    obs: np.ndarray          # what the action was chosen on
    action: np.ndarray
    reward: float
    done: bool               # this step ended the episode (terminated or truncated)
    episode_return: float    # the episode's rewards so far, this step's included


def rollout(env_id: str, policy: Policy | None, seed: int, *, steps: int | None = None,
            episodes: int | None = None) -> Iterator[Step]:
    """Every step of `policy` in a fresh `env_id` env for `steps` env steps or `episodes`
    episodes (exactly one of the two), episode k reset with seed `seed + k`.

    `policy` None acts uniformly at random, the action space seeded with `seed`. The env
    is closed when the generator is exhausted or closed."""
    if (steps is None) == (episodes is None):
        raise ValueError("rollout needs exactly one of steps and episodes")
    env = make_env(env_id, seed=seed)
    act = policy if policy is not None else lambda obs: env.action_space.sample()
    episode, taken = 0, 0
    try:
        # A bound left as None never equals a count, so it never stops the loop.
        while episode != episodes and taken != steps:
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done and taken != steps:
                action = act(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = bool(terminated or truncated)
                taken += 1
                yield Step(obs, action, float(reward), done, total)
                obs = next_obs
            episode += 1
    finally:
        env.close()


def evaluate_policy(policy: Policy | None, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes, episode k seeded `seed + k`; `policy` maps an obs array
    to an action (None: uniformly random actions)."""
    return np.asarray([step.episode_return for step in rollout(env_id, policy, seed, episodes=episodes) if step.done])


def random_policy_returns(env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes of uniformly random actions: the floor every policy must beat."""
    return evaluate_policy(None, env_id, episodes, seed)
