"""Parameter and FLOP counts of an ER-sparse TD3 agent against dense: reproduces RLx2's
per-layer densities and size ratios (docs/DESIGN.md).

    # one configuration, in words
    python -m benchmarks.flops --env Hopper-v5 --actor-sparsity 0.98 --critic-sparsity 0.95
    # the results page's table (docs/BENCHMARKS.md, section 2): one row per ENV:ACTOR:CRITIC
    python -m benchmarks.flops --table Hopper-v5:0.98:0.95 HalfCheetah-v5:0.90:0.85

Analytic: the counts come from the masks' nonzeros, and the masks of a sparse run (from
scratch or magnitude-pruned) hold each layer's Erdős–Rényi share of the sparsity
(`tinypolicy.models.layer_nnz`); where the nonzeros sit changes no count, so no seed or
machine enters. `flops_vs_dense` is what `benchmarks.returns` uses for its FLOPs columns.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn

from tinypolicy.envs import make_env
from tinypolicy.models import TwinCritic, layer_nnz, make_actor, sparse_layers
from tinypolicy.models.flops import inference_flops, training_flops_per_step, weight_count

HIDDEN = (256, 256)
TABLE_HEADER = ("| env | actor / critic sparsity | actor layer densities % | actor nnz | critic nnz | size vs dense | "
                "training FLOPs | inference FLOPs |\n"
                "|---|---|---|---:|---:|---:|---:|---:|")


@cache
def env_spaces(env_id: str) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    """Observation size, action size and action bounds of `env_id` (the env is built once)."""
    env = make_env(env_id)
    try:
        space = env.action_space
        return env.observation_space.shape[0], space.shape[0], tuple(space.low.tolist()), tuple(space.high.tolist())
    finally:
        env.close()


@contextmanager
def one_thread() -> Iterator[None]:
    """Count on one torch thread: the masks are small, and beside busy processes a second
    thread made each count about 8x slower on the 2-vCPU VM."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def set_er_masks(net: nn.Module, sparsity: float) -> None:
    """Give every sparse layer of `net` (each ensemble member) its ER number of nonzeros at
    `sparsity`, the counts `sparsify` and `prune_to` give; the positions are the first ones."""
    layers = sparse_layers(net)
    for layer, nnz in zip(layers, layer_nnz([(l.out_features, l.in_features) for l in layers], sparsity)):
        mask = layer.mask.view(layer.ensemble, -1)
        mask.zero_()
        mask[:, :nnz] = 1.0


def agent(env_id: str, actor_sparsity: float, critic_sparsity: float, hidden: tuple[int, ...] = HIDDEN,
          algo: str = "td3") -> tuple[nn.Module, nn.Module]:
    """An actor and twin critic for `env_id` with ER masks at the given sparsities."""
    obs_dim, act_dim, low, high = env_spaces(env_id)
    actor = make_actor(algo, obs_dim, act_dim, list(hidden), list(low), list(high))
    critic = TwinCritic(obs_dim, act_dim, list(hidden))
    set_er_masks(actor, actor_sparsity)
    set_er_masks(critic, critic_sparsity)
    return actor, critic


@cache
def _networks(env_id: str, hidden: tuple[int, ...], algo: str) -> tuple[nn.Module, nn.Module]:
    """One actor and critic per shape, re-masked by each `flops_vs_dense` (many sparsities are cheap)."""
    return agent(env_id, 0.0, 0.0, hidden, algo)


@cache
def flops_vs_dense(env_id: str, actor_sparsity: float, critic_sparsity: float, hidden: tuple[int, ...] = HIDDEN,
                   algo: str = "td3", policy_freq: int = 2) -> tuple[float, float]:
    """Training FLOPs per env step and inference FLOPs per action, each as a fraction of dense."""
    actor, critic = _networks(env_id, tuple(hidden), algo)
    set_er_masks(actor, actor_sparsity)
    set_er_masks(critic, critic_sparsity)
    train = training_flops_per_step(actor, critic, policy_freq) / training_flops_per_step(actor, critic, policy_freq,
                                                                                          False)
    return train, inference_flops(actor) / inference_flops(actor, False)


