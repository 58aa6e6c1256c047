"""`tinypolicy sweep CONFIG`: many training runs (envs x methods x sparsities x seeds) as
one job list, run locally one after another or as Ray tasks across a cluster.

The config is checked whole (every list non-empty, every env id usable, every job's
settings, no two jobs in one folder) before any folder is created. Each job is an
ordinary `train` run in its own folder, so it checkpoints and resumes on its own: a
killed job (or a whole killed sweep) is picked up by re-running the command, and Ray
retries a task whose worker died, which resumes from the job's last checkpoint. A
finished job is never run again. When all jobs are done the results are collected into
`sweep.csv`, `sweep.md` and `sweep.png`, with RLx2's ultimate compression ratio per env:
the highest actor sparsity whose mean score stays within 3% of the dense baseline's.

Config (TOML):

    out = "runs/sweep-hopper"          # where job folders and results go
    envs = ["Hopper-v5"]               # plain Gymnasium ids: each starts its jobs' folder names
    methods = ["dense", "rlx2"]
    sparsities = [[0.9, 0.85], [0.98, 0.95]]   # (actor, critic) pairs; dense runs once
    seeds = [0, 1]
    [train]                            # any other TrainConfig field, shared by all jobs
    total_steps = 300000
"""
from __future__ import annotations

import csv
import json
import os
import re
import tomllib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.config import from_dict
from tinypolicy.envs import make_env
from tinypolicy.models.flops import inference_flops, training_flops_per_step, weight_count
from tinypolicy.ondevice.artefact import prepare_output_dir, write_text
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.rollouts import start_ray
from tinypolicy.pipeline.train import METHODS, Schedule, TrainConfig, train
from tinypolicy.plots import save_figure, subplots
from tinypolicy.tables import write_csv

WITHIN_DENSE = 0.97  # "within 3% of dense", RLx2's definition of the ultimate compression ratio
# A Gymnasium id without a namespace: it starts job folder names, so it must hold no path.
PLAIN_ENV_ID = re.compile(r"[\w:.-]+")
RESULT_FIELDS = ["env", "method", "actor_sparsity", "critic_sparsity", "seed", "steps", "score", "final_return",
                 "actor_nnz", "actor_weights", "critic_nnz", "critic_weights", "infer_flops", "steps_per_s", "run"]


@dataclass
class SweepConfig:
    """The sweep's TOML file (see the module docstring)."""
    out: Path
    envs: list[str]
    methods: list[str]
    seeds: list[int]
    sparsities: list[tuple[float, float]] = field(default_factory=lambda: [(0.9, 0.85)])
    train: dict = field(default_factory=dict)  # TrainConfig fields shared by all jobs

    def jobs(self) -> list[tuple[str, TrainConfig]]:
        """(folder name, config) of every run; the dense baseline once per env and seed."""
        jobs = []
        for env in self.envs:
            for method in self.methods:
                pairs = [self.sparsities[0]] if method == "dense" else self.sparsities
                for actor_sparsity, critic_sparsity in pairs:
                    for seed in self.seeds:
                        cfg = from_dict(TrainConfig, self.train, "sweep config [train]", fixed={
                            "env_id": env, "method": method, "seed": seed, "actor_sparsity": actor_sparsity,
                            "critic_sparsity": critic_sparsity})
                        name = (f"{env}-{cfg.algo}-dense-s{seed}" if method == "dense" else
                                f"{env}-{cfg.algo}-{method}-a{actor_sparsity:g}-c{critic_sparsity:g}-s{seed}")
                        jobs.append((name, cfg))
        return jobs


