"""Our dense TD3 is Stable-Baselines3's, to float32 rounding.

Both start from the same weights. Given the same minibatches and target noise, any difference in
the critic loss, target policy smoothing, delayed actor update or Polyak averaging shows up in the
weights; given all of SB3's random draws, so does any difference in the training loop around the
updates, and in the transitions it stores.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tinypolicy.models import sparse_layers
from tinypolicy.pipeline.replay import Batch
from tinypolicy.pipeline.train import TrainConfig, Trainer

sb3 = pytest.importorskip("stable_baselines3")


def _linears(sequential):
    return [m for m in sequential if isinstance(m, torch.nn.Linear)]


def _copy_into(linears, net, member):
    with torch.no_grad():
        for linear, layer in zip(linears, sparse_layers(net)):
            layer.weight[member].copy_(linear.weight)
            layer.bias[member].copy_(linear.bias)


def _copy_weights(theirs, ours):
    """SB3's initial actor, critics and their targets into our networks."""
    for net, policy in ((ours.actor, theirs.actor), (ours.actor_target, theirs.actor_target)):
        _copy_into(_linears(policy.mu), net, 0)
    for net, critic in ((ours.critic, theirs.critic), (ours.critic_target, theirs.critic_target)):
        for member in range(2):
            _copy_into(_linears(critic.q_networks[member]), net, member)


@torch.no_grad()
def _max_gap(linears, net, member):
    return max(float((getattr(layer, name)[member] - getattr(linear, name)).abs().max())
               for linear, layer in zip(linears, sparse_layers(net)) for name in ("weight", "bias"))


def _weight_gap(theirs, ours):
    """The largest gap between SB3's and our weights and biases (actor, critics, targets)."""
    gaps = [_max_gap(_linears(theirs.actor.mu), ours.actor, 0),
            _max_gap(_linears(theirs.actor_target.mu), ours.actor_target, 0)]
    for member in range(2):
        gaps += [_max_gap(_linears(theirs.critic.q_networks[member]), ours.critic, member),
                 _max_gap(_linears(theirs.critic_target.q_networks[member]), ours.critic_target, member)]
    return max(gaps)


def test_dense_td3_update_matches_stable_baselines3(tmp_path):
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    torch.set_num_threads(1)
    cfg = TrainConfig(env_id="Hopper-v5", algo="td3", method="dense", total_steps=10_000, learning_starts=0)
    ours = Trainer(cfg, tmp_path)
    theirs = sb3.TD3("MlpPolicy", ours.env, learning_rate=cfg.lr, batch_size=64, tau=cfg.tau, gamma=cfg.gamma,
                     policy_delay=cfg.policy_freq, target_policy_noise=cfg.policy_noise,
                     target_noise_clip=cfg.noise_clip, policy_kwargs=dict(net_arch=list(cfg.hidden)),
                     device="cpu", seed=0)
    theirs.set_logger(configure(None, []))
    _copy_weights(theirs, ours)

    rng = np.random.default_rng(0)
    for update in range(12):
        obs, next_obs = (torch.tensor(rng.normal(size=(64, 11)), dtype=torch.float32) for _ in range(2))
        actions = torch.tensor(rng.uniform(-1, 1, size=(64, 3)), dtype=torch.float32)
        rewards = torch.tensor(rng.normal(size=64), dtype=torch.float32)
        done = torch.tensor(rng.uniform(size=64) < 0.1, dtype=torch.float32)
        samples = ReplayBufferSamples(obs, actions, next_obs, done[:, None], rewards[:, None])
        theirs.replay_buffer.sample = lambda *args, **kwargs: samples
        torch.manual_seed(update)
        theirs.train(gradient_steps=1, batch_size=64)
        batch = Batch(obs=obs, actions=actions, returns=rewards, bootstrap_obs=next_obs,
                      discount=cfg.gamma * (1 - done), inter_obs=torch.zeros(0, 64, 11),
                      inter_weight=torch.zeros(0, 64))
        ours.buffer.sample = lambda *args, **kwargs: batch
        torch.manual_seed(update)
        ours.train_step()

    assert ours.actor_updates == 6
    assert _weight_gap(theirs, ours) < 1e-5
    ours.env.close()


class _RecordedNoise:
    """An SB3 action noise that keeps each draw (SB3 adds one to every action, warm-up included)."""

    def __init__(self, noise, draws: list):
        self.noise, self.draws = noise, draws

    def __call__(self) -> np.ndarray:
        self.draws.append(self.noise())
        return self.draws[-1]

    def reset(self) -> None:
        self.noise.reset()


