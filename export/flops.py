"""Analytic FLOPs and parameter counts of sparse networks, from their masks.

A multiply-accumulate is two FLOPs; a sparse layer costs 2 * nnz per sample plus its
bias. Training FLOPs follow RLx2's accounting: forward, plus about twice that backward.
"""
from __future__ import annotations

from torch import nn

from models import sparse_layers


def inference_flops(net: nn.Module, sparse: bool = True) -> int:
    """FLOPs of one forward pass on one sample (per ensemble member, summed)."""
    total = 0
    for layer in sparse_layers(net):
        weights = int(layer.mask.sum()) if sparse else layer.mask.numel()
        total += 2 * weights + layer.bias.numel()
    return total


def weight_count(net: nn.Module, sparse: bool = True) -> int:
    """Weights of the sparse layers (biases excluded), nonzero only when `sparse`."""
    return sum(int(l.mask.sum()) if sparse else l.mask.numel() for l in sparse_layers(net))


def training_flops_per_step(actor: nn.Module, critic: nn.Module, policy_freq: int, sparse: bool = True) -> float:
    """FLOPs of one TD3 env step's updates (batch of one): target (actor + twin critic
    forward), critic forward + backward (about 3x forward), and every `policy_freq`
    steps an actor update (actor 3x forward, one critic head forward and backward)."""
    a, c = inference_flops(actor, sparse), inference_flops(critic, sparse)
    return (a + c) + 3 * c + (3 * a + 1.5 * c) / policy_freq


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    from models import TwinCritic, make_actor
    from pipeline.envs import make_env
    from pipeline.train import sparsify

    parser = argparse.ArgumentParser(description="Parameter and FLOP counts of an ER-sparse TD3 agent vs dense.")
    parser.add_argument("--env", required=True)
    parser.add_argument("--actor-sparsity", type=float, required=True)
    parser.add_argument("--critic-sparsity", type=float, required=True)
    parser.add_argument("--hidden", default="256,256")
    args = parser.parse_args(argv)
    env = make_env(args.env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    hidden = [int(h) for h in args.hidden.split(",")]
    actor = make_actor("td3", obs_dim, act_dim, hidden, env.action_space.low, env.action_space.high)
    critic = TwinCritic(obs_dim, act_dim, hidden)
    generator = torch.Generator().manual_seed(0)
    sparsify(actor, args.actor_sparsity, False, generator)
    sparsify(critic, args.critic_sparsity, False, generator)
    densities = [f"{l.density * 100:.1f}" for l in sparse_layers(actor)]
    critic_densities = [f"{l.density * 100:.1f}" for l in sparse_layers(critic)]
    a_nnz, c_nnz = weight_count(actor), weight_count(critic)
    a_all, c_all = weight_count(actor, False), weight_count(critic, False)
    print(f"{args.env} obs {obs_dim} act {act_dim}")
    print(f"actor  layer densities % {'/'.join(densities)}  nnz {a_nnz}/{a_all}")
    print(f"critic layer densities % {'/'.join(critic_densities)}  nnz {c_nnz}/{c_all}")
    print(f"size (actor+critic weights) {(a_nnz + c_nnz) / (a_all + c_all):.3f} of dense")
    print(f"training FLOPs {training_flops_per_step(actor, critic, 2) / training_flops_per_step(actor, critic, 2, False):.3f} of dense")
    print(f"inference FLOPs {inference_flops(actor) / inference_flops(actor, False):.3f} of dense "
          f"({inference_flops(actor)} vs {inference_flops(actor, False)} per action)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
