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
            layers.append({"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}[activation]())
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


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
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


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_rollout_policy_matches_torch_policy(activation):
    from tinypolicy.pipeline.rollouts import batched_mean

    params = init_params(4, 11, 3, (32, 32), seed=5)
    params.weights[-1] *= 100  # make the output non-trivial
    obs = 3 * torch.randn(4, 1, 11)
    expected = policy_mean(params, obs, activation)[:, 0].numpy()
    np.testing.assert_allclose(batched_mean(params.numpy(), obs[:, 0].numpy(), activation), expected, rtol=1e-5,
                               atol=1e-5)
    assert math.isfinite(float(expected.sum()))


def _groups(mode: str, generation: int = 0, count: int = 10, masks=None, **settings):
    from tinypolicy.pipeline.distill import DistillConfig, architecture_family, student_groups

    cfg = DistillConfig(env_id="Hopper-v5", mode=mode, population=8, **settings)
    family = architecture_family(cfg, None if masks is None else [m.numpy() for m in masks])
    return student_groups(cfg, family, masks, count, generation, 11, 3)


def _member_inits(groups) -> dict[int, tuple]:
    """member -> (architecture, its init's weights)."""
    from tinypolicy.pipeline.distill import Architecture

    return {int(m): (Architecture(g.hidden, g.activations[k], g.masked), [w[k] for w in g.init.weights])
            for g in groups for k, m in enumerate(g.members)}


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def test_hades_f_trains_every_member_from_one_init_in_every_generation():
    first, later = _groups("f", 0), _groups("f", 9)
    assert len(first) == 1 and sorted(first[0].members) == list(range(10))
    inits = _member_inits(first)
    assert all(_same(inits[0][1], inits[m][1]) for m in range(10))
    assert _same(inits[0][1], _member_inits(later)[0][1])


def test_hades_r_draws_one_init_per_antithetic_pair_and_generation():
    inits = _member_inits(_groups("r", 0))  # population 8: pairs (i, i + 4); members 8, 9: the search mean
    for i in range(4):
        assert _same(inits[i][1], inits[i + 4][1])
    assert not _same(inits[0][1], inits[1][1]) and not _same(inits[8][1], inits[9][1])
    assert not _same(inits[8][1], inits[0][1])
    assert _same(inits[0][1], _member_inits(_groups("r", 0))[0][1])  # reproducible, so a resumed run is the same
    assert not _same(inits[0][1], _member_inits(_groups("r", 1))[0][1])


def test_architecture_randomised_groups_share_architecture_and_init_within_pairs():
    masks = [torch.rand(32, 11) < 0.3, torch.rand(32, 32) < 0.1, torch.rand(3, 32) < 0.5]
    groups = _groups("a", 3, count=8 + 24, masks=masks, arch_widths=(8, 16), arch_depths=(1, 3), mask_share=0.4)
    members = np.sort(np.concatenate([g.members for g in groups]))
    np.testing.assert_array_equal(members, np.arange(32))  # every member in exactly one group
    inits = _member_inits(groups)
    for i in range(4):
        assert inits[i][0] == inits[i + 4][0] and _same(inits[i][1], inits[i + 4][1])
    seen = {arch for arch, _ in inits.values()}
    assert len(seen) > 2 and any(a.masked for a in seen) and any(not a.masked for a in seen)
    for arch, weights in inits.values():
        assert arch.activation in ("tanh", "relu", "elu")
        sizes = [11, *arch.hidden, 3]
        assert [tuple(w.shape) for w in weights] == list(zip(sizes[1:], sizes[:-1]))
        if arch.masked:
            assert arch.hidden == (32, 32)
            assert all(torch.all(w[~m] == 0) and torch.any(w[m] != 0) for w, m in zip(weights, masks))
        else:
            assert arch.hidden in {(8,), (16,), (8, 8, 8), (16, 16, 16)}
    again = _member_inits(_groups("a", 3, count=32, masks=masks, arch_widths=(8, 16), arch_depths=(1, 3),
                                  mask_share=0.4))
    assert all(again[m][0] == inits[m][0] and _same(again[m][1], inits[m][1]) for m in range(32))


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_mask_share_decides_how_many_students_keep_the_exported_topology(share):
    from tinypolicy.pipeline.distill import Architecture, DistillConfig, sample_architectures

    cfg = DistillConfig(env_id="Hopper-v5", mode="a", mask_share=share)
    family = ([Architecture((16,), "tanh"), Architecture((8, 8), "elu")], [Architecture((32, 32), "relu", True)])
    drawn = sample_architectures(cfg, family, 200, generation=0)
    assert sum(a.masked for a in drawn) == 200 * share
    assert {a for a in drawn if not a.masked} == (set(family[0]) if share == 0 else set())
    assert sample_architectures(cfg, family, 200, generation=0) == drawn
    no_mask = sample_architectures(cfg, (family[0], []), 50, generation=0)
    assert not any(a.masked for a in no_mask)


def test_masked_bc_keeps_exact_zeros_and_matches_a_dense_run_on_the_masked_weights():
    """With a mask the weights outside it stay exactly zero, and the run is the dense run in
    which those weights are frozen at zero: same loss curve as a net whose gradient is masked."""
    gen = torch.Generator().manual_seed(4)
    states, actions = torch.randn(2, 16, 11, generator=gen), 2 * torch.randn(2, 16, 3, generator=gen)
    masks = [torch.rand(24, 11, generator=gen) < 0.3, torch.rand(3, 24, generator=gen) < 0.6]
    init = init_params(2, 11, 3, (24,), seed=1, masks=masks)
    assert all(torch.all(w[:, ~m] == 0) for w, m in zip(init.weights, masks))
    trained, losses = train_bc(states, actions, init, 30, lr=5e-3, activation="elu", masks=masks)
    for w, m in zip(trained.weights, masks):
        assert torch.all(w[:, ~m] == 0) and torch.all(w[:, m] != 0)
    assert torch.all(losses[:, -1] < losses[:, 0])
    dense, _ = train_bc(states, actions, init, 30, lr=5e-3, activation="elu")
    assert any(torch.any(w[:, ~m] != 0) for w, m in zip(dense.weights, masks))  # the mask is what kept them zero


def test_a_short_bc_run_is_the_start_of_a_longer_one():
    from itertools import islice

    from tinypolicy.models.bc import bc_steps

    gen = torch.Generator().manual_seed(5)
    states, actions = torch.randn(8, 11, generator=gen), torch.randn(8, 3, generator=gen)
    init = init_params(2, 11, 3, (16,), seed=2)
    snapshots = {step: params.detach() for step, (params, _) in enumerate(islice(
        bc_steps(states, actions, init, 5e-3, "relu"), 12), 1) if step in (5, 12)}
    for steps in (5, 12):
        trained, _ = train_bc(states, actions, init, steps, lr=5e-3, activation="relu")
        assert all(torch.equal(a, b) for a, b in zip(trained.tensors(), snapshots[steps].tensors()))
    assert not torch.equal(snapshots[5].weights[0], snapshots[12].weights[0])


def test_a_population_of_mixed_architectures_rolls_out_as_its_groups_do_alone():
    import gymnasium as gym

    from tinypolicy.pipeline.rollouts import _rollout

    small, deep = init_params(3, 11, 3, (8,), seed=1), init_params(2, 11, 3, (16, 16, 16), seed=2)
    for params in (small, deep):
        params.weights[-1] *= 100  # actions that move the hopper
    groups = [(small.numpy(), "elu"), (deep.numpy(), "tanh")]
    seeds = np.array([5, 6, 7, 8, 9])
    mean, std = np.zeros(11, np.float32), np.ones(11, np.float32)

    def envs(n):
        return [gym.make("Hopper-v5").unwrapped for _ in range(n)]

    together = _rollout(envs(5), groups, mean, std, seeds, 60)
    alone = [_rollout(envs(3), groups[:1], mean, std, seeds[:3], 60), _rollout(envs(2), groups[1:], mean, std,
                                                                               seeds[3:], 60)]
    np.testing.assert_array_equal(together.returns, np.concatenate([a.returns for a in alone]))
    np.testing.assert_array_equal(together.lengths, np.concatenate([a.lengths for a in alone]))
    assert len(set(together.returns.round(6))) == 5


def test_members_of_one_batch_may_train_different_activations():
    gen = torch.Generator().manual_seed(6)
    states, actions = torch.randn(3, 16, 11, generator=gen), 2 * torch.randn(3, 16, 3, generator=gen)
    init = init_params(3, 11, 3, (16, 16), seed=7)
    names = ("elu", "tanh", "relu")
    mixed, losses = train_bc(states, actions, init, 20, lr=5e-3, activation=names)
    for p, name in enumerate(names):
        alone, alone_losses = train_bc(states[p:p + 1], actions[p:p + 1], init.member(p), 20, lr=5e-3,
                                       activation=name)
        np.testing.assert_allclose(losses[p].numpy(), alone_losses[0].numpy(), rtol=1e-5, atol=1e-6)
        for a, b in zip(mixed.member(p).tensors(), alone.tensors()):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(losses[0], losses[1])
