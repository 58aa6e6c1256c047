"""Population rollouts: the return of many small MLP policies in a real MuJoCo env, on all cores.

The population is split across worker processes. Each worker owns one env per member it
evaluates, steps them in lockstep and computes every live member's action with one batched
NumPy matmul per layer, so a generation costs one message per worker, not one per step.
Policies act deterministically: clip(mu(normalise(obs)), -1, 1) scaled to the env's bounds,
exactly what a robot running the retrained policy does (`Dataset.to_env_units`).
A population may mix architectures: it is a list of groups, each a stack of members of one
architecture (their arrays) and its hidden activation, members numbered across the groups in order.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass

import numpy as np

from tinypolicy.envs import make_env
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.retrain import activate

Group = tuple[dict[str, np.ndarray], str]  # stacked arrays of members of one architecture, hidden activation


def batched_mean(arrays: dict[str, np.ndarray], obs: np.ndarray, activation: str) -> np.ndarray:
    """NumPy forward of stacked MLPs (`tinypolicy.models.bc.BCParams.numpy()` layout): obs [P, obs] -> mu [P, act]."""
    layers = sum(1 for k in arrays if k.startswith("w"))
    x = obs[:, None, :]
    for k in range(layers):
        x = np.matmul(x, arrays[f"w{k}"].transpose(0, 2, 1)) + arrays[f"b{k}"][:, None, :]
        if k < layers - 1:
            x = activate(activation, x)
    return x[:, 0, :]


@dataclass
class RolloutResult:
    returns: np.ndarray   # [P], one episode per member
    lengths: np.ndarray   # [P] env steps of that episode


def _group_size(group: Group) -> int:
    return len(group[0]["log_std"])


def _rollout(envs, groups, obs_mean, obs_std, seeds, max_steps) -> RolloutResult:
    population = len(seeds)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    scale, bias = (high - low) / 2.0, (high + low) / 2.0
    starts = np.cumsum([0] + [_group_size(g) for g in groups])
    obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)])
    returns = np.zeros(population)
    lengths = np.zeros(population, dtype=np.int64)
    alive = np.ones(population, dtype=bool)
    mu = np.zeros((population, len(low)), dtype=np.float32)
    for _ in range(max_steps):
        live = np.flatnonzero(alive)
        if live.size == 0:
            break
        normalised = ((obs - obs_mean) / obs_std).astype(np.float32)
        for (arrays, activation), start, end in zip(groups, starts[:-1], starts[1:]):
            members = live[(live >= start) & (live < end)]
            if members.size:
                member_arrays = {k: v[members - start] for k, v in arrays.items()}
                mu[members] = batched_mean(member_arrays, normalised[members], activation)
        actions = np.clip(mu[live], -1.0, 1.0) * scale + bias
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


def _split(groups: list[Group], obs_mean, obs_std, seeds, max_steps, workers) -> list[dict]:
    """One rollout request per worker, members split in contiguous blocks (the same split for
    every backend, so results do not depend on where a block runs)."""
    starts = np.cumsum([0] + [_group_size(g) for g in groups])
    if starts[-1] != len(seeds):
        raise ValueError(f"{len(seeds)} env seeds for {starts[-1]} policies")
    messages = []
    for split in (s for s in np.array_split(np.arange(len(seeds)), workers) if s.size):
        block = []
        for (arrays, activation), start, end in zip(groups, starts[:-1], starts[1:]):
            members = split[(split >= start) & (split < end)] - start
            if members.size:
                block.append(({k: v[members] for k, v in arrays.items()}, activation))
        messages.append({"groups": block, "obs_mean": obs_mean, "obs_std": obs_std,
                         "seeds": np.asarray(seeds)[split], "max_steps": max_steps})
    return messages


def _concatenate(results: list[RolloutResult]) -> RolloutResult:
    return RolloutResult(np.concatenate([r.returns for r in results]), np.concatenate([r.lengths for r in results]))


class _Evaluator:
    def evaluate(self, arrays: dict[str, np.ndarray], activation: str, obs_mean: np.ndarray,
                 obs_std: np.ndarray, seeds: np.ndarray) -> RolloutResult:
        """A population of one architecture."""
        return self.evaluate_groups([(arrays, activation)], obs_mean, obs_std, seeds)


class PopulationEvaluator(_Evaluator):
    """Worker processes that roll out a population, one episode per member.

    Use as a context manager; `evaluate` takes the stacked policy arrays of P members of one
    architecture (`evaluate_groups`: several architectures), the fixed observation
    normalisation and one env seed per member.
    """

    def __init__(self, env_id: str, workers: int = 2, max_steps: int = 1000):
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

    def evaluate_groups(self, groups: list[Group], obs_mean: np.ndarray, obs_std: np.ndarray,
                        seeds: np.ndarray) -> RolloutResult:
        messages = _split(groups, obs_mean, obs_std, seeds, self.max_steps, len(self.connections))
        connections = self.connections[:len(messages)]
        for conn, message in zip(connections, messages):
            conn.send(message)
        try:
            results = [conn.recv() for conn in connections]
        except EOFError:
            raise UserError(f"a rollout worker for {self.env_id} died (out of memory?)") from None
        return _concatenate(results)

    def close(self) -> None:
        for conn, process in zip(self.connections, self.processes):
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()

    def __enter__(self) -> PopulationEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _RayRolloutWorker:
    """A Ray actor owning its envs between generations, like a local worker process."""

    def __init__(self, env_id: str):
        import gymnasium as gym

        self.env_id, self.envs, self.make = env_id, [], lambda: gym.make(env_id).unwrapped

    def rollout(self, message: dict) -> RolloutResult:
        while len(self.envs) < len(message["seeds"]):
            self.envs.append(self.make())
        return _rollout(self.envs, **message)


def start_ray(address: str | None):
    """The `ray` module, connected to the cluster at `address` or to a local instance started here."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray: pip install -e '.[ray]'") from None
    # Ray starts its workers at niceness 15: beside two busy training processes they got about 4% of
    # a core and a two-job Pendulum sweep did not finish in 8 minutes. They are the work the user
    # asked for, so a local instance runs them at the user's own priority.
    options = {} if address else {"include_dashboard": False, "logging_level": "ERROR",
                                  "_system_config": {"worker_niceness": 0}}
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **options)
    return ray


