"""Compare finished training runs against their dense baseline: return ratio, nnz,
training and inference FLOPs, env steps/s, and a learning-curve plot.

    python -m benchmarks.train_report runs/hopper-td3-dense-s0 runs/hopper-td3-rlx2-s0 \\
        --markdown docs/results/train_table.md --plot docs/results/train_curves.png

Runs of one env and method (and precision) are seeds of one configuration: the table gives
their mean ± sd and the plot one line per seed. The mean score of an env's `dense` seeds is
the 100% reference. A run's score
is the mean evaluation return over its last 10% of evaluations (the paper averages its
last 30 of 600), so a single lucky evaluation does not decide the comparison.

`--reference DIR ...` adds Stable-Baselines3 runs of `python -m benchmarks.sb3_reference`
(same hyperparameters and evaluation) as rows and dashed curves; they are not part of
the dense reference.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.sweep import summarise_run
from tinypolicy.plots import save_figure, subplots


def summarise_reference(run: Path) -> dict:
    """An `benchmarks.sb3_reference` run: its curve, score and final return."""
    try:
        final = json.loads((run / "eval.json").read_text())
        with (run / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        curve = [(int(r["step"]), float(r["eval_return"])) for r in rows]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{run} is not a finished sb3_reference run: {exc}") from None
    if not curve:
        raise UserError(f"{run}/metrics.csv has no evaluations")
    tail = curve[-max(1, len(curve) // 10):]
    return {"run": str(run), "env": final["env_id"], "label": f"SB3 {final['algo'].upper()} dense (reference)",
            "seed": final["seed"], "steps": final["steps"], "score": float(np.mean([v for _, v in tail])),
            "final_return": final["mean_return"], "curve": curve}


def _mean_sd(values: np.ndarray) -> str:
    return f"{values.mean():.1f}" if len(values) == 1 else f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--reference", nargs="*", type=Path, default=[], help="benchmarks.sb3_reference run directories")
    args = parser.parse_args(argv)
    if not args.runs and not args.reference:
        parser.error("give at least one run directory or --reference directory")
    try:
        runs = [summarise_run(r) for r in args.runs]
        references = [summarise_reference(r) for r in args.reference]
    except UserError as exc:
        parser.exit(2, f"train_report: error: {exc}\n")

    groups = defaultdict(list)  # (env, method label) -> the seeds of that configuration
    for r in runs:
        groups[(r["env"], r["label"])].append(r)
    lines = ["| env | method | seeds | steps | score (last 10% evals) | final return | % of dense | actor nnz | "
             "critic nnz | training FLOPs | inference FLOPs | env steps/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (env, label), group in groups.items():
        dense_runs = next((g for (e, _), g in groups.items()
                           if e == env and g[0]["method"] == "dense" and g[0]["precision"] == group[0]["precision"]), None)
        dense_score = float(np.mean([d["score"] for d in dense_runs])) if dense_runs else None
        first = group[0]
        score = np.array([r["score"] for r in group])
        finals = [r["final_return"] for r in group if r["final_return"] is not None]
        speeds = [r["steps_per_s"] for r in group if r["steps_per_s"]]
        pct = f"{100 * score.mean() / dense_score:.1f}" if dense_score and dense_score > 0 else "n/a"
        rel = (lambda key: f"{first[key] / dense_runs[0][key]:.3f}") if dense_runs else (lambda key: "n/a")
        lines.append(f"| {env} | {label} | {', '.join(str(r['seed']) for r in group)} | {first['steps']:,} | "
                     f"{_mean_sd(score)} | {_mean_sd(np.array(finals)) if finals else 'n/a'} | {pct} | "
                     f"{first['actor_nnz']:,} / {first['actor_weights']:,} | "
                     f"{first['critic_nnz']:,} / {first['critic_weights']:,} | "
                     f"{rel('train_flops')} | {rel('infer_flops')} | "
                     f"{f'{np.mean(speeds):.1f}' if speeds else 'n/a'} |")
    ref_groups = defaultdict(list)
    for r in references:
        ref_groups[(r["env"], r["label"])].append(r)
    for (env, label), group in ref_groups.items():
        finals = np.array([r["final_return"] for r in group])
        lines.append(f"| {env} | {label} | {', '.join(str(r['seed']) for r in group)} | {group[0]['steps']:,} | "
                     f"{_mean_sd(np.array([r['score'] for r in group]))} | {_mean_sd(finals)} | n/a | n/a | n/a | "
                     f"n/a | n/a | n/a |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    if args.plot:
        envs = list(dict.fromkeys(env for env, _ in [*groups, *ref_groups]))
        fig, axes = subplots(1, len(envs), figsize=(5.5 * len(envs), 4), squeeze=False)
        for ax, env in zip(axes[0], envs):
            for (e, label), group in groups.items():
                if e != env:
                    continue
                for i, r in enumerate(group):
                    steps, returns = zip(*r["curve"])
                    line, = ax.plot(steps, returns, alpha=0.85, lw=1.2,
                                    color=None if i == 0 else line.get_color(),
                                    label=label if i == 0 else None)
            for (e, label), group in ref_groups.items():
                for i, r in enumerate(group):
                    if e == env:
                        steps, returns = zip(*r["curve"])
                        ax.plot(steps, returns, ls="--", lw=1.2, color="0.4", label=label if i == 0 else None)
            ax.set(title=f"{env}, TD3, one line per seed", xlabel="env steps", ylabel="eval return (10 episodes)")
            ax.grid(alpha=0.3)
            ax.legend()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
