"""Compare finished training runs against their dense baseline: return ratio, nnz,
training and inference FLOPs, env steps/s, and a learning-curve plot.

    python -m export.train_report runs/hopper-td3-dense-s0 runs/hopper-td3-rlx2-s0 \\
        --markdown docs/results/train_table.md --plot docs/results/train_curves.png

Runs are grouped by env; the `dense` run of each env is the 100% reference. A run's score
is the mean evaluation return over its last 10% of evaluations (the paper averages its
last 30 of 600), so a single lucky evaluation does not decide the comparison.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

from export.flops import inference_flops, training_flops_per_step, weight_count
from pipeline.checkpoint import load_checkpoint
from pipeline.errors import UserError


def summarise(run: Path) -> dict:
    ckpt = load_checkpoint(run / "checkpoint.pt")
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{run}/metrics.csv has no evaluations")
    tail = rows[-max(1, len(rows) // 10):]
    actor, critic = ckpt.build_actor(), ckpt.build_critic()
    cfg = ckpt.config
    final = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else None
    return {
        "run": str(run), "env": ckpt.env_id, "method": cfg["method"], "algo": cfg["algo"], "seed": cfg["seed"],
        "steps": ckpt.steps_done, "score": sum(float(r["eval_return"]) for r in tail) / len(tail),
        "final_return": final["mean_return"] if final else None,
        "actor_nnz": weight_count(actor), "actor_weights": weight_count(actor, sparse=False),
        "critic_nnz": weight_count(critic), "critic_weights": weight_count(critic, sparse=False),
        "train_flops": training_flops_per_step(actor, critic, cfg["policy_freq"]),
        "infer_flops": inference_flops(actor),
        "steps_per_s": final["steps_per_s"] if final else None,
        "curve": [(int(r["step"]), float(r["eval_return"])) for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        runs = [summarise(r) for r in args.runs]
    except UserError as exc:
        parser.exit(2, f"train_report: error: {exc}\n")

    by_env = defaultdict(list)
    for r in runs:
        by_env[r["env"]].append(r)
    lines = ["| env | method | steps | score (last 10% evals) | final return | % of dense | actor nnz | "
             "critic nnz | training FLOPs | inference FLOPs | env steps/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for env, group in by_env.items():
        dense = next((r for r in group if r["method"] == "dense"), None)
        for r in group:
            pct = f"{100 * r['score'] / dense['score']:.1f}" if dense and dense["score"] > 0 else "n/a"
            rel = (lambda key: f"{r[key] / dense[key]:.3f}") if dense else (lambda key: "n/a")
            final = f"{r['final_return']:.1f}" if r["final_return"] is not None else "n/a"
            sps = f"{r['steps_per_s']:.1f}" if r["steps_per_s"] else "n/a"
            lines.append(f"| {env} | {r['method']} | {r['steps']:,} | {r['score']:.1f} | {final} | {pct} | "
                         f"{r['actor_nnz']:,} / {r['actor_weights']:,} | {r['critic_nnz']:,} / {r['critic_weights']:,} | "
                         f"{rel('train_flops')} | {rel('infer_flops')} | {sps} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(by_env), figsize=(5.5 * len(by_env), 4), squeeze=False)
        for ax, (env, group) in zip(axes[0], by_env.items()):
            for r in group:
                steps, returns = zip(*r["curve"])
                ax.plot(steps, returns, label=f"{r['method']} (actor {1 - r['actor_nnz'] / r['actor_weights']:.0%} sparse)")
            ax.set(title=f"{env}, TD3, seed {group[0]['seed']}", xlabel="env steps", ylabel="eval return (10 episodes)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
