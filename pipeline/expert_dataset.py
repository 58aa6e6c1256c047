"""A dataset of D state-action pairs from an expert's rollouts (not a distilled one).

A stand-in for a HaDES dataset wherever one is needed before distillation has produced
one (the retraining benchmarks) and the "expert warm start" variant of HaDES: roll the
trained actor out deterministically, fix the observation normalisation to the rollouts'
mean and std, and keep D states drawn uniformly at random with the expert's actions in
policy units (its tanh output, in [-1, 1]). The BC recipe is the default `BCRecipe`.

    python -m pipeline.expert_dataset CHECKPOINT --size 64 --episodes 10 --seed 0 --out DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.dataset import BCRecipe, Dataset, save_dataset
from pipeline.envs import make_env
from pipeline.errors import UserError

MIN_OBS_STD = 1e-6  # a constant observation would otherwise divide by zero


@torch.no_grad()
def expert_dataset(checkpoint_path: str | Path, size: int, episodes: int, seed: int) -> Dataset:
    ckpt = load_checkpoint(checkpoint_path)
    actor = ckpt.build_actor()
    env = make_env(ckpt.env_id)
    observations, actions, returns = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            squashed = actor.squashed(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
            observations.append(obs)
            actions.append(squashed[0].numpy())
            obs, reward, terminated, truncated, _ = env.step(actor.to_env_units(squashed)[0].numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    observations, actions = np.asarray(observations, np.float64), np.asarray(actions, np.float32)
    if size > len(observations):
        raise UserError(f"the rollouts have {len(observations)} states, fewer than --size {size}; "
                        "use more --episodes")
    mean, std = observations.mean(axis=0), np.maximum(observations.std(axis=0), MIN_OBS_STD)
    keep = np.random.default_rng(seed).choice(len(observations), size=size, replace=False)
    spaces = ckpt.data["spaces"]
    meta = {"mode": "expert-rollouts", "checkpoint": str(checkpoint_path), "checkpoint_steps": ckpt.steps_done,
            "episodes": episodes, "rollout_states": len(observations), "seed": seed,
            "expert_mean_return": float(np.mean(returns)), "expert_std_return": float(np.std(returns))}
    return Dataset(env_id=ckpt.env_id, states=(observations[keep] - mean) / std, actions=actions[keep],
                   obs_mean=mean, obs_std=std, action_low=spaces["action_low"],
                   action_high=spaces["action_high"], recipe=BCRecipe(), meta=meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.expert_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    parser.add_argument("--size", type=int, default=64, metavar="D", help="state-action pairs kept")
    parser.add_argument("--episodes", type=int, default=10, metavar="N", help="deterministic expert episodes")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="first episode's seed and the draw's")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.size <= 0 or args.episodes <= 0:
            raise UserError("--size and --episodes must be positive")
        dataset = expert_dataset(args.checkpoint, args.size, args.episodes, args.seed)
        save_dataset(dataset, args.out)
    except UserError as exc:
        print(f"expert_dataset: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "env_id": dataset.env_id, "size": dataset.size,
                      "sha256": dataset.sha256, **dataset.meta}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
