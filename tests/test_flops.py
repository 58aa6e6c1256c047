import pytest
import torch

from tinypolicy.models import DeterministicActor, TwinCritic, sparsify
from tinypolicy.models.flops import inference_flops, training_flops_per_step, weight_count


def test_counts_follow_masks():
    actor = DeterministicActor(11, 3, [256, 256], [-1.0] * 3, [1.0] * 3)
    dense = inference_flops(actor, sparse=False)
    assert dense == 2 * (11 * 256 + 256 * 256 + 256 * 3) + (256 + 256 + 3)
    sparsify(actor, 0.98, False, torch.Generator().manual_seed(0))
    assert weight_count(actor) == 1382 and weight_count(actor, sparse=False) == 69120
    assert inference_flops(actor) == 2 * 1382 + (256 + 256 + 3)
    assert inference_flops(actor, sparse=False) == dense


def test_training_flops_ratio_matches_paper_hopper():
    actor = DeterministicActor(11, 3, [256, 256], [-1.0] * 3, [1.0] * 3)
    critic = TwinCritic(11, 3, [256, 256])
    generator = torch.Generator().manual_seed(0)
    sparsify(actor, 0.98, False, generator)
    sparsify(critic, 0.95, False, generator)
    ratio = training_flops_per_step(actor, critic, 2) / training_flops_per_step(actor, critic, 2, sparse=False)
    assert 0.040 < ratio < 0.050  # paper: 0.043 (biases counted here too)


def test_matmul_floor_counts_every_product_of_a_td3_and_a_sac_update():
    from benchmarks.train_speed import update_products

    batch, obs, act, hidden = 8, 5, 2, 16
    macs = lambda shapes: sum(m * k * n for m, k, n in shapes)
    actor_fwd = batch * (obs * hidden + hidden * act)
    q_fwd = batch * ((obs + act) * hidden + hidden)           # one Q head
    q_input_grads = batch * (hidden + hidden * (obs + act))  # back to the head's input
    critic, actor = update_products("td3", obs, act, [hidden], batch)
    # target actor; target and online heads forward; both heads' weight gradients and the
    # gradient into their hidden layer (the batch itself needs none)
    assert macs(critic) == actor_fwd + 4 * q_fwd + 2 * q_fwd + 2 * batch * hidden
    # actor forward and backward (weights, hidden input), Q1 forward and back to the action
    assert macs(actor) == 2 * actor_fwd + batch * hidden * act + q_fwd + q_input_grads
    sac_critic, sac_actor = update_products("sac", obs, act, [hidden], batch)
    sac_actor_fwd = batch * (obs * hidden + hidden * 2 * act)
    assert macs(sac_critic) == sac_actor_fwd + 6 * q_fwd + 2 * batch * hidden
    assert macs(sac_actor) == 2 * sac_actor_fwd + batch * hidden * 2 * act + 2 * (q_fwd + q_input_grads)


