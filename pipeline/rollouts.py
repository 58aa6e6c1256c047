"""Population rollouts: the return of many small MLP policies in a real MuJoCo env, on all cores.

The population is split across worker processes. Each worker owns one env per member it
evaluates, steps them in lockstep and computes every live member's action with one batched
NumPy matmul per layer, so a generation costs one message per worker, not one per step.
Policies act deterministically: clip(mu(normalise(obs)), -1, 1) scaled to the env's bounds,
exactly what a robot running the retrained policy does (`Dataset.to_env_units`).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError

_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


def batched_mean(arrays: dict[str, np.ndarray], obs: np.ndarray, activation: str) -> np.ndarray:
    """NumPy forward of stacked MLPs (`models.bc.BCParams.numpy()` layout): obs [P, obs] -> mu [P, act]."""
    layers = sum(1 for k in arrays if k.startswith("w"))
    x = obs[:, None, :]
    for k in range(layers):
        x = np.matmul(x, arrays[f"w{k}"].transpose(0, 2, 1)) + arrays[f"b{k}"][:, None, :]
        if k < layers - 1:
            x = _ACTIVATIONS[activation](x)
    return x[:, 0, :]


@dataclass
class RolloutResult:
    returns: np.ndarray   # [P], one episode per member
    lengths: np.ndarray   # [P] env steps of that episode


def _rollout(envs, arrays, activation, obs_mean, obs_std, seeds, max_steps) -> RolloutResult:
    population = len(seeds)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    scale, bias = (high - low) / 2.0, (high + low) / 2.0
    obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)])
    returns = np.zeros(population)
    lengths = np.zeros(population, dtype=np.int64)
    alive = np.ones(population, dtype=bool)
    for _ in range(max_steps):
        live = np.flatnonzero(alive)
        if live.size == 0:
            break
        member_arrays = {k: v[live] for k, v in arrays.items()}
        mu = batched_mean(member_arrays, ((obs[live] - obs_mean) / obs_std).astype(np.float32), activation)
        actions = np.clip(mu, -1.0, 1.0) * scale + bias
        for i, action in zip(live, actions):
            # unwrapped: the episode cap is ours, and the checker wrappers cost as much as the physics
            obs[i], reward, terminated, _, _ = envs[i].step(action)
            returns[i] += reward
            lengths[i] += 1
            if terminated:
                alive[i] = False
    return RolloutResult(returns, lengths)


def _worker(conn, env_id: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import gymnasium as gym

    envs = []
    while True:
        message = conn.recv()
        if message is None:
            break
        while len(envs) < len(message["seeds"]):
            envs.append(gym.make(env_id).unwrapped)
        conn.send(_rollout(envs, **message))
    for env in envs:
        env.close()


class PopulationEvaluator:
    """Worker processes that roll out a population, one episode per member.

    Use as a context manager; `evaluate` takes the stacked policy arrays of P members,
    the fixed observation normalisation and one env seed per member.
    """

    def __init__(self, env_id: str, workers: int = 2, max_steps: int = 1000):
        from pipeline.envs import make_env

        make_env(env_id).close()  # a bad env id fails here, with a clear error, not in a worker
        self.env_id, self.max_steps = env_id, max_steps
        context = mp.get_context("spawn")  # never fork a process that has started torch threads
        self.connections, self.processes = [], []
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, env_id), daemon=True)
            process.start()
            self.connections.append(parent)
            self.processes.append(process)

    def evaluate(self, arrays: dict[str, np.ndarray], activation: str, obs_mean: np.ndarray,
                 obs_std: np.ndarray, seeds: np.ndarray) -> RolloutResult:
        splits = [s for s in np.array_split(np.arange(len(seeds)), len(self.connections)) if s.size]
        connections = self.connections[:len(splits)]
        for conn, split in zip(connections, splits):
            conn.send({"arrays": {k: v[split] for k, v in arrays.items()}, "activation": activation,
                       "obs_mean": obs_mean, "obs_std": obs_std, "seeds": np.asarray(seeds)[split],
                       "max_steps": self.max_steps})
        try:
            results = [conn.recv() for conn in connections]
        except EOFError:
            raise UserError(f"a rollout worker for {self.env_id} died (out of memory?)") from None
        return RolloutResult(np.concatenate([r.returns for r in results]),
                             np.concatenate([r.lengths for r in results]))

    def close(self) -> None:
        for conn, process in zip(self.connections, self.processes):
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()

    def __enter__(self) -> "PopulationEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
