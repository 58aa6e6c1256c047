"""Our dense TD3 update is Stable-Baselines3's, to float32 rounding.

Both start from the same weights and train on the same minibatches with the same target
noise (one torch seed per update), so any difference in the critic loss, target policy
smoothing, delayed actor update or Polyak averaging shows up in the weights.
"""
from __future__ import annotations

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


def _max_gap(linears, net, member):
    return max(float((layer.weight[member] - linear.weight).abs().max())
               for linear, layer in zip(linears, sparse_layers(net)))


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
    for net, policy in ((ours.actor, theirs.actor), (ours.actor_target, theirs.actor_target)):
        _copy_into(_linears(policy.mu), net, 0)
    for net, critic in ((ours.critic, theirs.critic), (ours.critic_target, theirs.critic_target)):
        for member in range(2):
            _copy_into(_linears(critic.q_networks[member]), net, member)

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
    gaps = [_max_gap(_linears(theirs.actor.mu), ours.actor, 0),
            _max_gap(_linears(theirs.actor_target.mu), ours.actor_target, 0)]
    for member in range(2):
        gaps += [_max_gap(_linears(theirs.critic.q_networks[member]), ours.critic, member),
                 _max_gap(_linears(theirs.critic_target.q_networks[member]), ours.critic_target, member)]
    assert max(gaps) < 1e-5, gaps
    ours.env.close()
