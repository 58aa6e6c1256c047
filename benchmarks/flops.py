"""Parameter and FLOP counts of an ER-sparse TD3 agent against dense: reproduces RLx2's
per-layer densities and size ratios (docs/DESIGN.md).

    python -m benchmarks.flops --env Hopper-v5 --actor-sparsity 0.98 --critic-sparsity 0.95
"""
from __future__ import annotations

import argparse

import torch

from tinypolicy.envs import make_env
from tinypolicy.models import TwinCritic, make_actor, sparse_layers, sparsify
from tinypolicy.models.flops import inference_flops, training_flops_per_step, weight_count


def main(argv: list[str] | None = None) -> int:
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
