"""How well each student architecture of the generalisation grid can imitate the expert at all.

A distilled dataset teaches a student by behaviour cloning, so what a student of a given
architecture reaches from the best dataset is bounded in practice by what plain supervised
learning on plenty of the expert's own data gives it. For every architecture of the grid
(`tinypolicy generalise`'s widths x depths x activations) this trains fresh networks on
`--pairs` of the expert's (state, action) pairs (its deterministic rollouts, normalised as a
distilled dataset is; MSE in policy units; Adam on minibatches for `--steps` steps: 156 times
the pairs and 15 times the steps of a 64-pair dataset's longest BC) and rolls them out:

    python -m benchmarks.bc_ceiling run runs/hopper-td3-rlx2-a98-c95-fp32-s0/checkpoint.pt \
        --out docs/results/hades/hopper-bc-ceiling.json
    python -m benchmarks.bc_ceiling table docs/results/hades/hopper-bc-ceiling.json

It is a reference for the grid, not a bound on it: a dataset may teach a small network a
simpler behaviour than the expert's that scores better than its imitation of the expert.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.envs import evaluate_policy
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.distill import expert_rollouts, observation_stats
from tinypolicy.pipeline.settings import ACTIVATIONS, ARCH_DEPTHS, ARCH_WIDTHS
from tinypolicy.shares import percent, share_of

TORCH_ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU}
ROLLOUT_SEED = 10_000_000  # the expert's data; evaluation episodes start at EVAL_SEED
EVAL_SEED = 20_000


def imitate(states: torch.Tensor, actions: torch.Tensor, hidden: tuple[int, ...], activation: str, steps: int,
            lr: float, batch: int, seed: int) -> torch.nn.Sequential:
    """A fresh MLP fitted to the pairs by minibatch MSE (its output clipped to [-1, 1] when used)."""
    torch.manual_seed(seed)
    layers, width = [], states.shape[1]
    for size in hidden:
        layers += [torch.nn.Linear(width, size), TORCH_ACTIVATIONS[activation]()]
        width = size
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, actions.shape[1]))
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(states), (batch,), generator=generator)
        loss = (net(states[pick]) - actions[pick]).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net


def run(args: argparse.Namespace) -> dict:
    ckpt = load_checkpoint(args.checkpoint)
    actor = ckpt.build_actor()
    if not hasattr(actor, "squashed"):
        raise UserError(f"{args.checkpoint} has no squashed-action actor")
    visited, labels, returns = expert_rollouts(actor, ckpt.env_id, args.pairs, ROLLOUT_SEED)
    if not returns:
        raise UserError(f"the expert finished no episode in {args.pairs} steps; use more --pairs")
    expert_return = float(np.mean(returns))
    mean, std = observation_stats(visited)
    states = torch.as_tensor((visited - mean) / std, dtype=torch.float32)
    actions = torch.as_tensor(labels, dtype=torch.float32)
    cells = [(w, d, a) for w in args.widths for d in args.depths for a in args.activations]
    rows, start = [], time.time()
    for width, depth, activation in tqdm(cells, disable=args.quiet, desc="architectures"):
        per_seed, mse = [], []
        for seed in range(args.seeds):
            net = imitate(states, actions, (width,) * depth, activation, args.steps, args.lr, args.batch, seed)
            with torch.no_grad():
                mse.append(float((net(states).clamp(-1, 1) - actions).pow(2).mean()))

            @torch.no_grad()
            def policy(obs: np.ndarray, net=net) -> np.ndarray:
                squashed = net(torch.as_tensor((obs - mean) / std, dtype=torch.float32)).clamp(-1, 1)
                return actor.to_env_units(squashed).numpy()
            per_seed.append(evaluate_policy(policy, ckpt.env_id, args.episodes, EVAL_SEED + 100 * seed).tolist())
        flat = [r for seed_returns in per_seed for r in seed_returns]
        rows.append({"width": width, "depth": depth, "activation": activation, "mean_return": float(np.mean(flat)),
                     "returns": [[round(r, 1) for r in seed_returns] for seed_returns in per_seed],
                     "train_mse": [round(m, 5) for m in mse]})
    return {"env_id": ckpt.env_id, "expert": str(args.checkpoint), "expert_steps": ckpt.steps_done,
            "expert_return": round(expert_return, 2), "pairs": args.pairs, "steps": args.steps, "lr": args.lr,
            "batch": args.batch, "seeds": args.seeds, "episodes": args.episodes, "rows": rows,
            "seconds": round(time.time() - start, 1), "torch_threads": torch.get_num_threads(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.processor() or platform.machine()}


def table(report: dict) -> list[str]:
    """Per width x depth, the share of the expert per activation; then the grid's summary."""
    expert = report["expert_return"]
    activations = list(dict.fromkeys(r["activation"] for r in report["rows"]))
    by_cell = {(r["width"], r["depth"], r["activation"]): r["mean_return"] for r in report["rows"]}
    lines = ["| hidden | " + " | ".join(activations) + " |", "|---|" + "---:|" * len(activations)]
    for width, depth in dict.fromkeys((r["width"], r["depth"]) for r in report["rows"]):
        shares = [percent(share_of(by_cell[width, depth, a], expert)) if (width, depth, a) in by_cell else ""
                  for a in activations]
        lines.append(f"| {'-'.join([str(width)] * depth)} | " + " | ".join(shares) + " |")
    values = np.asarray([r["mean_return"] for r in report["rows"]])
    worst = report["rows"][int(values.argmin())]
    settings = (f"{report['pairs']:,} of its pairs, {report['steps']:,} Adam steps of {report['batch']}, "
                f"lr {report['lr']}; {report['seeds']} inits x {report['episodes']} episodes per cell")
    worst_label = f"{'-'.join([str(worst['width'])] * worst['depth'])} {worst['activation']}"
    lines += ["", (f"{report['env_id']}, expert {expert:,.0f} ({settings}): mean over the {len(values)} cells "
                   f"{percent(share_of(values.mean(), expert))}, worst {worst_label} "
                   f"{percent(share_of(worst['mean_return'], expert))}, cells at >= 40% "
                   f"{percent(float(np.mean(values >= 0.4 * expert)))}, at >= 60% "
                   f"{percent(float(np.mean(values >= 0.6 * expert)))}.")]
    return lines


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="train and roll out every architecture; write the JSON report")
    go.add_argument("checkpoint", type=Path, help="the expert's training checkpoint")
    go.add_argument("--out", type=Path, required=True, metavar="FILE")
    go.add_argument("--pairs", type=int, default=10_000, help="expert env steps, all kept as pairs")
    go.add_argument("--steps", type=int, default=6_000)
    go.add_argument("--lr", type=float, default=1e-3)
    go.add_argument("--batch", type=int, default=256)
    go.add_argument("--seeds", type=int, default=2, help="fresh networks per architecture")
    go.add_argument("--episodes", type=int, default=5, help="per network")
    go.add_argument("--widths", type=_ints, default=ARCH_WIDTHS, metavar="W,W")
    go.add_argument("--depths", type=_ints, default=ARCH_DEPTHS, metavar="N,N")
    go.add_argument("--activations", nargs="+", choices=ACTIVATIONS, default=ACTIVATIONS)
    go.add_argument("--quiet", action="store_true")
    show = sub.add_parser("table", help="print the Markdown table of a report")
    show.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            if args.out.exists():
                raise UserError(f"{args.out} exists; give another --out")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(args.out.parent, os.W_OK):  # now, not after the training
                raise UserError(f"cannot write into {args.out.parent}")
            torch.set_num_threads(1)
            write_json(args.out, run(args))
            print("\n".join(table(json.loads(args.out.read_text()))))
        else:
            if not args.report.is_file():
                raise UserError(f"{args.report} does not exist")
            print("\n".join(table(json.loads(args.report.read_text()))))
    except UserError as exc:
        print(f"bc_ceiling: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