def test_handwritten_td3_gradients_equal_autograd():
    from benchmarks.train_speed import HandwrittenTD3

    generator = torch.Generator().manual_seed(0)
    batch, obs_dim, act_dim = 16, 5, 2
    td3 = HandwrittenTD3(obs_dim, act_dim, [8, 8], batch, generator)
    for params in (td3.actor_target, td3.critic_target):  # targets differ from the online nets
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    obs, next_obs = torch.randn(2, batch, obs_dim, generator=generator)
    actions = torch.rand(batch, act_dim, generator=generator) * 2 - 1
    returns, discount = torch.randn(batch, generator=generator), torch.rand(batch, generator=generator)
    noise = 0.1 * torch.randn(batch, act_dim, generator=generator)

    def mlp(params, x):
        for i in range(0, len(params), 2):
            x = x @ params[i] + params[i + 1]
            x = x.relu() if i + 2 < len(params) else x
        return x

    critic = [p.clone().requires_grad_() for p in td3.critic]
    with torch.no_grad():
        next_action = (torch.tanh(mlp(td3.actor_target, next_obs)) + noise).clamp(-1, 1)
        next_q = mlp(td3.critic_target, torch.cat([next_obs, next_action], 1)).squeeze(-1)
        target = returns + discount * next_q.min(0).values
    loss = (mlp(critic, torch.cat([obs, actions], 1)).squeeze(-1) - target).pow(2).mean(1).sum()
    expected = torch.autograd.grad(loss, critic)
    for got, want in zip(td3.critic_grads(obs, actions, returns.unsqueeze(1), next_obs, discount.unsqueeze(1), noise),
                         expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    actor = [p.clone().requires_grad_() for p in td3.actor]
    head = [p[0] for p in td3.critic]
    loss = -mlp(head, torch.cat([obs, torch.tanh(mlp(actor, obs))], 1)).mean()
    for got, want in zip(td3.actor_grads(obs), torch.autograd.grad(loss, actor)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("threads", ["0", "1,x", ""])
def test_bench_train_refuses_bad_thread_counts(threads, capsys):
    from benchmarks.train_speed import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--threads", threads])
    assert exit_info.value.code == 2
    assert "--threads must be positive integers" in capsys.readouterr().err


def test_handwritten_td3_in_bfloat16_follows_float32():
    """The bf16 bound must do the same update, only rounded: its gradients stay close to
    float32's, and its float32 masters and casts stay in step after updates. Hidden-layer
    gradients are sums over the batch that largely cancel, so bfloat16's 8-bit mantissa
    moves them by several percent (about 7% here); a wrong product moves them by ~100%."""
    from benchmarks.train_speed import HandwrittenTD3

    batch, obs_dim, act_dim = 64, 5, 2
    nets = [HandwrittenTD3(obs_dim, act_dim, [32, 32], batch, torch.Generator().manual_seed(0), dtype)
            for dtype in (torch.float32, torch.bfloat16)]
    generator = torch.Generator().manual_seed(1)
    obs, next_obs = torch.randn(2, batch, obs_dim, generator=generator)
    actions = torch.rand(batch, act_dim, generator=generator) * 2 - 1
    returns, discount = torch.randn(batch, 1, generator=generator), torch.full((batch, 1), 0.99)
    noise = 0.1 * torch.randn(batch, act_dim, generator=generator)
    fp32, bf16 = nets
    for got, want in zip(bf16.critic_grads(obs, actions, returns, next_obs, discount, noise),
                         fp32.critic_grads(obs, actions, returns, next_obs, discount, noise)):
        assert got.dtype == torch.float32
        assert (got - want).norm() < 0.15 * want.norm()
    for got, want in zip(bf16.actor_grads(obs), fp32.actor_grads(obs)):
        assert (got - want).norm() < 0.15 * want.norm()
    for _ in range(2):
        bf16.update(obs, actions, returns, next_obs, discount, noise)
    for params in (bf16.actor, bf16.critic, bf16.actor_target, bf16.critic_target):
        compute = bf16.compute[id(params)]
        for master, cast in zip(params[:-2], compute[:-2]):
            torch.testing.assert_close(cast, master.to(torch.bfloat16))
        assert all(cast is master for master, cast in zip(params[-2:], compute[-2:]))  # output layer: float32


def test_table_prints_the_results_page_rows(capsys):
    """`--table` prints docs/BENCHMARKS.md's section 2 (the densities, counts and ratios of the ER masks)."""
    from benchmarks.flops import main

    assert main(["--table", "Hopper-v5:0.98:0.95"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        ("| env | actor / critic sparsity | actor layer densities % | actor nnz | critic nnz | size vs dense | "
         "training FLOPs | inference FLOPs |"),
        "|---|---|---|---:|---:|---:|---:|---:|",
        "| Hopper-v5 | 98% / 95% | 12.6 / 1.0 / 44.9 | 1,382 / 69,120 | 6,938 / 138,752 | 0.040 | 0.047 | 0.024 |"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--table", "Hopper-v5:0.98"])
    assert exit_info.value.code == 2
    assert "is not ENV:ACTOR_SPARSITY:CRITIC_SPARSITY" in capsys.readouterr().err
