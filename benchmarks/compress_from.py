"""Teacher vs compressed: `tinypolicy compress --from` runs over several seeds, in one table.

A run is the output folder of `tinypolicy compress --from CHECKPOINT` (a policy imported with
`tinypolicy import`). `collect` copies its small raw results into the repository as one
record.json: the teacher's return and the compressed actor's on the same evaluation episodes
(train/teacher.json, evaluate/eval.json), the actor's sparsity, every stage's wall time and the
microcontroller flash of the exported kernels. `table` groups records by teacher and target
sparsity: the compressed return and the share of the teacher's it keeps, as an interquartile
mean over seeds with a 95% stratified bootstrap interval from 3 seeds on (rliable, as
`benchmarks.returns`), beside every seed's value.

    python -m benchmarks.compress_from collect RUN... --into docs/results/compress_from
    python -m benchmarks.compress_from table docs/results/compress_from
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.returns import MIN_SEEDS, REPS, interval, iqm
from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.compress import STAGES, policy_origin
from tinypolicy.shares import percent, share_of

FLASH_TARGET = "cortex-m4"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def collect(run: Path, into: Path) -> Path:
    """Write `into/<run name>/record.json` from a finished `compress --from` folder."""
    teacher_path = run / "train" / "teacher.json"
    if not teacher_path.is_file():
        raise UserError(f"{run} is not a `compress --from` output (no train/teacher.json)")
    stamps = {stage: read_json(run / stage / "stamp.json")
              for stage in STAGES if (run / stage / "stamp.json").is_file()}
    if set(stamps) != set(STAGES):
        raise UserError(f"{run} is not finished: no stamp for {', '.join(s for s in STAGES if s not in stamps)}")
    teacher = read_json(teacher_path)
    compressed = read_json(run / "evaluate" / "eval.json")
    train = stamps["train"]
    if "sha256" in teacher:  # what compress recorded of the policy it compressed, which may be gone since
        identity = {key: teacher[key] for key in ("kind", "algo", "sha256")}
    else:  # compressed before teacher.json recorded them: the stamp hashed the file, which (if kept) says the rest
        [digest] = train["inputs"].values()
        identity = policy_origin(load_checkpoint(teacher["source"])) | {"sha256": digest}
    flash = {}
    embedded = read_json(run / "embedded" / "embedded.json")
    if FLASH_TARGET in embedded:
        kernels = embedded[FLASH_TARGET]["kernels"]
        flash = {name: kernels[name]["flash_bytes"] for name in ("sparse", "int8", "dense") if name in kernels}
    record = {
        "env_id": compressed["env_id"],
        # the folder holding the checkpoint names the teacher for readers of the table (an import's --out)
        "teacher": identity | {"name": Path(teacher["source"]).parent.name, "mean_return": teacher["mean_return"],
                               "std_return": teacher["std_return"]},
        "method": teacher["method"],
        "settings": train["settings"],
        "seed": train["settings"]["seed"],
        "target_sparsity": train["settings"]["actor_sparsity"],
        "actor_sparsity": train["summary"]["actor_sparsity"],
        "episodes": compressed["episodes"], "eval_seed": compressed["seed"],
        "mean_return": compressed["mean_return"], "std_return": compressed["std_return"],
        "seconds": {stage: stamps[stage]["seconds"] for stage in STAGES},
        "flash_bytes": {FLASH_TARGET: flash},
    }
    target = into / run.name
    target.mkdir(parents=True, exist_ok=True)
    write_json(target / "record.json", record)
    return target


# Train-stage settings that the table's other columns show or that do not change the result.
NOT_ROUTE_SETTINGS = {"seed", "actor_sparsity", "threads", "eval_episodes", "eval_seed"}


def route_settings(record: dict) -> str:
    """The train stage's settings of a compress run as a group key (JSON, sorted)."""
    return json.dumps({k: v for k, v in record["settings"].items() if k not in NOT_ROUTE_SETTINGS}, sort_keys=True)


def settings_shown(settings: str, siblings: list[str]) -> str:
    """The settings in which a group differs from groups of the same teacher, method and
    sparsity, e.g. "iterations 30"; "-" when it has no such sibling."""
    mine, others = json.loads(settings), [json.loads(s) for s in siblings if s != settings]
    keys = sorted({k for other in others for k in mine.keys() | other.keys() if mine.get(k) != other.get(k)})
    return ", ".join(f"{k} {mine.get(k)}" for k in keys) or "-"