class RayPopulationEvaluator(_Evaluator):
    """`PopulationEvaluator` on Ray: `workers` actors of one CPU each, on a local Ray instance
    or an existing cluster (`address`). Same split, same rollouts, same results."""

    def __init__(self, env_id: str, workers: int = 2, max_steps: int = 1000, address: str | None = None):
        make_env(env_id).close()
        ray = start_ray(address)
        self.ray, self.env_id, self.max_steps = ray, env_id, max_steps
        actor = ray.remote(num_cpus=1)(_RayRolloutWorker)
        self.workers = [actor.remote(env_id) for _ in range(workers)]

    def evaluate_groups(self, groups: list[Group], obs_mean: np.ndarray, obs_std: np.ndarray,
                        seeds: np.ndarray) -> RolloutResult:
        messages = _split(groups, obs_mean, obs_std, seeds, self.max_steps, len(self.workers))
        try:
            results = self.ray.get([w.rollout.remote(m) for w, m in zip(self.workers, messages)])
        except self.ray.exceptions.RayError as exc:
            raise UserError(f"a Ray rollout worker for {self.env_id} failed: {type(exc).__name__}") from None
        return _concatenate(results)

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.ray.shutdown()

    def __enter__(self) -> RayPopulationEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def population_evaluator(env_id: str, workers: int, max_steps: int, backend: str = "local",
                         ray_address: str | None = None):
    """The rollout backend: worker processes on this machine, or Ray actors."""
    if backend == "local":
        return PopulationEvaluator(env_id, workers, max_steps)
    if backend == "ray":
        return RayPopulationEvaluator(env_id, workers, max_steps, ray_address)
    raise UserError(f"unknown backend {backend!r}; use local or ray")