def table_row(env_id: str, actor_sparsity: float, critic_sparsity: float, hidden: tuple[int, ...] = HIDDEN) -> str:
    """One row of the results page's table (a fully dense layer's density reads 100)."""
    actor, critic = agent(env_id, actor_sparsity, critic_sparsity, hidden)
    densities = " / ".join("100" if l.density == 1 else f"{l.density * 100:.1f}" for l in sparse_layers(actor))
    a_nnz, c_nnz = weight_count(actor), weight_count(critic)
    a_all, c_all = weight_count(actor, False), weight_count(critic, False)
    train, infer = flops_vs_dense(env_id, actor_sparsity, critic_sparsity, hidden)
    return (f"| {env_id} | {100 * actor_sparsity:g}% / {100 * critic_sparsity:g}% | {densities} | "
            f"{a_nnz:,} / {a_all:,} | {c_nnz:,} / {c_all:,} | {(a_nnz + c_nnz) / (a_all + c_all):.3f} | "
            f"{train:.3f} | {infer:.3f} |")


def table(configs: list[tuple[str, float, float]], hidden: tuple[int, ...] = HIDDEN) -> str:
    return "\n".join([TABLE_HEADER] + [table_row(env, a, c, hidden) for env, a, c in configs]) + "\n"


def parse_config(text: str) -> tuple[str, float, float]:
    """ENV:ACTOR:CRITIC, e.g. Hopper-v5:0.98:0.95."""
    try:
        env, actor, critic = text.rsplit(":", 2)
        sparsities = float(actor), float(critic)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ENV:ACTOR_SPARSITY:CRITIC_SPARSITY, "
                                         "e.g. Hopper-v5:0.98:0.95") from None
    if not all(0 <= s < 1 for s in sparsities):
        raise argparse.ArgumentTypeError(f"{text!r}: sparsities must be in [0, 1)")
    return env, *sparsities


def describe(env_id: str, actor_sparsity: float, critic_sparsity: float, hidden: tuple[int, ...]) -> str:
    """The single-configuration report, in words."""
    obs_dim, act_dim, _, _ = env_spaces(env_id)
    actor, critic = agent(env_id, actor_sparsity, critic_sparsity, hidden)
    densities = [f"{l.density * 100:.1f}" for l in sparse_layers(actor)]
    critic_densities = [f"{l.density * 100:.1f}" for l in sparse_layers(critic)]
    a_nnz, c_nnz = weight_count(actor), weight_count(critic)
    a_all, c_all = weight_count(actor, False), weight_count(critic, False)
    train, _ = flops_vs_dense(env_id, actor_sparsity, critic_sparsity, hidden)
    return "\n".join([
        f"{env_id} obs {obs_dim} act {act_dim}",
        f"actor  layer densities % {'/'.join(densities)}  nnz {a_nnz}/{a_all}",
        f"critic layer densities % {'/'.join(critic_densities)}  nnz {c_nnz}/{c_all}",
        f"size (actor+critic weights) {(a_nnz + c_nnz) / (a_all + c_all):.3f} of dense",
        f"training FLOPs {train:.3f} of dense",
        (f"inference FLOPs {inference_flops(actor) / inference_flops(actor, False):.3f} of dense "
         f"({inference_flops(actor)} vs {inference_flops(actor, False)} per action)"),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env")
    parser.add_argument("--actor-sparsity", type=float)
    parser.add_argument("--critic-sparsity", type=float)
    parser.add_argument("--table", nargs="+", type=parse_config, metavar="ENV:ACTOR:CRITIC",
                        help="print the results page's markdown table, one row per configuration")
    parser.add_argument("--hidden", default="256,256")
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    single = (args.env, args.actor_sparsity, args.critic_sparsity)
    if args.table and any(v is not None for v in single):
        parser.error("--table takes its configurations itself; leave out --env and the sparsities")
    if not args.table and any(v is None for v in single):
        parser.error("give --env, --actor-sparsity and --critic-sparsity, or --table ENV:ACTOR:CRITIC ...")
    with one_thread():
        print(table(args.table, hidden) if args.table else describe(*single, hidden), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
