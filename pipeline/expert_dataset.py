"""A dataset of D state-action pairs from an expert's rollouts (not a distilled one).

A stand-in for a HaDES dataset where none exists yet (the retraining benchmarks): the
expert rollouts HaDES's `--init expert` starts from, without any evolution. The trained
actor is rolled out deterministically for `--steps` env steps, the observation
normalisation is fixed to the rollouts' mean and std, and D of the visited states are kept
(drawn uniformly) with the expert's actions in policy units (its tanh output, in [-1, 1]).
The BC recipe is the default `BCRecipe`.

    python -m tinypolicy.pipeline.expert_dataset CHECKPOINT --size 64 --steps 10000 --seed 0 --out DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.ondevice.dataset import BCRecipe, Dataset, save_dataset
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.distill import expert_rollouts, observation_stats


def expert_dataset(checkpoint_path: str | Path, size: int, steps: int, seed: int) -> Dataset:
    ckpt = load_checkpoint(checkpoint_path)
    visited, labels, returns = expert_rollouts(ckpt.build_actor(), ckpt.env_id, steps, seed)
    if size > len(visited):
        raise UserError(f"--size {size} is more than the {len(visited)} states visited; use more --steps")
    mean, std = observation_stats(visited)
    keep = np.random.default_rng(seed).choice(len(visited), size=size, replace=False)
    spaces = ckpt.data["spaces"]
    meta = {"mode": "expert-rollouts", "checkpoint": str(checkpoint_path), "checkpoint_steps": ckpt.steps_done,
            "rollout_steps": steps, "seed": seed, "expert_episode_returns": [round(r, 2) for r in returns],
            "expert_return": round(float(np.mean(returns)), 2) if returns else None}
    return Dataset(env_id=ckpt.env_id, states=(visited[keep] - mean) / std, actions=labels[keep],
                   obs_mean=mean, obs_std=std, action_low=spaces["action_low"],
                   action_high=spaces["action_high"], recipe=BCRecipe(), meta=meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinypolicy.pipeline.expert_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    parser.add_argument("--size", type=int, default=64, metavar="D", help="state-action pairs kept")
    parser.add_argument("--steps", type=int, default=10_000, metavar="N", help="env steps of expert rollouts")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="rollout and draw seed")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.size <= 0 or args.steps <= 0:
            raise UserError("--size and --steps must be positive")
        dataset = expert_dataset(args.checkpoint, args.size, args.steps, args.seed)
        save_dataset(dataset, args.out)
    except UserError as exc:
        print(f"expert_dataset: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "env_id": dataset.env_id, "size": dataset.size,
                      "sha256": dataset.sha256, **dataset.meta}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