def _record_draws(model) -> dict[str, list]:
    """Make SB3's TD3 `model` keep the random draws it makes while it learns."""
    draws = {"actions": [], "noise": [], "indices": []}
    sample_action, get_samples = model._sample_action, model.replay_buffer._get_samples

    # the [-1, 1] action stored at each step; in the warm-up, SB3's uniform sample plus noise
    def recorded_sample_action(*args, **kwargs):
        action, stored = sample_action(*args, **kwargs)
        draws["actions"].append(stored[0].copy())
        return action, stored

    # the minibatch indices of each update
    def recorded_get_samples(indices, env=None):
        draws["indices"].append(indices.copy())
        return get_samples(indices, env)

    model._sample_action = recorded_sample_action
    model.replay_buffer._get_samples = recorded_get_samples
    model.action_noise = _RecordedNoise(model.action_noise, draws["noise"])  # added to the policy after warm-up
    return draws


class _ReplayedDraws:
    """Stands in for our Trainer's numpy Generator: each draw is the one SB3 made in its place."""

    def __init__(self, draws: dict[str, list], warmup: int):
        self.actions = iter(draws["actions"][:warmup])
        self.noise = iter(draws["noise"][warmup:])
        self.indices = iter(draws["indices"])

    def uniform(self, low, high, size):  # a warm-up action: the one SB3 stored
        return next(self.actions)

    def normal(self, mean, std, size):  # exploration noise
        return next(self.noise)

    def integers(self, low, high, size):  # minibatch indices
        return next(self.indices)


def test_dense_td3_loop_matches_stable_baselines3(tmp_path, monkeypatch):
    """Given SB3's random draws, our dense TD3 loop is `sb3_model`'s: the same warm-up and exploration
    actions, stored transitions (terminations as terminal, time-limit truncations as not), episode
    ends, minibatches and updates, on a Hopper whose 20-step time limit truncates the episodes that
    do not fall first (random Hopper episodes never reach the usual 1000 steps)."""
    import gymnasium as gym
    from stable_baselines3.common.logger import configure

    from benchmarks.sb3_reference import sb3_model
    from tinypolicy.envs import make_env

    spec = dataclasses.replace(gym.spec("Hopper-v5"), id="ShortHopper-v5", max_episode_steps=20)
    monkeypatch.setitem(gym.registry, spec.id, spec)
    steps, warmup = 550, 300
    cfg = TrainConfig(env_id=spec.id, algo="td3", method="dense", hidden=(32, 32), batch_size=64,
                      total_steps=steps, learning_starts=warmup)
    ours = Trainer(cfg, tmp_path)
    theirs = sb3_model(cfg, make_env(cfg.env_id, seed=cfg.seed), warmup)
    theirs.set_logger(configure(None, []))
    _copy_weights(theirs, ours)
    draws = _record_draws(theirs)

    torch.manual_seed(0)  # the target policy noise: one torch stream, drawn in the same order on both sides
    theirs.learn(steps)
    ours.rng = _ReplayedDraws(draws, warmup)  # our loop draws all its numpy randomness from this Generator
    torch.manual_seed(0)
    ours.reset_env()
    while ours.step < steps:
        ours.env_step()

    rb = theirs.replay_buffer
    stored = type(rb)._get_samples(rb, np.arange(steps))  # every transition as SB3's updates read it (unrecorded)
    ends, truncations = rb.dones[:, 0] > 0, rb.timeouts[:, 0] > 0
    theirs_fields = {"obs": stored.observations, "next_obs": stored.next_observations, "actions": stored.actions,
                     "rewards": stored.rewards[:, 0], "terminated": stored.dones[:, 0], "episode_end": ends}
    gaps = {name: float(np.abs(ours.buffer.field(name) - np.asarray(field, np.float32)).max())
            for name, field in theirs_fields.items()}
    gaps["weights"] = _weight_gap(theirs, ours)
    print("max gaps:", gaps)
    assert len(ours.buffer) == rb.buffer_size == steps and rb.full
    assert ours.critic_updates == theirs._n_updates == len(draws["indices"]) == steps - warmup
    assert max(gaps.values()) < 1e-5, gaps
    assert truncations.any() and (ends & ~truncations).any()  # both kinds of episode end happened
    assert not stored.dones[truncations].any() and not ours.buffer.field("terminated")[truncations].any()
    ours.env.close()
    theirs.env.close()