def load_sweep_config(path: Path) -> SweepConfig:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read sweep config {path}: {exc}") from None
    config = from_dict(SweepConfig, raw, f"sweep config {path}")
    empty = [name for name in ("envs", "methods", "sparsities", "seeds") if not getattr(config, name)]
    if empty:
        raise UserError(f"sweep config {path}: {', '.join(empty)} must not be empty")
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise UserError(f"sweep config {path}: unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if any(not all(0 <= x < 1 for x in p) for p in config.sparsities):
        raise UserError(f"sweep config {path}: sparsities must be [actor, critic] pairs in [0, 1)")
    for env in config.envs:
        if not PLAIN_ENV_ID.fullmatch(env):
            raise UserError(f"sweep config {path}: env id {env!r} is not a plain Gymnasium id such as Hopper-v5 "
                            "(no folders, no namespace)")
        make_env(env).close()
    names = []
    for name, cfg in config.jobs():
        cfg.validate()
        if name in names:  # two jobs would train into one folder
            raise UserError(f"sweep config {path}: job {name} appears twice; repeat no env, method, sparsity "
                            "pair or seed")
        names.append(name)
    return config


def summarise_run(run: Path) -> dict:
    """A finished (or checkpointed) training run: its score (mean evaluation return over the last
    10% of evaluations), final return, nonzero weights, FLOPs and speed, and its learning curve."""
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
        "precision": cfg.get("precision", "fp32"),
        "label": config_label(cfg),
        "steps": ckpt.steps_done, "score": sum(float(r["eval_return"]) for r in tail) / len(tail),
        "final_return": final["mean_return"] if final else None,
        "actor_nnz": weight_count(actor), "actor_weights": weight_count(actor, sparse=False),
        "critic_nnz": weight_count(critic), "critic_weights": weight_count(critic, sparse=False),
        "train_flops": training_flops_per_step(actor, critic, cfg["policy_freq"]),
        "infer_flops": inference_flops(actor),
        "steps_per_s": final["steps_per_s"] if final else None,
        "curve": [(int(r["step"]), float(r["eval_return"])) for r in rows],
    }


def config_label(cfg: dict) -> str:
    """The configuration a run belongs to: method, sparsities (sparse methods), precision, and a
    warm-up or replay floor other than the defaults for the run's length."""
    label = cfg["method"]
    if cfg["method"] != "dense":
        label += f" {100 * cfg['actor_sparsity']:g}/{100 * cfg['critic_sparsity']:g}"
    if cfg.get("precision", "fp32") != "fp32":
        label += f" ({cfg['precision']})"
    return label + schedule_suffix(cfg, cfg["total_steps"])


SCHEDULE_LABELS = {"learning_starts": "warm-up", "buffer_min": "buffer floor"}


def schedule_suffix(cfg: dict, total_steps: int) -> str:
    """A label suffix such as " (warm-up 2,500)" where the run's warm-up or replay floor (the floor
    only for a method with a dynamic buffer) differs from the defaults for `total_steps`: such a run
    is a configuration of its own. None is the default; `cfg` needs "algo" where it holds a value."""
    parts = []
    for key, name in SCHEDULE_LABELS.items():
        value = cfg.get(key)
        if value is None or (key == "buffer_min" and not METHODS[cfg.get("method", "dense")].dynamic_buffer):
            continue
        default = getattr(Schedule.for_config(TrainConfig(algo=cfg["algo"], total_steps=total_steps)), key)
        if value != default:
            parts.append(f"{name} {value:,}")
    return f" ({', '.join(parts)})" if parts else ""


def is_finished(folder: Path, cfg: TrainConfig) -> bool:
    path = folder / "eval.json"
    return path.exists() and json.loads(path.read_text()).get("steps") == cfg.total_steps


def run_job(config: dict, folder: str) -> dict:
    """One training run, resumed from its checkpoint when one exists; returns its summary."""
    cfg = from_dict(TrainConfig, config, f"sweep job {folder}")
    torch.set_num_threads(cfg.threads)
    (Path(folder) / "job.pid").write_text(str(os.getpid()))  # lets a user (or a test) find and stop one job
    if not is_finished(Path(folder), cfg):
        train(cfg, folder, progress=False)
    result = summarise_run(Path(folder))
    result.pop("curve")
    return result | {"actor_sparsity": cfg.actor_sparsity if cfg.method != "dense" else 0.0,
                     "critic_sparsity": cfg.critic_sparsity if cfg.method != "dense" else 0.0}


