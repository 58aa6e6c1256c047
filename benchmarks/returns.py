"""Returns of finished training runs, aggregated as the field does (rliable, Agarwal et al. 2021).

Two steps, so that the results page is regenerated from committed raw files alone:

    # copy each finished run's raw results (metrics.csv, eval.json, run.json) into the repository
    python -m benchmarks.returns collect /work/runs/hopper-td3-* --into docs/results/runs
    # aggregate them: returns.json, returns.md and one learning-curve plot per env
    python -m benchmarks.returns report docs/results/runs --out docs/results/returns
    # print the same table (the results page's section 3) and write nothing; --superseded: the
    # rows that left it (older settings of a configuration that has 3 seeds at today's defaults)
    python -m benchmarks.returns table docs/results/runs [--superseded]
    # the runs the table still lacks, one "NAME | COMMAND" line each, in priority order
    # (benchmarks/lane.sh runs such a list in the background, resumably)
    python -m benchmarks.returns plan --runs /work/runs --collected docs/results/runs > /work/runs/plan.txt

A run is a `tinypolicy train` folder or a `benchmarks.sb3_reference` folder (label "sb3").
Its score is the mean evaluation return over its last 10% of evaluations (one lucky
evaluation does not decide it). Per env and configuration: the interquartile mean (IQM) of
the seeds' scores with a 95% stratified bootstrap confidence interval, and each sparse
configuration's IQM as a percentage of the dense IQM, with an interval from resampling both
sets of seeds independently. With fewer than MIN_SEEDS seeds a configuration gets no interval
and no ratio: one seed is an anecdote. Curves: IQM over seeds at every evaluation, shaded
with its 95% interval.

Each row also says what the configuration costs: its actor and critic sparsity (the runs'
final eval.json; SB3 runs are dense), its training FLOPs per env step and inference FLOPs
per action as fractions of dense, analytic from ER masks at the run's sparsities (the
counts of `benchmarks.flops`), and the median over seeds of the runs' env steps per second
(training time only, on whatever shared machine trained them; SB3 runs record none).
Gradual magnitude pruning ("prune") trains dense and prunes on a cubic schedule, so its
training FLOPs are the mean over the run's updates, step by step as the trainer prunes,
and its inference FLOPs those of the final network.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections import defaultdict
from dataclasses import fields
from functools import cache
from pathlib import Path

import numpy as np
from rliable import library as rly

from benchmarks.flops import flops_vs_dense, one_thread
from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.config import from_dict
from tinypolicy.models import gmp_sparsity
from tinypolicy.ondevice.artefact import write_json, write_text
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.sweep import config_label, schedule_suffix
from tinypolicy.pipeline.train import Schedule, TrainConfig
from tinypolicy.plots import save_figure, subplots

MIN_SEEDS = 3
REPS = 20_000  # bootstrap resamples of the scores (a tenth of them per evaluation step of the curves)


def trimmed_mean(scores: np.ndarray, axis: int = 0) -> np.ndarray:
    """The interquartile mean along `axis`: rliable's aggregate_iqm (scipy's 25% trimmed mean,
    the same int(n / 4) values cut at either end) without scipy's per-call overhead, about 300 us,
    which the bootstrap pays once per resample and evaluation step."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64), axis=axis)
    n = ordered.shape[axis]
    return np.take(ordered, np.arange(n // 4, n - n // 4), axis=axis).mean(axis=axis)


def iqm(scores: np.ndarray) -> float:
    return float(trimmed_mean(np.ravel(scores)))


# --------------------------------------------------------------------------- plan

# The runs behind the table (issue 23), in the order they are queued: per env, TD3 at 300k
# steps and the paper's sparsities (actor, critic); seeds interleaved so that every method
# reaches three seeds before any reaches five; SB3's reference seeds after our own.
TABLE_RUNS = (
    ("HalfCheetah-v5", "td3", (0.90, 0.85), ("dense", "rlx2", "prune", "sb3"), 5),
    ("Hopper-v5", "td3", (0.98, 0.95), ("dense", "rlx2", "prune", "sb3"), 5),
    ("Walker2d-v5", "td3", (0.97, 0.95), ("dense", "rlx2"), 3),
    ("Ant-v5", "td3", (0.96, 0.88), ("dense", "rlx2"), 3),
    ("Hopper-v5", "sac", (0.98, 0.95), ("dense", "rlx2"), 3),
)
TABLE_STEPS = 300_000


def run_name(env: str, algo: str, method: str, sparsity: tuple[float, float], seed: int) -> str:
    """The run folder's name: what differs between runs, at today's defaults (warm-up 25k,
    RLx2's replay floor 100k), e.g. hopper-td3-rlx2-a98-c95-fp32-ls25k-bm100k-s0."""
    parts = [env.split("-")[0].lower(), algo, method]
    if method not in ("dense", "sb3"):
        parts += [f"a{round(sparsity[0] * 100)}", f"c{round(sparsity[1] * 100)}"]
    if method != "sb3":
        parts.append("fp32")
    parts.append("ls25k")
    if method == "rlx2":
        parts.append("bm100k")
    return "-".join(parts + [f"s{seed}"])


def plan(runs: Path, collected: Path, python: str) -> list[str]:
    """One "NAME | COMMAND" line per table run not yet collected, each writing to runs/NAME."""
    if not collected.is_dir():  # a wrong path would queue every run again
        raise UserError(f"{collected} is not a folder of collected runs")
    lines = []
    for env, algo, sparsity, methods, seeds in TABLE_RUNS:
        ours, reference = [], []
        for seed in range(seeds):
            for method in methods:
                name = run_name(env, algo, method, sparsity, seed)
                if (collected / name).is_dir():
                    continue
                if method == "sb3":
                    reference.append(f"{name} | {python} -m benchmarks.sb3_reference --env {env} --algo {algo} "
                                     f"--steps {TABLE_STEPS} --seed {seed} --out {runs / name}")
                    continue
                flags = "" if method == "dense" else f" --actor-sparsity {sparsity[0]} --critic-sparsity {sparsity[1]}"
                ours.append(f"{name} | {python} -m tinypolicy train --env {env} --algo {algo} --method {method}"
                            f"{flags} --steps {TABLE_STEPS} --seed {seed} --threads 1 --quiet --out {runs / name}")
        lines += ours + reference
    return lines


# --------------------------------------------------------------------------- collect

def collect(run: Path, into: Path) -> Path:
    """Copy a finished run's raw results into `into/<run name>/`, with its settings as run.json."""
    eval_path = run / "eval.json"
    if not eval_path.is_file() or not (run / "metrics.csv").is_file():
        raise UserError(f"{run} is not a finished run (no eval.json or metrics.csv)")
    final = json.loads(eval_path.read_text())
    if (run / "checkpoint.pt").is_file():
        ckpt = load_checkpoint(run / "checkpoint.pt")
        if ckpt.steps_done != final.get("steps"):
            raise UserError(f"{run}: eval.json is from step {final.get('steps')}, the checkpoint from "
                            f"{ckpt.steps_done}; the run is not finished")
        record = {"implementation": "tinypolicy"} | dict(ckpt.config)
    else:  # benchmarks.sb3_reference writes no checkpoint; its eval.json says what it ran
        record = {key: final[key] for key in ("implementation", "env_id", "algo", "seed", "steps")}
        if "learning_starts" in final:
            record["learning_starts"] = final["learning_starts"]
    target = into / run.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "metrics.csv", target / "metrics.csv")
    shutil.copyfile(eval_path, target / "eval.json")
    write_json(target / "run.json", record)
    return target


# --------------------------------------------------------------------------- report

def load_run(folder: Path) -> dict:
    """A run as `collect` wrote it; anything else (a missing file, a missing field) is a
    one-line UserError naming the folder."""
    try:
        record = json.loads((folder / "run.json").read_text())
        final = json.loads((folder / "eval.json").read_text())
        with (folder / "metrics.csv").open() as f:
            curve = [(int(r["step"]), float(r["eval_return"])) for r in csv.DictReader(f)]
        if not curve:
            raise UserError(f"{folder}/metrics.csv has no evaluations")
        tail = [value for _, value in curve[-max(1, len(curve) // 10):]]
        sb3 = record["implementation"] == "stable-baselines3"
        suffix = schedule_suffix(record, final["steps"] if sb3 else record["total_steps"])
        label = "sb3" + suffix if sb3 else config_label(record)
        run = {"name": folder.name, "env": record["env_id"], "algo": record["algo"], "label": label,
               # the configuration at today's defaults that a run with a suffix is an older version of
               "current_label": label.removesuffix(suffix),
               # dense has no dynamic buffer: its counterpart shares the warm-up alone
               "warmup": schedule_suffix({key: record.get(key) for key in ("algo", "learning_starts")},
                                         final["steps"]),
               "seed": record["seed"], "steps": final["steps"], "score": float(np.mean(tail)),
               "final_return": final["mean_return"], "curve": curve}
    except KeyError as exc:
        raise UserError(f"{folder} holds no collected run (no field {exc} in run.json, eval.json or metrics.csv); "
                        "see `benchmarks.returns collect`") from None
    except (OSError, ValueError, TypeError) as exc:  # TypeError: JSON that is not an object, a short CSV row
        raise UserError(f"{folder} holds no collected run ({exc}); see `benchmarks.returns collect`") from None
    return run | costs(folder, record, final)


# --------------------------------------------------------------------------- costs

TRAIN_FIELDS = {f.name for f in fields(TrainConfig) if f.init}


def costs(folder: Path, record: dict, final: dict) -> dict:
    """A run's final sparsities (eval.json), FLOPs vs dense and env steps per second."""
    speed = final.get("steps_per_s")
    if record["implementation"] == "stable-baselines3":  # our dense networks, SB3's loop
        return {"actor_sparsity": 0.0, "critic_sparsity": 0.0, "train_flops": 1.0, "infer_flops": 1.0,
                "steps_per_s": speed}
    values = {key: value for key, value in record.items() if key in TRAIN_FIELDS}
    values.setdefault("total_steps", final["steps"])
    cfg = from_dict(TrainConfig, values, f"{folder}/run.json")
    dense = cfg.method == "dense"
    # the masks the run trained with: ER shares of its target sparsities (pruning reaches them at prune_end)
    target = (0.0, 0.0) if dense else (cfg.actor_sparsity, cfg.critic_sparsity)
    train, infer = flops_vs_dense(cfg.env_id, *target, cfg.hidden, cfg.algo, cfg.policy_freq)
    if cfg.method == "prune":
        train = pruned_training_flops(cfg.env_id, cfg.hidden, cfg.algo, cfg.policy_freq, target,
                                      Schedule.for_config(cfg), cfg.total_steps)
    return {"actor_sparsity": float(final.get("actor_sparsity", target[0])),
            "critic_sparsity": float(final.get("critic_sparsity", target[1])),
            "train_flops": train, "infer_flops": infer, "steps_per_s": speed}


@cache
def pruned_training_flops(env: str, hidden: tuple[int, ...], algo: str, policy_freq: int,
                          target: tuple[float, float], s: Schedule, total_steps: int) -> float:
    """Training FLOPs vs dense of a GMP run, averaged over its updates (steps learning_starts+1
    to total_steps). As in the trainer, step t's update comes before step t's pruning: it uses
    the masks of the last pruning step before t (dense before the first)."""
    prunings = sorted(set(range(s.prune_start + s.prune_interval, s.prune_end + 1, s.prune_interval)) | {s.prune_end})
    levels = [(0.0, 0.0)] + [tuple(gmp_sparsity(step, s.prune_start, s.prune_end, final) for final in target)
                             for step in prunings]
    total = updates = 0.0
    # level k is in force for the updates of steps (after[k], until[k]]
    for (actor, critic), after, until in zip(levels, [0] + prunings, prunings + [total_steps]):
        n = max(0, min(until, total_steps) - max(after, s.learning_starts))
        if n:
            total += n * flops_vs_dense(env, actor, critic, hidden, algo, policy_freq)[0]
            updates += n
    return total / updates if updates else flops_vs_dense(env, *target, hidden, algo, policy_freq)[0]


def seed_resampling(seed: int) -> None:
    """rliable 1.2 draws its resamples from NumPy's global generator whatever random_state says:
    seeding that is what makes a regenerated page identical."""
    np.random.seed(seed)


def interval(scores: np.ndarray, seed: int, reps: int) -> tuple[float, float]:
    """95% stratified bootstrap interval of the IQM (one task: resampling runs)."""
    seed_resampling(seed)
    _, ci = rly.get_interval_estimates({"x": scores[:, None]}, lambda s: np.array([iqm(s)]), reps=reps)
    return float(ci["x"][0, 0]), float(ci["x"][1, 0])


def ratio_interval(scores: np.ndarray, dense: np.ndarray, seed: int, reps: int) -> tuple[float, float]:
    """95% percentile interval of IQM(scores) / IQM(dense), the two sets resampled independently."""
    seed_resampling(seed)
    boot = rly.StratifiedIndependentBootstrap(scores[:, None], dense[:, None])
    low, high = boot.conf_int(lambda x, y: np.array([iqm(x) / iqm(y)]), reps=reps, method="percentile")
    return float(low[0]), float(high[0])


def curve_band(runs: list[dict], seed: int, reps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, IQM over seeds at each, and its 95% interval (over the steps every seed reached)."""
    seed_resampling(seed)
    steps = sorted(set.intersection(*({s for s, _ in r["curve"]} for r in runs)))
    values = np.array([[dict(r["curve"])[s] for s in steps] for r in runs])  # [seeds, steps]
    per_step = lambda x: trimmed_mean(x[:, 0, :], axis=0)  # one call for every step of the curve
    point, ci = rly.get_interval_estimates({"x": values[:, None, :]}, per_step, reps=reps)
    return np.array(steps), point["x"], ci["x"][0], ci["x"][1]


def aggregate(runs: list[dict], reps: int) -> list[dict]:
    """One row per (env, algo, configuration) with its seeds' IQM, interval and % of dense. An older
    version of a configuration (another warm-up or replay floor) is marked superseded once the
    configuration has MIN_SEEDS seeds at today's defaults: the page shows current results only."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["env"], r["algo"], r["label"])].append(r)
    rows = []
    for (env, algo, label), group in sorted(groups.items()):
        group.sort(key=lambda r: r["seed"])
        scores = np.array([r["score"] for r in group])
        row = {"env": env, "algo": algo, "label": label, "seeds": [r["seed"] for r in group],
               "steps": sorted({r["steps"] for r in group}), "scores": scores.tolist(),
               "final_returns": [r["final_return"] for r in group], "iqm": iqm(scores),
               "iqm_ci": interval(scores, seed=0, reps=reps) if len(group) >= MIN_SEEDS else None,
               "pct_of_dense": None, "pct_of_dense_ci": None,
               "actor_sparsity": float(np.median([r["actor_sparsity"] for r in group])),
               "critic_sparsity": float(np.median([r["critic_sparsity"] for r in group])),
               "train_flops_vs_dense": float(np.mean([r["train_flops"] for r in group])),
               "infer_flops_vs_dense": float(np.mean([r["infer_flops"] for r in group])),
               "steps_per_s_per_seed": [r["steps_per_s"] for r in group]}
        speeds = [v for v in row["steps_per_s_per_seed"] if v is not None]
        row["steps_per_s"] = float(np.median(speeds)) if speeds else None
        dense = groups.get((env, algo, "dense" + group[0]["warmup"]))  # the same warm-up: the same comparison
        if dense and dense is not group and len(group) >= MIN_SEEDS and len(dense) >= MIN_SEEDS:
            dense_scores = np.array([r["score"] for r in dense])
            row["pct_of_dense"] = 100 * row["iqm"] / iqm(dense_scores)
            row["pct_of_dense_ci"] = [100 * v for v in ratio_interval(scores, dense_scores, seed=1, reps=reps)]
        current = (env, algo, group[0]["current_label"])
        row["superseded"] = current[2] != label and len(groups.get(current, ())) >= MIN_SEEDS
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def ci(values, fmt="{:.0f}"):
        return f"[{fmt.format(values[0])}, {fmt.format(values[1])}]" if values else "n/a"

    lines = [("| env | algo | configuration | seeds | steps | IQM score | 95% CI | % of dense (IQM) | 95% CI | "
              "actor / critic sparsity | training FLOPs vs dense (mean over training) | "
              "inference FLOPs vs dense (final network) | env steps/s (shared VM) | scores per seed |"),
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pct = f"{r['pct_of_dense']:.1f}" if r["pct_of_dense"] is not None else "n/a"
        speed = f"{r['steps_per_s']:.1f}" if r["steps_per_s"] is not None else "n/a"
        lines.append(f"| {r['env']} | {r['algo'].upper()} | {r['label']} | {', '.join(map(str, r['seeds']))} | "
                     f"{'/'.join(f'{s:,}' for s in r['steps'])} | {r['iqm']:.0f} | {ci(r['iqm_ci'])} | {pct} | "
                     f"{ci(r['pct_of_dense_ci'], '{:.1f}')} | "
                     f"{100 * r['actor_sparsity']:.1f}% / {100 * r['critic_sparsity']:.1f}% | "
                     f"{r['train_flops_vs_dense']:.3f} | {r['infer_flops_vs_dense']:.3f} | {speed} | "
                     f"{', '.join(f'{s:.0f}' for s in r['scores'])} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path, env: str, reps: int) -> None:
    groups = defaultdict(list)
    for r in runs:
        if r["env"] == env:
            groups[(r["algo"], r["label"])].append(r)
    fig, axes = subplots(1, 1, figsize=(6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    for (algo, label), group in sorted(groups.items()):
        if len(group) >= MIN_SEEDS:
            steps, mid, low, high = curve_band(group, seed=2, reps=reps)
            line, = ax.plot(steps, mid, lw=1.5, label=f"{algo.upper()} {label} (IQM of {len(group)} seeds)")
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
        else:  # too few seeds for an interval: each seed's curve, dotted
            color, seeds = None, ", ".join(str(g["seed"]) for g in group)
            for i, r in enumerate(group):
                line, = ax.plot(*zip(*r["curve"]), lw=1, ls=":", color=color,
                                label=f"{algo.upper()} {label} (seed {seeds})" if i == 0 else None)
                color = line.get_color()
    ax.set(title=f"{env}: evaluation return, 95% bootstrap CI shaded", xlabel="env steps",
           ylabel="eval return (10 episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def load_runs(folder: Path) -> list[dict]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of collected runs")
    with one_thread():  # the FLOPs of a pruned run's hundreds of mask sizes
        runs = [load_run(p) for p in sorted(folder.iterdir()) if p.is_dir()]
    if not runs:
        raise UserError(f"{folder} holds no collected runs")
    return runs


def table(folder: Path, reps: int = REPS, superseded: bool = False) -> str:
    """The markdown table `report` writes to returns.md, computed the same way; writes nothing.
    With `superseded`, the rows that left it instead (for the history page)."""
    return markdown([row for row in aggregate(load_runs(folder), reps) if row["superseded"] == superseded])


def report(folder: Path, out: Path, reps: int = REPS) -> str:
    """returns.json (every row, each marked superseded or not), returns.md and the curves (current rows)."""
    runs = load_runs(folder)
    rows = aggregate(runs, reps)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown([row for row in rows if not row["superseded"]])
    write_json(out / "returns.json", {"min_seeds": MIN_SEEDS, "bootstrap_reps": reps, "rows": rows})
    write_text(out / "returns.md", table)
    gone = {(row["env"], row["algo"], row["label"]) for row in rows if row["superseded"]}
    current = [run for run in runs if (run["env"], run["algo"], run["label"]) not in gone]
    for env in sorted({r["env"] for r in current}):
        plot(current, out / f"curves_{env.split('-')[0].lower()}.png", env, max(100, reps // 10))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect", help="copy finished runs' raw results into the repository")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--into", type=Path, required=True)
    p = sub.add_parser("report", help="aggregate collected runs (IQM, bootstrap CIs, curves)")
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("table", help="print the table `report` writes to returns.md, writing nothing")
    p.add_argument("folder", type=Path)
    p.add_argument("--superseded", action="store_true", help="print the rows that left the table instead: "
                   "configurations at other warm-ups or replay floors once today's defaults have "
                   f"{MIN_SEEDS} seeds")
    p = sub.add_parser("plan", help="print the table's runs not yet collected, as 'NAME | COMMAND' lines")
    p.add_argument("--runs", type=Path, required=True, help="the folder the runs write to (outside the work tree)")
    p.add_argument("--collected", type=Path, default=Path("docs/results/runs"))
    p.add_argument("--python", default="python", help="the interpreter the commands start, e.g. with PYTHONPATH "
                   "set to a frozen copy of the code")
    args = parser.parse_args(argv)
    try:
        if args.command == "collect":
            for run in args.runs:
                if (run / "eval.json").is_file():
                    print(collect(run, args.into))
                else:
                    print(f"skipped {run}: not finished")
        elif args.command == "plan":
            print("\n".join(plan(args.runs, args.collected, args.python)))
        elif args.command == "table":
            print(table(args.folder, REPS, args.superseded), end="")
        else:
            print(report(args.folder, args.out), end="")
    except UserError as exc:
        parser.exit(2, f"returns: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