def table(folder: Path, reps: int = REPS) -> str:
    records = [read_json(p / "record.json") for p in sorted(folder.iterdir()) if (p / "record.json").is_file()]
    if not records:
        raise UserError(f"{folder} holds no collected runs; see `benchmarks.compress_from collect`")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["env_id"], r["teacher"]["algo"], r["teacher"]["sha256"], r["method"], r["target_sparsity"],
                route_settings(r))].append(r)
    lines = [("| env | teacher | teacher return | method | settings (where runs differ) | actor sparsity | seeds "
              "| compressed return: IQM [95% CI] | kept: IQM [95% CI] | kept per seed "
              "| compress time (min, mean; train stage) | flash KiB "
              f"({FLASH_TARGET}: sparse / int8 / dense) |"),
             "|---|---|---:|---|---|---:|---|---:|---:|---|---:|---:|"]
    for key, runs in sorted(groups.items(), key=lambda kv: kv[0][:2] + kv[0][3:]):
        env, algo, _, method, _, settings = key
        runs.sort(key=lambda r: r["seed"])
        teacher = runs[0]["teacher"]["mean_return"]
        returns = np.array([r["mean_return"] for r in runs])
        shares = [share_of(value, teacher) for value in returns]
        kept = np.array([np.nan if share is None else share for share in shares])

        def summary(values: np.ndarray, fmt: str) -> str:
            if len(values) < MIN_SEEDS:
                return f"{fmt.format(iqm(values))} (n/a)"
            low, high = interval(values, seed=0, reps=reps)
            return f"{fmt.format(iqm(values))} [{fmt.format(low)}, {fmt.format(high)}]"

        minutes = np.mean([sum(r["seconds"].values()) for r in runs]) / 60
        train_minutes = np.mean([r["seconds"]["train"] for r in runs]) / 60
        flash = runs[0]["flash_bytes"][FLASH_TARGET]
        sparsity = np.mean([r["actor_sparsity"] for r in runs])
        lines.append(
            f"| {env} | {runs[0]['teacher']['name']} ({runs[0]['teacher']['kind']} {algo}) | {teacher:.0f} "
            f"| {method} | {settings_shown(settings, [k[5] for k in groups if k[:5] == key[:5]])} | {sparsity:.3f} "
            f"| {', '.join(str(r['seed']) for r in runs)} | {summary(returns, '{:.0f}')} "
            f"| {summary(kept * 100, '{:.0f}%')} "
            f"| {', '.join(percent(share) for share in shares)} | {minutes:.1f} ({train_minutes:.1f}) "
            f"| {' / '.join(f'{flash[k] / 1024:.1f}' if k in flash else '-' for k in ('sparse', 'int8', 'dense'))} |")
    return "\n".join(lines) + "\n"


def routes(folder: Path) -> str:
    """The fine-tune-vs-student experiments of one teacher: every evaluation of each run in
    `folder` (a subfolder per run: settings.json, and metrics.csv or a student's iterations.csv)."""
    lines = ["| route | settings | return at each evaluation (fine-tune: every eval_interval steps; student: each "
             "iteration) | run | last as % of teacher |", "|---|---|---|---|---:|"]
    for run in sorted(p for p in folder.iterdir() if (p / "settings.json").is_file()):
        settings = read_json(run / "settings.json")
        table = run / ("metrics.csv" if (run / "metrics.csv").is_file() else "iterations.csv")
        with table.open() as f:
            returns = [float(r["eval_return" if table.name == "metrics.csv" else "student_return"])
                       for r in csv.DictReader(f)]
        shown = {k: settings[k] for k in ("method", "critic_sparsity", "lr", "learning_starts", "iterations")
                 if k in settings}
        described = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        lines.append(f"| {settings['route']} | {described} "
                     f"| {', '.join(f'{r:.0f}' for r in returns)} | {settings.get('note', 'finished')} "
                     f"| {percent(share_of(returns[-1], settings['teacher_return']))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect", help="copy finished `compress --from` runs' raw results into the repository")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--into", type=Path, required=True)
    p = sub.add_parser("table", help="the teacher-vs-compressed table of collected runs (markdown)")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("routes", help="fine-tune vs student experiments of one teacher (markdown)")
    p.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "collect":
            for run in args.runs:
                print(collect(run, args.into))
        elif args.command == "table":
            print(table(args.folder), end="")
        else:
            print(routes(args.folder), end="")
    except UserError as exc:
        parser.exit(2, f"compress_from: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