def run_sweep(config: SweepConfig, backend: str = "local", ray_address: str | None = None,
              progress: bool = True) -> list[dict]:
    """Run every unfinished job, then collect and write the results; returns one row per job."""
    jobs = config.jobs()
    prepare_output_dir(config.out, "sweep out folder")
    for name, _ in jobs:
        (config.out / name).mkdir(exist_ok=True)
    payload = [(asdict(cfg) | {"hidden": list(cfg.hidden)}, str(config.out / name)) for name, cfg in jobs]
    bar = tqdm(total=len(jobs), disable=not progress, unit="job", desc=f"sweep {config.out.name}")
    if backend == "local":
        results = []
        for job in payload:
            results.append(run_job(*job))
            bar.update(1)
    elif backend == "ray":
        results = _run_on_ray(payload, ray_address, bar)
    else:
        raise UserError(f"unknown backend {backend!r}; use local or ray")
    bar.close()
    write_results(config.out, results)
    return results


def _run_on_ray(payload: list[tuple[dict, str]], address: str | None, bar) -> list[dict]:
    ray = start_ray(address)
    try:
        task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(run_job)
        refs = [task.remote(*job) for job in payload]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[dict | None] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[index[done[0]]] = ray.get(done[0])
            bar.update(1)
        return results
    finally:
        ray.shutdown()


def ultimate_compression(rows: list[dict]) -> dict[str, dict]:
    """Per env: the highest actor sparsity whose mean score is >= 97% of dense's."""
    by_env = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = "dense" if r["method"] == "dense" else (r["method"], r["actor_sparsity"], r["critic_sparsity"])
        by_env[r["env"]][key].append(r["score"])
    out = {}
    for env, groups in by_env.items():
        if "dense" not in groups:
            continue
        dense = sum(groups["dense"]) / len(groups["dense"])
        passing = [(key[1], key[2], sum(s) / len(s)) for key, s in groups.items()
                   if key != "dense" and key[0] == "rlx2" and sum(s) / len(s) >= dense - (1 - WITHIN_DENSE) * abs(dense)]
        best = max(passing, default=None)
        out[env] = {"dense_score": dense, "actor_sparsity": best[0] if best else None,
                    "critic_sparsity": best[1] if best else None, "score": best[2] if best else None,
                    "compression_ratio": 1 / (1 - best[0]) if best else None}
    return out


def write_results(out: Path, rows: list[dict]) -> None:
    """sweep.csv (one row per job), sweep.md (per-config means and the ultimate ratio), sweep.png."""
    write_csv(out / "sweep.csv", RESULT_FIELDS, rows)

    groups = defaultdict(list)
    for r in rows:
        groups[(r["env"], r["method"], r["actor_sparsity"], r["critic_sparsity"])].append(r)
    ultimate = ultimate_compression(rows)
    lines = ["| env | method | actor / critic sparsity | seeds | steps | mean score | % of dense |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (env, method, a, c), group in sorted(groups.items()):
        score = sum(r["score"] for r in group) / len(group)
        dense = ultimate.get(env, {}).get("dense_score")
        pct = f"{100 * score / dense:.1f}" if dense and dense > 0 else "n/a"
        lines.append(f"| {env} | {method} | {a:g} / {c:g} | {len(group)} | {group[0]['steps']:,} | {score:.1f} | {pct} |")
    lines += ["", "| env | ultimate compression (RLx2 actor within 3% of dense) |", "|---|---|"]
    for env, u in ultimate.items():
        text = (f"{u['compression_ratio']:.0f}x (actor {u['actor_sparsity']:g}, critic {u['critic_sparsity']:g})"
                if u["actor_sparsity"] is not None else "no sparse run within 3% of dense")
        lines.append(f"| {env} | {text} |")
    write_text(out / "sweep.md", "\n".join(lines) + "\n")

    envs = sorted({r["env"] for r in rows})
    fig, axes = subplots(1, len(envs), figsize=(5.5 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for method in sorted({m for (e, m, _, _) in groups if e == env}):
            points = sorted((a, sum(r["score"] for r in g) / len(g)) for (e, m, a, _), g in groups.items()
                            if e == env and m == method)
            if method == "dense":
                ax.axhline(points[0][1], color="k", linestyle="--", label="dense")
                ax.axhline(WITHIN_DENSE * points[0][1], color="k", linestyle=":", label="97% of dense")
            else:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set(title=env, xlabel="actor sparsity", ylabel="score (mean of last 10% evals)")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out / "sweep.png")
