"""Masks stay exact through Adam steps, topology updates and Polyak updates; TD targets.

A handful of optimiser steps on tiny (32-unit) networks; one 600-step Pendulum run that diverges.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tinypolicy.checkpoint import load_checkpoint, save_checkpoint
from tinypolicy.models import DeterministicActor, TwinCritic, apply_masks, sparse_layers, sparsify, weight_sparsity
from tinypolicy.models.topology import drop_fraction, gmp_sparsity, layer_nnz
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.replay import Batch
from tinypolicy.pipeline.train import MaskedAdam, Schedule, TrainConfig, Trainer, soft_update, with_schedule

# --------------------------------------------------------------------------- helpers

def assert_weights_masked(net: torch.nn.Module) -> None:
    layers = sparse_layers(net)
    assert layers
    for layer in layers:
        outside = layer.weight.detach()[layer.mask == 0]
        assert int(torch.count_nonzero(outside)) == 0
        assert set(layer.mask.unique().tolist()) <= {0.0, 1.0}


def assert_moments_masked(opt: MaskedAdam, require_state: bool = True) -> None:
    seen = 0
    for layer in opt.sparse_layers:
        state = opt.optimizer.state.get(layer.weight)
        if not state:
            continue
        seen += 1
        for key in ("exp_avg", "exp_avg_sq"):
            assert int(torch.count_nonzero(state[key][layer.mask == 0])) == 0, key
    assert seen == (len(opt.sparse_layers) if require_state else 0)


def assert_masks_shared(target: torch.nn.Module, online: torch.nn.Module) -> None:
    pairs = list(zip(sparse_layers(target), sparse_layers(online)))
    assert pairs
    for t, o in pairs:
        assert t.mask.data_ptr() == o.mask.data_ptr()
        assert torch.equal(t.mask, o.mask)


def nnz_per_member(net: torch.nn.Module) -> list[list[int]]:
    return [[int(m.sum()) for m in layer.mask] for layer in sparse_layers(net)]


def masks_of(net):
    return [layer.mask.clone() for layer in sparse_layers(net)]


def weights_of(net):
    return [layer.weight.detach().clone() for layer in sparse_layers(net)]


def biases_of(net):
    return [layer.bias.detach().clone() for layer in sparse_layers(net)]


def critic_loss(critic, gen, batch=16):
    obs = torch.randn(batch, 3, generator=gen)
    act = torch.rand(batch, 1, generator=gen) * 2 - 1
    target = torch.randn(batch, generator=gen)
    return (critic(obs, act) - target).pow(2).mean(1).sum()


def actor_loss(actor, critic, gen, batch=16):
    obs = torch.randn(batch, 3, generator=gen)
    return -critic.q1_frozen(obs, actor.squashed(obs)).mean()


# --------------------------------------------------------------------------- MaskedAdam, no Trainer

@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_masked_adam_evolve_and_soft_update_keep_masks_exact(grow):
    gen = torch.Generator().manual_seed(0)
    data = torch.Generator().manual_seed(1)
    actor = DeterministicActor(3, 1, [32, 32], [-2.0], [2.0])
    critic = TwinCritic(3, 1, [32, 32])
    sparsify(actor, 0.9, False, gen)
    sparsify(critic, 0.8, False, gen)
    assert nnz_per_member(actor) == [[n] for n in layer_nnz([(32, 3), (32, 32), (1, 32)], 0.9)]
    assert nnz_per_member(critic) == [[n, n] for n in layer_nnz([(32, 4), (32, 32), (1, 32)], 0.8)]
    actor_t, critic_t = Trainer._frozen_copy(actor), Trainer._frozen_copy(critic)
    a_opt, c_opt = MaskedAdam(actor, 1e-2), MaskedAdam(critic, 1e-2)
    pairs = [(actor_t, actor, a_opt), (critic_t, critic, c_opt)]

    def check(stepped=True):
        for target, online, opt in pairs:
            assert_weights_masked(online)
            assert_weights_masked(target)
            assert_masks_shared(target, online)
            assert_moments_masked(opt, stepped)

    def train(steps):
        for _ in range(steps):
            c_opt.zero_grad()
            critic_loss(critic, data).backward()
            c_opt.step()
            a_opt.zero_grad()
            actor_loss(actor, critic, data).backward()
            a_opt.step()
            for target, online, _ in pairs:
                before = [p.detach().clone() for p in target.parameters()]
                soft_update(target, online, 0.1)
                for p_t, p_o, p_b, (name, _) in zip(target.parameters(), online.parameters(), before,
                                                     target.named_parameters()):
                    expected = p_b + 0.1 * (p_o.detach() - p_b)
                    if name.endswith("weight"):
                        mod = target.get_submodule(name.rsplit(".", 1)[0])
                        expected = expected * mod.mask
                    torch.testing.assert_close(p_t, expected, rtol=1e-6, atol=1e-7)

    check(stepped=False)
    train(5)
    check()
    # all active weights moved (the test is not vacuous), inactive ones did not
    for layer in sparse_layers(critic):
        assert int(torch.count_nonzero(layer.weight.detach() * layer.mask)) == int(layer.mask.sum())

    # --- topology update from the gradient of one minibatch, as the Trainer does
    nnz_a, nnz_c = nnz_per_member(actor), nnz_per_member(critic)
    old_masks = {id(net): masks_of(net) for net in (actor, critic)}
    old_weights = {id(net): weights_of(net) for net in (actor, critic)}
    c_opt.zero_grad()
    critic_loss(critic, data).backward()
    a_opt.zero_grad()
    actor_loss(actor, critic, data).backward()
    c_opt.evolve(0.4, grow, gen)
    a_opt.evolve(0.4, grow, gen)
    apply_masks(critic_t)
    apply_masks(actor_t)
    check()
    assert nnz_per_member(actor) == nnz_a and nnz_per_member(critic) == nnz_c
    n_changed = 0
    for net, opt in ((actor, a_opt), (critic, c_opt)):
        for layer, m_old, w_old in zip(sparse_layers(net), old_masks[id(net)], old_weights[id(net)]):
            m_new = layer.mask
            grown = (m_new == 1) & (m_old == 0)
            n_changed += int(grown.sum())
            if bool(m_old.all()):
                assert torch.equal(m_new, m_old)  # dense layers are never evolved
            else:
                active = int(m_old[0].sum())
                assert int(grown.sum()) <= m_old.shape[0] * math.floor(0.4 * active)
            # no optimiser step: surviving weights unchanged, grown ones zero
            assert torch.equal(layer.weight.detach(), w_old * m_new)
            state = opt.optimizer.state[layer.weight]
            assert int(torch.count_nonzero(state["exp_avg"][grown])) == 0
            assert int(torch.count_nonzero(state["exp_avg_sq"][grown])) == 0
    assert n_changed > 0

    train(5)
    check()
    assert nnz_per_member(actor) == nnz_a and nnz_per_member(critic) == nnz_c


def test_masked_adam_matches_torch_adam_and_resumes():
    critics = [TwinCritic(3, 1, [16, 16]) for _ in range(3)]
    for c in critics[1:]:
        c.load_state_dict(critics[0].state_dict())
    reference = torch.optim.Adam(critics[0].parameters(), lr=1e-2)
    lean = MaskedAdam(critics[1], 1e-2)
    for step in range(6):
        for critic, opt in ((critics[0], reference), (critics[1], lean)):
            opt.zero_grad()
            critic_loss(critic, torch.Generator().manual_seed(100 + step)).backward()
            opt.step()
        if step == 2:  # a checkpoint round trip in the middle changes nothing
            resumed = MaskedAdam(critics[2], 1e-2)
            critics[2].load_state_dict(critics[1].state_dict())
            resumed.load_state_dict(lean.state_dict())
            lean, critics[1] = resumed, critics[2]
    for p_ref, p_lean in zip(critics[0].parameters(), critics[1].parameters()):
        torch.testing.assert_close(p_lean, p_ref, rtol=1e-5, atol=1e-6)
    assert float(lean.optimizer.state[next(critics[1].parameters())]["step"]) == 6


def test_sac_temperature_gradient_is_the_loss_gradient(tmp_path):
    cfg = TrainConfig(env_id="Pendulum-v1", algo="sac", method="dense", total_steps=2_000, learning_starts=300)
    trainer = Trainer(cfg, tmp_path)
    trainer.reset_env()
    for _ in range(300):
        trainer.env_step()
    with torch.no_grad():
        trainer.log_alpha.fill_(-0.3)
    batch = trainer.buffer.sample(64, 1, cfg.gamma, trainer.rng)
    torch.manual_seed(1)
    _, log_prob = trainer.actor.sample(batch.obs)
    log_alpha = trainer.log_alpha.detach().clone().requires_grad_(True)
    (-(log_alpha * (log_prob.detach() + trainer.target_entropy)).mean()).backward()
    torch.manual_seed(1)  # update_actor draws the same sample first
    trainer.update_actor(batch)
    torch.testing.assert_close(trainer.log_alpha.grad, log_alpha.grad)
    assert float(trainer.log_alpha) != -0.3


# --------------------------------------------------------------------------- Trainer

def make_trainer(tmp_path, **overrides) -> Trainer:
    cfg = dict(env_id="Pendulum-v1", method="rlx2", total_steps=5000, hidden=(32, 32),
               actor_sparsity=0.9, critic_sparsity=0.8, batch_size=32)
    cfg.update(overrides)
    return Trainer(TrainConfig(**cfg), tmp_path)


@pytest.fixture
def trainer(tmp_path):
    t = make_trainer(tmp_path)
    yield t
    t.env.close()


def test_schedule_scaled_from_total_steps():
    s = Schedule.for_config(TrainConfig(env_id="Pendulum-v1", total_steps=5000))
    assert s == Schedule(learning_starts=1000, topology_end=4000, topology_interval=13,
                         nstep_start=500, buffer_check=13, buffer_min=1666,
                         prune_start=1000, prune_end=4000, prune_interval=5)
    s = Schedule.for_config(TrainConfig(total_steps=3_000_000))
    assert (s.learning_starts, s.topology_end, s.topology_interval, s.nstep_start, s.buffer_min) == \
        (25_000, 2_975_000, 10_000, 300_000, 100_000)
    assert (s.prune_start, s.prune_end, s.prune_interval) == (600_000, 2_400_000, 3_000)
    # the warm-up and the replay floor keep the paper's values down to runs ten and three times their length
    s = Schedule.for_config(TrainConfig(total_steps=300_000))
    assert (s.learning_starts, s.topology_end, s.topology_interval, s.buffer_min) == (25_000, 275_000, 924, 100_000)
    assert Schedule.for_config(TrainConfig(algo="sac", total_steps=600_000)).buffer_min == 200_000
    assert Schedule.for_config(TrainConfig(algo="sac", total_steps=300_000)).buffer_min == 100_000
    # a run shorter than 2,000 steps still learns for half of it
    assert Schedule.for_config(TrainConfig(total_steps=1_200)).learning_starts == 600
    # --learning-starts replaces the default warm-up; topology updates stop that many steps before the end (T - warm-up)
    s = Schedule.for_config(TrainConfig(total_steps=300_000, learning_starts=2_500))
    assert (s.learning_starts, s.topology_end) == (2_500, 297_500)


def test_a_run_records_the_schedule_it_used():
    cfg = TrainConfig(env_id="Pendulum-v1", total_steps=5000, buffer_min=300)
    written = with_schedule(cfg)
    assert (written.learning_starts, written.topology_interval, written.nstep_start, written.buffer_min,
            written.prune_interval) == (1000, 13, 500, 300, 5)
    assert with_schedule(written) == written and Schedule.for_config(written) == Schedule.for_config(cfg)


def test_trainer_initial_sparsity_and_targets(trainer):
    t = trainer
    assert t.obs_dim == 3 and t.act_dim == 1
    actor_shapes, critic_shapes = [(32, 3), (32, 32), (1, 32)], [(32, 4), (32, 32), (1, 32)]
    assert nnz_per_member(t.actor) == [[n] for n in layer_nnz(actor_shapes, 0.9)]
    assert nnz_per_member(t.critic) == [[n, n] for n in layer_nnz(critic_shapes, 0.8)]
    assert weight_sparsity(t.actor) == pytest.approx(1 - round(0.1 * 1152) / 1152, abs=1e-9)
    for online, target in ((t.actor, t.actor_target), (t.critic, t.critic_target)):
        assert_weights_masked(online)
        assert_weights_masked(target)
        assert_masks_shared(target, online)
        for p_t, p_o in zip(target.parameters(), online.parameters()):
            assert torch.equal(p_t, p_o.detach()) and not p_t.requires_grad


def test_topology_due_and_n_step_switch(trainer):
    t = trainer
    assert t.schedule.topology_interval == 13
    assert t.topology_due(0, 4000) is None
    assert t.topology_due(12, 4000) is None
    assert t.topology_due(14, 4000) is None
    assert t.topology_due(13, 4000) == drop_fraction(13, 4000, 0.5)
    assert t.topology_due(26, 2000) == drop_fraction(26, 2000, 0.5)
    assert t.topology_due(4004, 4000) is None  # past T_end the fraction is 0
    t.step = 499
    assert t.n_step() == 1
    t.step = 500
    assert t.n_step() == 3


def _fill(t: Trainer, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        obs, nxt = rng.normal(size=3), rng.normal(size=3)
        a = rng.uniform(-1, 1, 1)
        t.buffer.add(obs, a, a, float(rng.normal()), nxt, i % 17 == 16, i % 23 == 22)


def test_trainer_masks_exact_through_steps_topology_and_polyak(trainer):
    t = trainer
    _fill(t, 64)
    nets = ((t.actor, t.actor_target, t.actor_opt), (t.critic, t.critic_target, t.critic_opt))

    def check():
        for online, target, opt in nets:
            assert_weights_masked(online)
            assert_weights_masked(target)
            assert_masks_shared(target, online)
            assert_moments_masked(opt)

    nnz_a, nnz_c = nnz_per_member(t.actor), nnz_per_member(t.critic)
    for _ in range(4):
        t.train_step()
    assert (t.critic_updates, t.actor_updates) == (4, 2)
    check()

    def check_evolved(online, opt, before):
        masks, weights, biases = before
        any_changed = False
        for layer, m_old, w_old, b_old in zip(sparse_layers(online), masks, weights, biases):
            grown = (layer.mask == 1) & (m_old == 0)
            any_changed |= bool(grown.any())
            # the topology update replaces that iteration's optimiser step
            assert torch.equal(layer.weight.detach(), w_old * layer.mask)
            assert torch.equal(layer.bias.detach(), b_old)
            state = opt.optimizer.state[layer.weight]
            assert int(torch.count_nonzero(state["exp_avg"][grown])) == 0
            assert int(torch.count_nonzero(state["exp_avg_sq"][grown])) == 0
        assert any_changed

    def snapshot(net):
        return masks_of(net), weights_of(net), biases_of(net)

    # The 13th critic update evolves the critic. It is odd, so this train_step makes no
    # actor update and no Polyak update: the critic target must be re-masked by itself.
    t.critic_updates = 12
    before_actor, before_critic = snapshot(t.actor), snapshot(t.critic)
    t.train_step()
    assert (t.critic_updates, t.actor_updates) == (13, 2)
    check()
    check_evolved(t.critic, t.critic_opt, before_critic)
    assert all(torch.equal(a, b) for a, b in zip(masks_of(t.actor), before_actor[0]))
    assert nnz_per_member(t.critic) == nnz_c

    # The 13th actor update evolves the actor; check before any Polyak update.
    t.actor_updates = 12
    before_actor = snapshot(t.actor)
    t.update_actor(t.buffer.sample(32, 1, 0.99, t.rng))
    assert t.actor_updates == 13
    check()
    check_evolved(t.actor, t.actor_opt, before_actor)
    assert nnz_per_member(t.actor) == nnz_a

    # Both at once inside one train_step (26th critic update, 26th actor update).
    t.critic_updates, t.actor_updates = 25, 25
    before_actor, before_critic = snapshot(t.actor), snapshot(t.critic)
    t.train_step()
    assert (t.critic_updates, t.actor_updates) == (26, 26)
    check()
    check_evolved(t.critic, t.critic_opt, before_critic)
    check_evolved(t.actor, t.actor_opt, before_actor)
    assert nnz_per_member(t.actor) == nnz_a and nnz_per_member(t.critic) == nnz_c

    for _ in range(4):
        t.train_step()
    check()
    assert nnz_per_member(t.actor) == nnz_a and nnz_per_member(t.critic) == nnz_c


# --------------------------------------------------------------------------- TD targets

def _batch(gen, batch=8, obs_dim=3, act_dim=1, n_inter=0, discount=0.0, weight=0.0) -> Batch:
    return Batch(
        obs=torch.randn(batch, obs_dim, generator=gen),
        actions=torch.rand(batch, act_dim, generator=gen) * 2 - 1,
        returns=torch.randn(batch, generator=gen) * 5,
        bootstrap_obs=torch.randn(batch, obs_dim, generator=gen),
        discount=torch.full((batch,), discount),
        inter_obs=torch.randn(n_inter, batch, obs_dim, generator=gen),
        inter_weight=torch.full((n_inter, batch), weight),
    )


def test_td3_target_without_bootstrap_is_returns(trainer):
    b = _batch(torch.Generator().manual_seed(0))
    target = trainer.td_target(b)
    assert torch.equal(target, b.returns)


def test_td3_target_bootstraps_from_target_networks(tmp_path):
    t = make_trainer(tmp_path, policy_noise=0.0)
    try:
        gen = torch.Generator().manual_seed(1)
        b = _batch(gen, discount=0.9)
        with torch.no_grad():
            next_action = t.actor_target.squashed(b.bootstrap_obs)
            q = t.critic_target(b.bootstrap_obs, next_action)
            expected = b.returns + 0.9 * torch.minimum(q[0], q[1])
        assert not torch.allclose(expected, b.returns)
        torch.testing.assert_close(t.td_target(b), expected, rtol=1e-6, atol=1e-6)
        # perturbing the online networks must not change the target
        with torch.no_grad():
            for layer in sparse_layers(t.critic) + sparse_layers(t.actor):
                layer.weight.mul_(3.0)
        torch.testing.assert_close(t.td_target(b), expected, rtol=1e-6, atol=1e-6)
        # one-step terminal rows are unaffected by the value
        b.discount[:4] = 0.0
        target = t.td_target(b)
        assert torch.equal(target[:4], b.returns[:4])
    finally:
        t.env.close()


def test_sac_target_without_bootstrap_or_entropy_is_returns(tmp_path):
    t = make_trainer(tmp_path, algo="sac")
    try:
        b = _batch(torch.Generator().manual_seed(2), n_inter=2)
        assert torch.equal(t.td_target(b), b.returns)
    finally:
        t.env.close()


def test_sac_soft_n_step_target(tmp_path):
    t = make_trainer(tmp_path, algo="sac")
    try:
        with torch.no_grad():
            t.log_alpha.fill_(math.log(0.3))
        gen = torch.Generator().manual_seed(3)
        b = _batch(gen, n_inter=2, discount=0.9 ** 3)
        b.inter_weight[0] = 0.9
        b.inter_weight[1, :4] = 0.81
        b.inter_weight[1, 4:] = 0.0
        torch.manual_seed(123)
        got = t.td_target(b)
        torch.manual_seed(123)
        with torch.no_grad():
            # one draw for the bootstrap states, then the intermediate ones (as td_target draws)
            a, logp = t.actor.sample(torch.cat([b.bootstrap_obs, b.inter_obs.reshape(-1, 3)]))
            a, logp, inter_logp = a[:8], logp[:8], logp[8:].view(2, -1)
            q = t.critic_target(b.bootstrap_obs, a)
            expected = b.returns + 0.9 ** 3 * (torch.minimum(q[0], q[1]) - 0.3 * logp)
            for r in range(8):
                expected[r] -= 0.3 * 0.9 * inter_logp[0, r]
                if r < 4:
                    expected[r] -= 0.3 * 0.81 * inter_logp[1, r]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        t.env.close()


# --------------------------------------------------------------------------- mixed precision

def test_bf16_hidden_layers_match_fp32_and_keep_masks_exact(tmp_path, monkeypatch):
    # The math holds on any CPU; only its speed needs native bfloat16, which the trainer checks.
    monkeypatch.setattr("tinypolicy.pipeline.train.native_bf16", lambda: True)
    t = make_trainer(tmp_path, precision="bf16")
    assert t.critic.net.hidden_dtype is torch.bfloat16 and t.critic_target.net.hidden_dtype is torch.bfloat16
    obs, act = torch.randn(64, 3), torch.rand(64, 1) * 2 - 1
    q_bf16 = t.critic(obs, act)
    assert q_bf16.dtype == torch.float32  # the output layer (Q values, TD errors) stays float32
    single_bf16 = t.actor.squashed(obs[:1])
    t.critic.net.hidden_dtype = t.actor.net.hidden_dtype = None
    q_fp32 = t.critic(obs, act)
    # acting on one observation stays float32, exactly like the exported policy
    assert torch.equal(single_bf16, t.actor.squashed(obs[:1]))
    t.critic.net.hidden_dtype = t.actor.net.hidden_dtype = torch.bfloat16
    # bfloat16 keeps 8 mantissa bits: hidden activations round at about 0.4%
    torch.testing.assert_close(q_bf16, q_fp32, rtol=0.05, atol=0.02)
    _fill(t, 64)
    for _ in range(30):  # includes a critic topology update (every 13 updates)
        t.train_step()
    for net, opt in ((t.actor, t.actor_opt), (t.critic, t.critic_opt)):
        assert_weights_masked(net)
        assert_moments_masked(opt)
        assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.isfinite(p).all() for p in t.critic.parameters())


def test_bf16_is_refused_without_native_bfloat16(tmp_path, monkeypatch):
    monkeypatch.setattr("tinypolicy.pipeline.train.native_bf16", lambda: False)
    with pytest.raises(UserError, match="native bfloat16"):
        make_trainer(tmp_path, precision="bf16")


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown precision"):
        make_trainer(tmp_path, precision="fp8")


@pytest.mark.parametrize("algo, poison", [("td3", "critic"), ("td3", "actor"), ("sac", "log_alpha")])
def test_a_diverged_run_stops_on_one_line_and_keeps_the_last_checkpoint(algo, poison, tmp_path, monkeypatch):
    """Weights turned NaN after the step-200 checkpoint: the step-400 check stops the run before
    it evaluates or saves, and the step-200 checkpoint stays byte for byte."""
    from tinypolicy.pipeline.train import train

    saved = {}
    real_step = Trainer.env_step

    def env_step(self):
        real_step(self)
        if self.step == 300:
            saved["checkpoint"] = (tmp_path / "checkpoint.pt").read_bytes()
            with torch.no_grad():
                tensor = self.log_alpha if poison == "log_alpha" else next(getattr(self, poison).parameters())
                tensor.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "env_step", env_step)
    cfg = TrainConfig(env_id="Pendulum-v1", algo=algo, method="rlx2", total_steps=600, hidden=(16, 16),
                      batch_size=16, learning_starts=100, eval_interval=200, eval_episodes=1,
                      checkpoint_interval=200)
    with pytest.raises(UserError) as caught:
        train(cfg, tmp_path, progress=False)
    message = str(caught.value)
    assert message.startswith("training diverged at step 400 (") and "is not finite); lower --lr" in message
    assert "\n" not in message and f"{tmp_path / 'checkpoint.pt'} keeps the last good state" in message
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved["checkpoint"]
    assert not (tmp_path / "eval.json").exists()
    assert [row.split(",")[0] for row in (tmp_path / "metrics.csv").read_text().splitlines()] == ["step", "200"]


def test_prune_method_trains_dense_then_prunes_on_the_gmp_schedule(tmp_path):
    """--method prune: dense until prune_start, then magnitude pruning every prune_interval
    steps to the cubic schedule's ER layer counts, exactly the target at prune_end; masks
    only shrink, weights, targets and Adam moments stay masked."""
    t = make_trainer(tmp_path, method="prune", total_steps=2000, learning_starts=100, prune_interval=50)
    s = t.schedule
    assert (s.prune_start, s.prune_end, s.prune_interval) == (400, 1600, 50)
    actor_shapes, critic_shapes = [(32, 3), (32, 32), (1, 32)], [(32, 4), (32, 32), (1, 32)]
    t.reset_env()
    previous = [m.clone() for m in masks_of(t.actor) + masks_of(t.critic)]
    prunings = 0
    while t.step < 1700:
        t.env_step()
        if t.step <= s.prune_start:
            assert weight_sparsity(t.actor) == 0.0 and weight_sparsity(t.critic) == 0.0
        masks = masks_of(t.actor) + masks_of(t.critic)
        if any(not torch.equal(m, p) for m, p in zip(masks, previous)):
            prunings += 1
            assert t.prune_due()
            assert all(bool((m <= p).all()) for m, p in zip(masks, previous))  # never regrows
            sparsity = gmp_sparsity(t.step, s.prune_start, s.prune_end, 0.9)
            assert nnz_per_member(t.actor) == [[n] for n in layer_nnz(actor_shapes, sparsity)]
            for net, opt, target in ((t.actor, t.actor_opt, t.actor_target),
                                     (t.critic, t.critic_opt, t.critic_target)):
                assert_weights_masked(net)
                assert_weights_masked(target)
                assert_masks_shared(target, net)
                assert_moments_masked(opt)
            previous = [m.clone() for m in masks]
    due = range(s.prune_start + s.prune_interval, s.prune_end + 1, s.prune_interval)
    counts = [(layer_nnz(actor_shapes, gmp_sparsity(step, s.prune_start, s.prune_end, 0.9)),
               layer_nnz(critic_shapes, gmp_sparsity(step, s.prune_start, s.prune_end, 0.8))) for step in due]
    # near the end the cubic moves less than one weight per interval: those steps prune nothing
    assert prunings == sum(a != b for a, b in zip(counts, [None] + counts[:-1])) > 20
    assert nnz_per_member(t.actor) == [[n] for n in layer_nnz(actor_shapes, 0.9)]
    assert nnz_per_member(t.critic) == [[n, n] for n in layer_nnz(critic_shapes, 0.8)]
    t.env.close()


def test_prune_window_must_be_ordered(tmp_path):
    with pytest.raises(UserError, match="prune_start"):
        make_trainer(tmp_path, method="prune", prune_start=0.8, prune_end=0.5)


def test_prune_resumes_with_its_masks_and_masked_optimiser(tmp_path):
    t = make_trainer(tmp_path, method="prune", total_steps=2000, learning_starts=100, prune_interval=50)
    t.reset_env()
    while t.step < 800:
        t.env_step()
    t.save()
    resumed = make_trainer(tmp_path, method="prune", total_steps=2000, learning_starts=100, prune_interval=50)
    resumed.restore()
    assert all(torch.equal(a, b) for a, b in zip(masks_of(resumed.actor) + masks_of(resumed.critic),
                                                  masks_of(t.actor) + masks_of(t.critic)))
    assert len(resumed.actor_opt.sparse_layers) == len(t.actor_opt.sparse_layers) > 0
    assert_masks_shared(resumed.critic_target, resumed.critic)
    for trainer in (t, resumed):
        trainer.env.close()


# --------------------------------------------------------------------------- fine-tuning (--init-from)

def _teacher(tmp_path, **overrides):
    """A dense Pendulum checkpoint with non-default weights."""
    (tmp_path / "teacher").mkdir()
    t = make_trainer(tmp_path / "teacher", method="dense", **overrides)
    with torch.no_grad():
        for p in [*t.actor.parameters(), *t.critic.parameters()]:
            p.add_(torch.randn_like(p))
    t.save()
    t.env.close()
    return tmp_path / "teacher"


def test_init_from_copies_the_weights_and_sparse_methods_keep_the_largest(tmp_path):
    teacher_dir = _teacher(tmp_path)
    ckpt = load_checkpoint(teacher_dir)
    dense = make_trainer(tmp_path / "dense", method="dense", init_from=str(teacher_dir))
    for name, tensor in ckpt.data["actor"].items():
        assert torch.equal(dense.actor.state_dict()[name], tensor)
    assert all(torch.equal(a, b) for a, b in zip(dense.critic_target.parameters(), dense.critic.parameters()))
    sparse = make_trainer(tmp_path / "sparse", method="rlx2", init_from=str(teacher_dir))
    shapes = [(32, 3), (32, 32), (1, 32)]
    assert nnz_per_member(sparse.actor) == [[n] for n in layer_nnz(shapes, 0.9)]
    for layer, name in zip(sparse_layers(sparse.actor), ("net.layers.0", "net.layers.1", "net.layers.2")):
        full = ckpt.data["actor"][f"{name}.weight"]
        kept = layer.mask.bool()
        assert torch.equal(layer.weight.detach()[kept], full[kept])  # the kept weights are the teacher's
        if (~kept).any():  # and none dropped is larger than one kept
            assert float(full[~kept].abs().max()) <= float(full[kept].abs().min())
    assert_weights_masked(sparse.actor)
    assert_masks_shared(sparse.critic_target, sparse.critic)
    # warm-up explores around the teacher's policy, not uniformly at random
    _, policy = sparse.explore(np.zeros(3, dtype=np.float32))
    assert torch.allclose(torch.as_tensor(policy), sparse.actor.squashed(torch.zeros(1, 3))[0])
    for t in (dense, sparse):
        t.env.close()


@pytest.mark.parametrize("overrides, message", [
    ({"hidden": (16, 16)}, "pass --algo td3 --hidden 32 32"),
    ({"algo": "sac"}, "holds a td3 policy"),
    ({"env_id": "InvertedPendulum-v5"}, "takes 3 observations and gives 1 actions"),
])
def test_init_from_refuses_a_policy_this_run_cannot_continue(tmp_path, overrides, message):
    teacher_dir = _teacher(tmp_path)
    with pytest.raises(UserError, match=message):
        make_trainer(tmp_path / "run", init_from=str(teacher_dir), **overrides)


def test_init_from_refuses_an_actor_only_checkpoint(tmp_path):
    data = dict(load_checkpoint(_teacher(tmp_path)).data)
    for key in ("critic", "critic_target", "train_state"):
        data.pop(key)
    data.pop("format"), data.pop("version")
    save_checkpoint(tmp_path / "actor_only.pt", data)
    with pytest.raises(UserError, match="holds an actor only; fine-tuning needs its critics"):
        make_trainer(tmp_path / "run", init_from=str(tmp_path / "actor_only.pt"))
