"""Collect HaDES runs into one Markdown table (docs/BENCHMARKS.md, "Behaviour distillation"),
and publish their datasets.

Reads each run folder's summary.json (written by `tinypolicy distill`) and the expert's return
(`--expert-return`, else the dataset's meta.expert_return, which a run from an expert records),
and prints one row per run, then, for the runs with a `tinypolicy generalise` report in
RUN/generalise/, one row per grid (mean, worst cell, share of cells at the target):

    python -m benchmarks.hades_table runs/hopper-d64-r-expert runs/hopper-d64-a-expert \
        --out docs/results/hades/hopper-table.md

A published folder (below) is itself a run folder for this table, so the docs' tables rerun
from the committed files.

`--publish DIR` also copies each run's dataset (dataset.npz, dataset.json, and policy_init.npz
for HaDES-F) with its summary.json, fitness.csv and generalise/ reports, when present, into
DIR/<run folder name>/, so anyone can retrain from it (they are a few KB). The dataset is read
and validated first; its meta.expert_return must be known (`--expert-return` records it):

    python -m benchmarks.hades_table runs/hopper-d64-a-expert --publish docs/results/hades
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tinypolicy.ondevice.artefact import atomic_write, write_text
from tinypolicy.ondevice.dataset import load_dataset, save_dataset
from tinypolicy.ondevice.errors import UserError
from tinypolicy.shares import percent, share_of

VARIANTS = {"f": "HaDES-F", "r": "HaDES-R", "a": "architecture-randomised"}
GENERALISE = "generalise/generalise.json"
COPIED = ("policy_init.npz", "summary.json", "fitness.csv", "fitness.png", "generalise/generalise.md", GENERALISE,
          "generalise/generalise.csv", "generalise/generalise.png")


def _expert_return(run: Path, given: float | None) -> float | None:
    return given if given is not None else load_dataset(run).meta.get("expert_return")


def rows(run_dirs: list[Path], expert_return: float | None) -> list[str]:
    lines = ["| env | variant | D | N x G | dataset = mean of generation | env steps | ES wall time "
             "| retrained return, fresh inits (mean; per seed) | % of expert | own init (% of expert) | random |",
             "|---|---|---|---|---:|---|---|---|---|---|---|"]
    for run in run_dirs:
        s = json.loads((run / "summary.json").read_text())
        expert = _expert_return(run, expert_return)

        def share(value: float) -> str:
            return percent(share_of(value, expert))

        fixed = (f"{s['fixed_init_return']:.0f} ({share(s['fixed_init_return'])})"
                 if "fixed_init_return" in s else "-")
        per_seed = ", ".join(f"{r:.0f}" for r in s["fresh_init_returns"])
        lines.append(f"| {s['env_id']} | {VARIANTS[s['mode']]} from {s['init']} | {s['size']} | "
                     f"{s['population']} x {s['generations']} | {s.get('selected_generation', '-')} | "
                     f"{s['env_steps'] / 1e6:.2f}M | "
                     f"{s['distill_seconds'] / 60:.0f} min | {s['fresh_init_mean']:.0f} ({per_seed}) | "
                     f"{share(s['fresh_init_mean'])} | {fixed} | {s['random_policy_return']:.0f} |")
    grids = [(run, json.loads((run / GENERALISE).read_text())) for run in run_dirs if (run / GENERALISE).is_file()]
    if grids:
        lines += ["", "| variant | grid | cells | mean return | % of expert | worst cell | worst return | % of expert "
                      "| cells >= target |", "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for run, report in grids:
        mode = json.loads((run / "summary.json").read_text())["mode"]
        expert = report["expert_return"] if expert_return is None else expert_return
        for grid, g in report["summary"].items():
            lines.append(f"| {VARIANTS[mode]} | {grid} | {g['cells']} | {g['mean_return']:.0f} | "
                         f"{percent(share_of(g['mean_return'], expert))} | {g['worst_cell']} | "
                         f"{g['worst_return']:.0f} | {percent(share_of(g['worst_return'], expert))} | "
                         f"{percent(g['fraction_at_target'])} (>= {report['target_share']:.0%}) |")
    return lines


def publish(run: Path, target_root: Path, expert_return: float | None) -> Path:
    """Copy `run`'s dataset and reports into target_root/<run name>/; returns that folder."""
    target = target_root / run.name
    if target.resolve() == run.resolve():
        raise UserError(f"--publish {target_root} would publish {run} onto itself; give another folder")
    dataset = load_dataset(run)
    expert = _expert_return(run, expert_return)
    if expert is None:
        raise UserError(f"{run}/dataset.json records no meta.expert_return; give --expert-return")
    dataset.meta["expert_return"] = expert
    save_dataset(dataset, target)
    for name in COPIED:
        if (run / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target / name, lambda tmp, source=run / name: shutil.copyfile(source, tmp))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--expert-return", type=float, default=None, metavar="X")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE")
    parser.add_argument("--publish", type=Path, default=None, metavar="DIR",
                        help="copy each run's dataset and reports into DIR/<run name>/")
    args = parser.parse_args(argv)
    try:
        table = "\n".join(rows(args.runs, args.expert_return))
        print(table)
        if args.out:
            write_text(args.out, table + "\n")
        for run in args.runs if args.publish else ():
            print(f"published {publish(run, args.publish, args.expert_return)}", file=sys.stderr)
    except UserError as exc:
        print(f"hades_table: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
