"""The Algorithm Distillation tables of docs/BENCHMARKS.md from an evaluation's curves.json.

`tinypolicy ad evaluate` writes curves.json (and curves.md, its table). This prints the tables
again from the committed file alone:

    python -m benchmarks.ad_table docs/results/ad_k2d_v2
    python -m benchmarks.ad_table docs/results/ad_curves.json --mean-of 10 \\
        --episodes 10,25,50,75,100,150,200,300,400,500

By default the table is curves.md's (`curves_table` of `tinypolicy.pipeline.ad`): every curve's
return at the marked episodes, the means of the first 100 and the last 50 episodes, then the
run's seeds and cost. `--mean-of K --episodes E,...` prints instead one column per episode E
holding the mean of the K episodes ending at E (of the first E when E < K), one row per curve,
AD's row and its last cell in bold. A curves.json written before Key-to-Door existed names no
env: it is Dark Room's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.ad import curves_table, grid_env
from tinypolicy.pipeline.settings import DARK_ROOM_ID

# Rows of the --mean-of table: the held-out comparison first, then the ablations; other curves last.
ROW_ORDER = ("ad", "ed", "source", "random", "optimal", "ad_train_goals", "ad_window_", "ad_reset_each_episode")
WINDOW_PREFIX = "ad_window_"


def read_summary(path: Path) -> dict:
    """curves.json at `path`, or in the folder `path`."""
    file = path / "curves.json" if path.is_dir() else path
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("curves"), dict):
        raise UserError(f"{file} is not the curves.json of `tinypolicy ad evaluate` (no curves)")
    summary.setdefault("env", DARK_ROOM_ID)
    return summary


def row_label(name: str, summary: dict) -> str:
    env = grid_env(summary["env"])
    tasks = env.task_noun
    if name.startswith(WINDOW_PREFIX) and name[len(WINDOW_PREFIX):].isdigit():
        window = int(name[len(WINDOW_PREFIX):])
        return f"AD, window {window}" + (" (< 1 episode)" if window < env.episode_steps else "")
    return {"ad": f"AD (held-out {tasks})", "ed": f"ED (held-out {tasks})", "source": "source: Q-learning",
            "ad_train_goals": f"AD on {len(summary['test_goals'])} training {tasks}",
            "ad_reset_each_episode": "AD, context cleared each episode"}.get(name, name)


def row_rank(name: str) -> int:
    for rank, key in enumerate(ROW_ORDER):
        if name == key or (key == WINDOW_PREFIX and name.startswith(key)):
            return rank
    return len(ROW_ORDER)


def episode_means_table(summary: dict, mean_of: int, episodes: list[int]) -> str:
    """One column per episode E: each curve's mean over the `mean_of` episodes ending at E."""
    lines = ["| episode | " + " | ".join(str(e) for e in episodes) + " |", "|---|" + "---:|" * len(episodes)]
    for name in sorted(summary["curves"], key=row_rank):  # stable: curves.json's order within a rank
        curve = summary["curves"][name]
        cells = []
        for e in episodes:
            window = curve[max(0, e - mean_of):e]
            cells.append(f"{sum(window) / len(window):.2f}" if e <= len(curve) else "")
        label = row_label(name, summary)
        if name == "ad":
            label = f"**{label}**"
            cells[-1] = f"**{cells[-1]}**" if cells[-1] else ""
        lines.append("|" + "".join(f" {cell} |" if cell else " |" for cell in [label, *cells]))
    return "\n".join(lines) + "\n"


def episode_list(text: str) -> list[int]:
    try:
        episodes = [int(e) for e in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of episodes: {text!r}") from None
    if not episodes or min(episodes) < 1 or episodes != sorted(set(episodes)):
        raise argparse.ArgumentTypeError(f"episodes must be increasing and >= 1: {text!r}")
    return episodes


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", type=Path, metavar="CURVES", help="a curves.json, or the folder holding it")
    parser.add_argument("--mean-of", type=positive_int, default=None, metavar="K",
                        help="print the K-episode means at --episodes instead of curves.md's table")
    parser.add_argument("--episodes", type=episode_list, default=None, metavar="E,...",
                        help="the episodes (columns) of the --mean-of table")
    args = parser.parse_args(argv)
    if (args.mean_of is None) != (args.episodes is None):
        parser.error("--mean-of and --episodes go together")
    try:
        summary = read_summary(args.curves)
        if args.mean_of is None:
            print(curves_table(summary), end="")
        else:
            print(episode_means_table(summary, args.mean_of, args.episodes), end="")
    except UserError as exc:
        parser.exit(2, f"ad_table: error: {exc}\n")
    except KeyError as exc:
        parser.exit(2, f"ad_table: error: {args.curves} has no {exc} (not a curves.json of `tinypolicy ad evaluate`)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
