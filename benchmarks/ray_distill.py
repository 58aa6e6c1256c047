"""HaDES generation time on 1 and 2 rollout workers (local processes and Ray), measured side
by side in one run, and a scaling projection for N nodes from the measured per-member costs.

    python -m benchmarks.ray_distill --out docs/results/bench_ray.json

Each configuration distils the same run (same seed, so the same members and episodes) for
a few generations from scratch; `fitness.csv` splits every generation into batched BC
(on the driver) and rollouts (on the workers). The projection assumes rollouts split
evenly over workers and BC stays on one driver core:
    T(workers) = T_bc + T_rollout(1 worker) / workers + overhead.

`table` prints the measured rows of a written report (by default the committed one) as
docs/BENCHMARKS.md's table:

    python -m benchmarks.ray_distill table [docs/results/bench_ray.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from tinypolicy.pipeline.distill import DistillConfig, distill

CONFIGS = (("local", 1), ("local", 2), ("ray", 2))
BACKENDS = {"local": "local processes", "ray": "Ray (local instance)"}
REPORT = Path(__file__).resolve().parents[1] / "docs" / "results" / "bench_ray.json"


def markdown_table(report: dict) -> str:
    lines = ["| backend | rollout workers | s / generation | batched BC (driver) s | rollouts s |",
             "|---|---:|---:|---:|---:|"]
    for r in report["measured"]:
        lines.append(f"| {BACKENDS.get(r['backend'], r['backend'])} | {r['workers']} | "
                     f"{r['seconds_per_generation']:.2f} | {r['bc_seconds']:.2f} | {r['rollout_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def table_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_distill table",
                                     description="Print the measured rows of a written report as a table.")
    parser.add_argument("report", nargs="?", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"{args.report}: {exc}")
    sys.stdout.write(markdown_table(report))
    return 0


def measure(backend: str, workers: int, generations: int, env_id: str, population: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = DistillConfig(env_id=env_id, size=64, mode="r", population=population, generations=generations,
                            workers=workers, backend=backend, final_seeds=1, final_episodes=1, seed=0)
        started = time.perf_counter()
        distill(cfg, out, progress=False)
        total = time.perf_counter() - started
        with (Path(out) / "fitness.csv").open() as f:
            rows = list(csv.DictReader(f))[1:]  # generation 0 includes worker start-up
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)
    return {"backend": backend, "workers": workers, "seconds_per_generation": mean("seconds"),
            "bc_seconds": mean("bc_seconds"), "rollout_seconds": mean("rollout_seconds"),
            "env_steps_per_generation": (float(rows[-1]["env_steps"]) - float(rows[0]["env_steps"]))
            / max(len(rows) - 1, 1), "wall_seconds": total}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:
        return table_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    results = [measure(b, w, args.generations, args.env, args.population) for b, w in CONFIGS]
    one = results[0]
    per_member_rollout = one["rollout_seconds"] / args.population
    projection = {}
    for nodes in (1, 2, 4, 8, 16):
        workers = 16 * nodes  # 16-core nodes
        projection[nodes] = {"population": 2048, "workers": workers,
                             "seconds_per_generation": one["bc_seconds"] * 2048 / args.population
                             + per_member_rollout * 2048 / workers}
    report = {"env_id": args.env, "population": args.population, "size": 64, "mode": "r",
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "measured": results,
              "per_member_rollout_seconds": per_member_rollout,
              "per_member_bc_seconds": one["bc_seconds"] / args.population,
              "projection_16_core_nodes": projection}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(markdown_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
