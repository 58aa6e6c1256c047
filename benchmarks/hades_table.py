"""Collect HaDES runs into one Markdown table (docs/BENCHMARKS.md, "Behaviour distillation").

Reads each run folder's summary.json (written by `tinypolicy distill`) and, when given, the
expert's and a random policy's returns, and prints one row per run:

    python -m benchmarks.hades_table runs/hopper-d64-f-zeros runs/hopper-d64-f-expert \
        --expert-return 2500.0 --out docs/results/hades_hopper.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(run_dirs: list[Path], expert_return: float | None) -> list[str]:
    lines = ["| env | variant | D | N x G | env steps | ES wall time | retrained return, fresh inits (mean; per seed) "
             "| % of expert | fixed init (% of expert) | random |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in run_dirs:
        s = json.loads((run / "summary.json").read_text())
        def share(value: float) -> str:
            return f"{100 * value / expert_return:.0f}%" if expert_return else "-"

        fixed = (f"{s['fixed_init_return']:.0f} ({share(s['fixed_init_return'])})"
                 if "fixed_init_return" in s else "-")
        per_seed = ", ".join(f"{r:.0f}" for r in s["fresh_init_returns"])
        lines.append(f"| {s['env_id']} | HaDES-{s['mode'].upper()} from {s['init']} | {s['size']} | "
                     f"{s['population']} x {s['generations']} | {s['env_steps'] / 1e6:.2f}M | "
                     f"{s['distill_seconds'] / 60:.0f} min | {s['fresh_init_mean']:.0f} ({per_seed}) | "
                     f"{share(s['fresh_init_mean'])} | {fixed} | {s['random_policy_return']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--expert-return", type=float, default=None, metavar="X")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE")
    args = parser.parse_args()
    table = "\n".join(rows(args.runs, args.expert_return))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
