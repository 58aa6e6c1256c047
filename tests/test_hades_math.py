"""HaDES math: the ES gradient, fitness shaping, Adam on the mean, and the batched BC inner loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tinypolicy.models.bc import init_params, policy_mean, train_bc
from tinypolicy.pipeline.es import Adam, antithetic_noise, centred_ranks, es_gradient, shape_fitness


def quadratic(x: np.ndarray, centre: np.ndarray, curvature: np.ndarray) -> np.ndarray:
    return -((x - centre) ** 2 * curvature).sum(-1)


def test_es_gradient_matches_the_true_gradient_of_a_quadratic():
    rng = np.random.default_rng(0)
    dim, sigma = 6, 0.03
    centre, curvature = rng.normal(size=dim), rng.uniform(0.5, 3.0, size=dim)
    mu = rng.normal(size=dim)
    noise = antithetic_noise(rng, 40_000, dim)
    estimate = es_gradient(noise, quadratic(mu + sigma * noise, centre, curvature), sigma)
    true_gradient_of_minus_f = 2 * curvature * (mu - centre)
    np.testing.assert_allclose(estimate, true_gradient_of_minus_f, rtol=0.05,
                               atol=0.02 * np.abs(true_gradient_of_minus_f).max())


def test_antithetic_pairs_cancel_a_constant_baseline():
    rng = np.random.default_rng(1)
    noise = antithetic_noise(rng, 8, 3)
    np.testing.assert_array_equal(noise[:4], -noise[4:])
    np.testing.assert_allclose(es_gradient(noise, np.full(8, 1234.5), 0.1), 0.0, atol=1e-9)
    with pytest.raises(ValueError):
        antithetic_noise(rng, 7, 3)


def test_es_with_adam_climbs_to_the_optimum():
    rng = np.random.default_rng(2)
    dim, sigma = 10, 0.03
    centre, curvature = rng.normal(size=dim), rng.uniform(0.5, 2.0, size=dim)
    mu, adam = np.zeros(dim), Adam(dim, lr=0.05)
    for _ in range(600):
        noise = antithetic_noise(rng, 32, dim)
        mu = adam.step(mu, es_gradient(noise, quadratic(mu + sigma * noise, centre, curvature), sigma))
    assert np.abs(mu - centre).max() < 0.1


def test_centred_ranks():
    shaped = centred_ranks(np.array([10.0, -3.0, 500.0, 0.0]))
    np.testing.assert_allclose(shaped, [1 / 6, -0.5, 0.5, -1 / 6])
    np.testing.assert_array_equal(shape_fitness(np.array([3.0, 1.0]), "raw"), [3.0, 1.0])


def _reference_bc(weights, biases, log_std, states, actions, steps, lr, activation):
    """One member with plain torch modules, torch's clip_grad_norm_ and torch.distributions."""
    layers = []
    for k, (w, b) in enumerate(zip(weights, biases)):
        linear = nn.Linear(w.shape[1], w.shape[0])
        linear.weight.data.copy_(w)
        linear.bias.data.copy_(b)
        layers.append(linear)
        if k < len(weights) - 1:
            layers.append(nn.Tanh() if activation == "tanh" else nn.ReLU())
    net = nn.Sequential(*layers)
    log_std = nn.Parameter(log_std.clone())
    params = [*net.parameters(), log_std]
    optimiser = torch.optim.Adam(params, lr=lr, eps=1e-5)
    losses = []
    for _ in range(steps):
        dist = torch.distributions.Normal(net(states), log_std.exp())
        loss = -dist.log_prob(actions).sum(-1).mean()
        losses.append(loss.item())
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 0.5)
        optimiser.step()
    return net, log_std, np.array(losses)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_batched_bc_equals_per_member_bc(activation):
    population, size, obs_dim, act_dim, steps = 5, 16, 11, 3, 40
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(population, size, obs_dim, generator=gen)
    actions = 2 * torch.randn(population, size, act_dim, generator=gen)  # labels beyond [-1, 1]
    init = init_params(population, obs_dim, act_dim, (32, 16), seed=3)
    trained, losses = train_bc(states, actions, init, steps, lr=5e-3, activation=activation)
    assert losses.shape == (population, steps)
    for p in range(population):
        member = init.member(p)
        net, log_std, ref_losses = _reference_bc([w[0] for w in member.weights], [b[0] for b in member.biases],
                                                 member.log_std[0], states[p], actions[p], steps, 5e-3, activation)
        np.testing.assert_allclose(losses[p].numpy(), ref_losses, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            np.testing.assert_allclose(policy_mean(trained.member(p), states[p:p + 1], activation)[0].numpy(),
                                       net(states[p]).numpy(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(trained.log_std[p].numpy(), log_std.detach().numpy(), atol=1e-4)
    assert torch.all(losses[:, -1] < losses[:, 0])


def test_init_is_orthogonal_with_the_recipe_gains():
    params = init_params(3, 11, 3, (64, 64), seed=0)
    w0, w_out = params.weights[0][1], params.weights[-1][1]
    np.testing.assert_allclose((w0.T @ w0).numpy(), 2.0 * np.eye(11), atol=1e-4)  # gain sqrt(2)
    np.testing.assert_allclose((w_out @ w_out.T).numpy(), 1e-4 * np.eye(3), atol=1e-7)  # gain 0.01
    assert torch.all(params.log_std == 0) and all(torch.all(b == 0) for b in params.biases)
    assert not torch.equal(params.weights[0][0], params.weights[0][1])
    assert torch.equal(init_params(3, 11, 3, (64, 64), seed=0).weights[1], params.weights[1])


def test_rollout_policy_matches_torch_policy():
    from tinypolicy.pipeline.rollouts import batched_mean

    params = init_params(4, 11, 3, (32, 32), seed=5)
    params.weights[-1] *= 100  # make the output non-trivial
    obs = torch.randn(4, 1, 11)
    expected = policy_mean(params, obs, "tanh")[:, 0].numpy()
    np.testing.assert_allclose(batched_mean(params.numpy(), obs[:, 0].numpy(), "tanh"), expected, rtol=1e-5,
                               atol=1e-5)
    assert math.isfinite(float(expected.sum()))


def test_policy_inits_fixed_for_f_and_fresh_per_generation_for_r():
    from tinypolicy.pipeline.distill import DistillConfig, policy_inits

    fixed = policy_inits(DistillConfig(env_id="Hopper-v5", mode="f"), 4, 11, 3, generation=0)
    later = policy_inits(DistillConfig(env_id="Hopper-v5", mode="f"), 4, 11, 3, generation=9)
    assert all(torch.equal(w[0], w[3]) and torch.equal(w, v) for w, v in zip(fixed.weights, later.weights))
    r0 = policy_inits(DistillConfig(env_id="Hopper-v5", mode="r"), 4, 11, 3, generation=0)
    r1 = policy_inits(DistillConfig(env_id="Hopper-v5", mode="r"), 4, 11, 3, generation=1)
    again = policy_inits(DistillConfig(env_id="Hopper-v5", mode="r"), 4, 11, 3, generation=0)
    assert not torch.equal(r0.weights[0][0], r0.weights[0][1])
    assert not torch.equal(r0.weights[0], r1.weights[0]) and torch.equal(r0.weights[0], again.weights[0])
