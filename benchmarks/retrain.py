"""On-device retraining benchmark: time on one core, and MuJoCo returns vs the torch inner loop.

1. Time: `python -m tinypolicy.ondevice.retrain DATASET --hidden 64,64 --activation tanh` run as a
   fresh process `--timing-runs` times with one BLAS/OpenMP thread, pinned to one core
   (taskset); the median of the trainer's own clock and of the whole command's wall time.
2. Returns: for each seed, the NumPy retrained ONNX actor run under ONNX Runtime and the
   torch inner loop's policy trained on the same dataset with the same seed, each
   evaluated deterministically in MuJoCo (tinypolicy.envs.evaluate_policy); in-process
   training times (wall and CPU) of both side by side, one thread each.
3. With `--init INIT.npz` (a HaDES-F dataset's fixed init): both trainers once from it.
4. With `--mask ACTOR.onnx`: retraining with the exported actor's topology, hidden tanh
   (the recipe's) and relu (the mask actor's), per seed, and the mask actor's own return.

    python -m benchmarks.retrain --dataset DIR [--mask ACTOR.onnx] --seeds 0,1,2,3,4,5,6,7,8,9 \
        --episodes 10 --out docs/results/bench_retrain_hopper.json

`table KIND` prints one of docs/BENCHMARKS.md's tables from written results (by default the
committed files its section cites): `time`, `returns` and `mask` ("On-device retraining",
one row per results file), `hades-history` and `hades-retrained` (the one-hour HaDES-F run:
its summary.json, fitness.csv and this benchmark's results on its dataset):

    python -m benchmarks.retrain table {time,returns,mask} [RESULTS.json...]
    python -m benchmarks.retrain table hades-history [SUMMARY.json FITNESS.csv RESULTS.json]
    python -m benchmarks.retrain table hades-retrained [SUMMARY.json FITNESS.csv RESULTS.json] [--expert-return R]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from tinypolicy.envs import evaluate_policy
from tinypolicy.models.bc import BCParams, gaussian_nll, init_params, policy_mean, train_bc
from tinypolicy.ondevice.dataset import Dataset, load_dataset
from tinypolicy.ondevice.retrain import read_init, retrain
from tinypolicy.shares import percent, share_of

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def onnx_policy(path: Path):
    """obs -> action through ONNX Runtime on one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda obs: session.run(None, {"obs": np.asarray(obs, np.float32)[None]})[0][0]


def time_cli(dataset: Path, runs: int, workdir: Path) -> dict:
    """Median train time (the trainer's wall and CPU clocks: the machine is shared, so CPU time
    is the steadier figure) and command wall time, one thread on one core."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = {**os.environ, **ONE_THREAD}
    train, cpu, wall, command_cpu = [], [], [], []
    for run in range(runs):
        command = [*pin, sys.executable, "-m", "tinypolicy.ondevice.retrain", str(dataset), "--out",
                   str(workdir / "timing.onnx"), "--hidden", "64,64", "--activation", "tanh", "--seed", str(run)]
        started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        wall.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        command_cpu.append(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        train.append(summary["train_seconds"])
        cpu.append(summary["train_cpu_seconds"])
    return {"command": " ".join(command[len(pin):]), "pinned": bool(pin), "runs": runs,
            "train_seconds_median": statistics.median(train), "train_seconds": train,
            "train_cpu_seconds_median": statistics.median(cpu), "train_cpu_seconds": cpu,
            "wall_seconds_median": statistics.median(wall), "wall_seconds": wall,
            "command_cpu_seconds_median": statistics.median(command_cpu), "command_cpu_seconds": command_cpu}


def numpy_retrain(dataset_path: Path, workdir: Path, **options):
    """tinypolicy.ondevice.retrain to an ONNX file, run under ONNX Runtime: seed -> (policy, summary)."""
    def train(seed: int):
        out = workdir / f"policy-{seed}.onnx"
        summary = retrain(dataset_path, out, seed=seed, **options)
        return onnx_policy(out), summary
    return train


def torch_inner_loop(dataset: Dataset, init_path: Path | None = None):
    """The HaDES inner loop (models/bc.py, torch, one thread) as a 64-64 tanh policy, from its
    own init with `seed` or from `init_path`: seed -> (obs -> env-unit action, summary)."""
    torch.set_num_threads(1)
    recipe = replace(dataset.recipe, hidden=(64, 64), activation="tanh")
    states, actions = torch.as_tensor(dataset.states), torch.as_tensor(dataset.actions)

    def train(seed: int):
        if init_path is None:
            init = init_params(1, dataset.obs_dim, dataset.act_dim, recipe.hidden, seed)
        else:
            arrays = read_init(init_path, dataset)
            init = BCParams([torch.tensor(w)[None] for w in arrays.weights],
                            [torch.tensor(b)[None] for b in arrays.biases], torch.tensor(arrays.log_std)[None])
        started, cpu_started = time.perf_counter(), time.process_time()
        params, _ = train_bc(states, actions, init, recipe.steps, recipe.lr, recipe.activation, recipe.adam_eps,
                             recipe.grad_clip)
        summary = {"train_seconds": time.perf_counter() - started,
                   "train_cpu_seconds": time.process_time() - cpu_started,
                   "final_loss": float(gaussian_nll(params, states[None], actions[None], recipe.activation)[0])}

        @torch.no_grad()
        def policy(obs: np.ndarray) -> np.ndarray:
            mu = policy_mean(params, torch.as_tensor(dataset.normalise(obs))[None, None], recipe.activation)
            return dataset.to_env_units(mu[0, 0].numpy())

        return policy, summary
    return train


def _median(summaries: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in summaries)


RESULTS = ROOT / "docs" / "results"
RETRAIN_RESULTS = tuple(RESULTS / f"bench_retrain_{name}.json" for name in ("expert", "expert100k", "hades"))
HADES_1H = (RESULTS / "hades" / "hopper-d64-f-expert-1h-summary.json",
            RESULTS / "hades" / "hopper-d64-f-expert-1h-fitness.csv", RESULTS / "bench_retrain_hades_1h.json")
HISTORY_GENERATIONS = (0, 50, 100, 200, 300, 400, 500)  # and the last


def dataset_label(result: dict) -> str:
    meta = result["dataset_meta"]
    if meta["mode"] == "expert-rollouts":
        return f"expert {meta['checkpoint_steps'] // 1000}k"
    return f"HaDES-{meta['mode'].upper()}" + (", fresh inits" if result.get("from_init") else "")


def _spread(variant: dict, fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(variant['return_mean'])} +- {fmt.format(variant['return_std'])}"


def time_table(results: list[dict]) -> str:
    lines = ["| dataset | training, CPU | training, wall (shared machine) | whole command, wall | whole command, CPU |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        t = r["timing"]
        command_cpu = (f"{t['command_cpu_seconds_median']:.2f} s" if "command_cpu_seconds_median" in t
                       else "not measured")
        lines.append(f"| {dataset_label(r).removesuffix(', fresh inits')} | {t['train_cpu_seconds_median']:.3f} s | "
                     f"{t['train_seconds_median']:.2f} s | {t['wall_seconds_median']:.2f} s | {command_cpu} |")
    return "\n".join(lines) + "\n"


def returns_table(results: list[dict]) -> str:
    lines = ["| dataset | NumPy | torch inner loop | NumPy - torch (standard error) |", "|---|---:|---:|---:|"]
    for r in results:
        v, diff = r["variants"], r["numpy_minus_torch_return"]
        lines.append(f"| {dataset_label(r)} | {_spread(v['numpy 64-64 tanh'])} | {_spread(v['torch 64-64 tanh'])} | "
                     f"{diff['mean']:+.1f} ({diff['standard_error']:.1f}) |")
        if r.get("from_init"):
            numpy_return, torch_return = r["from_init"]["numpy"]["return"], r["from_init"]["torch"]["return"]
            lines.append(f"| {dataset_label(r).removesuffix(', fresh inits')}, its fixed init | {numpy_return:.1f} | "
                         f"{torch_return:.1f} | {numpy_return - torch_return:+.1f} |")
    return "\n".join(lines) + "\n"


def mask_table(results: list[dict]) -> str:
    lines = ["| dataset | mask, tanh | mask, relu | dense 64-64 tanh (above) | the mask actor itself |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        if r.get("mask"):
            v = r["variants"]
            lines.append(f"| {dataset_label(r)} | {_spread(v['numpy mask tanh'])} | {_spread(v['numpy mask relu'])} | "
                         f"{_spread(v['numpy 64-64 tanh'])} | {r['mask']['mask_actor_return']:,.1f} |")
    return "\n".join(lines) + "\n"


def hades_history_table(summary: dict, fitness: list[dict], results: dict,
                        generations: tuple[int, ...] = HISTORY_GENERATIONS) -> str:
    """A HaDES run's progress at some generations and its last: minutes since the start (the
    generations' summed seconds), population mean fitness and the search mean's return."""
    minutes, elapsed = {}, 0.0
    for row in fitness:
        elapsed += float(row["seconds"])
        minutes[int(row["generation"])] = elapsed / 60
    by_generation = {int(row["generation"]): row for row in fitness}
    last = max(by_generation)
    shown = [g for g in generations if g in by_generation and g != last] + [last]
    episodes = results["dataset_meta"]["config"]["mean_episodes"]
    rows = [("generation", [str(g) for g in shown]), ("minutes", [f"{minutes[g]:.1f}" for g in shown]),
            ("population mean fitness", [f"{float(by_generation[g]['mean_fitness']):,.0f}" for g in shown]),
            (f"search mean, {episodes} episodes",
             [f"{float(by_generation[g]['mean_dataset_return']):,.0f}" for g in shown])]
    lines = [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines[:1] + ["|---|" + "---:|" * len(shown)] + lines[1:]) + "\n"


def _seed_range(seeds: list[int]) -> str:
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive and len(seeds) > 1 else ", ".join(map(str, seeds))


def hades_retrained_table(summary: dict, results: dict, expert_return: float | None = None) -> str:
    """Returns retrained on a HaDES-F dataset, from its shipped init and from fresh ones, with
    the distill run's own evaluation (summary.json) and this benchmark's (`results`), as shares
    of `expert_return` (default: the mean of the expert rollouts recorded in the dataset)."""
    if expert_return is None:
        expert_return = statistics.mean(results["dataset_meta"]["expert_rollout_returns"])

    def share(value: float) -> str:
        return percent(share_of(value, expert_return))

    s, init, v = summary, results["from_init"], results["variants"]
    numpy_fresh, torch_fresh = v["numpy 64-64 tanh"], v["torch 64-64 tanh"]
    rows = [
        (f"from the shipped `policy_init.npz`, torch inner loop ({s['episodes']} episodes, `summary.json`)",
         f"{s['fixed_init_return']:,.1f}", share(s["fixed_init_return"])),
        (f"from the shipped init, **NumPy on-device retrainer** -> ONNX, {results['episodes']} episodes",
         f"**{init['numpy']['return']:,.1f}**", f"**{share(init['numpy']['return'])}**"),
        (f"from the shipped init, torch, {results['episodes']} episodes", f"{init['torch']['return']:,.1f}",
         share(init["torch"]["return"])),
        (f"fresh inits (seeds {_seed_range(s['fresh_init_seeds'])}, torch, {s['episodes']} episodes each)",
         f"{s['fresh_init_mean']:,.0f} ({', '.join(f'{r:,.0f}' for r in s['fresh_init_returns'])})",
         share(s["fresh_init_mean"])),
        (f"fresh inits (seeds {_seed_range(results['seeds'])}, NumPy / torch, {results['episodes']} episodes each)",
         f"{_spread(numpy_fresh, '{:,.0f}')} / {_spread(torch_fresh, '{:,.0f}')}",
         f"{share(numpy_fresh['return_mean'])} / {share(torch_fresh['return_mean'])}"),
        (f"last search mean (generation {s['generations']}) from its init / fresh inits",
         f"{s['last_mean_fixed_init_return']:,.0f} / {s['last_mean_fresh_init_mean']:,.0f}",
         f"{share(s['last_mean_fixed_init_return'])} / {share(s['last_mean_fresh_init_mean'])}"),
    ]
    lines = ["| retrained on the dataset | return | % of expert |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {label} | {value} | {pct} |" for label, value, pct in rows]) + "\n"


TABLES = ("time", "returns", "mask", "hades-history", "hades-retrained")


def table_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrain table",
                                     description="Print one of docs/BENCHMARKS.md's tables from written results.")
    parser.add_argument("kind", choices=TABLES)
    parser.add_argument("files", nargs="*", type=Path,
                        help="results files (time, returns, mask); SUMMARY.json FITNESS.csv RESULTS.json (hades-*)")
    parser.add_argument("--expert-return", type=float, default=None,
                        help="hades-retrained: the reference for %% of expert (default: the mean of the expert "
                             "rollouts in the results' dataset meta)")
    args = parser.parse_args(argv)
    hades = args.kind.startswith("hades-")
    files = args.files or list(HADES_1H if hades else RETRAIN_RESULTS)
    if hades and len(files) != 3:
        parser.error(f"{args.kind} reads three files: SUMMARY.json FITNESS.csv RESULTS.json")
    try:
        if hades:
            summary, results = json.loads(files[0].read_text()), json.loads(files[2].read_text())
            with files[1].open(newline="") as f:
                fitness = list(csv.DictReader(f))
        else:
            results_list = [json.loads(path.read_text()) for path in files]
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if args.kind == "hades-history":
        text = hades_history_table(summary, fitness, results)
    elif args.kind == "hades-retrained":
        text = hades_retrained_table(summary, results, args.expert_return)
    else:
        text = {"time": time_table, "returns": returns_table, "mask": mask_table}[args.kind](results_list)
    sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:
        return table_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--mask", type=Path, default=None, help="an exported actor.onnx (its topology is kept)")
    parser.add_argument("--init", type=Path, default=None,
                        help="a 64-64 policy_init.npz (HaDES-F): also train both from it, once")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per policy")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the first evaluation episode")
    parser.add_argument("--timing-runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset = load_dataset(args.dataset)

    def evaluate(policy) -> float:
        return float(evaluate_policy(policy, dataset.env_id, args.episodes, args.eval_seed).mean())

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        timing = time_cli(args.dataset, args.timing_runs, workdir)
        print(f"CLI, 64-64 tanh, D={dataset.size}, median of {args.timing_runs}: train "
              f"{timing['train_seconds_median']:.3f} s wall, {timing['train_cpu_seconds_median']:.3f} s CPU; "
              f"whole command {timing['wall_seconds_median']:.3f} s wall, {timing['command_cpu_seconds_median']:.3f} s CPU",
              flush=True)
        variants = {"numpy 64-64 tanh": numpy_retrain(args.dataset, workdir, hidden=(64, 64), activation="tanh"),
                    "torch 64-64 tanh": torch_inner_loop(dataset)}
        if args.mask:
            for activation in ("tanh", "relu"):
                variants[f"numpy mask {activation}"] = numpy_retrain(args.dataset, workdir, mask_path=args.mask,
                                                                     activation=activation)
        returns: dict[str, list[float]] = {name: [] for name in variants}
        summaries: dict[str, list[dict]] = {name: [] for name in variants}
        for seed in seeds:
            for name, train in variants.items():
                policy, summary = train(seed)
                summaries[name].append(summary)
                returns[name].append(evaluate(policy))
            print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in returns.items()), flush=True)
        mask_return = evaluate(onnx_policy(args.mask)) if args.mask else None
        from_init = {}
        if args.init:
            for name, train in (("numpy", numpy_retrain(args.dataset, workdir, init_path=args.init)),
                                ("torch", torch_inner_loop(dataset, args.init))):
                policy, summary = train(0)
                from_init[name] = {"return": evaluate(policy), "final_loss": summary["final_loss"],
                                   "train_cpu_seconds": summary["train_cpu_seconds"]}

    n = len(seeds)
    numpy_returns, torch_returns = np.array(returns["numpy 64-64 tanh"]), np.array(returns["torch 64-64 tanh"])
    difference_se = float(np.sqrt(numpy_returns.var(ddof=1) / n + torch_returns.var(ddof=1) / n)) if n > 1 else None
    results = {
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "numpy": np.__version__, "date": time.strftime("%Y-%m-%d"), "dataset": str(args.dataset),
        "dataset_sha256": dataset.sha256, "dataset_meta": dataset.meta, "env_id": dataset.env_id,
        "dataset_size": dataset.size, "recipe": asdict(dataset.recipe),
        "seeds": seeds, "episodes": args.episodes, "eval_seed": args.eval_seed, "timing": timing,
        "variants": {name: {"return_mean": float(np.mean(returns[name])), "return_std": float(np.std(returns[name])),
                            "returns": returns[name],
                            "train_seconds_median": _median(summaries[name], "train_seconds"),
                            "train_cpu_seconds_median": _median(summaries[name], "train_cpu_seconds"),
                            "final_loss_median": _median(summaries[name], "final_loss"),
                            **({"sparsity": summaries[name][0]["sparsity"], "nnz": summaries[name][0]["nnz"],
                                "hidden": summaries[name][0]["hidden"]} if "nnz" in summaries[name][0] else {})}
                     for name in variants},
        "numpy_minus_torch_return": {"mean": float(numpy_returns.mean() - torch_returns.mean()),
                                     "standard_error": difference_se},
        "mask": {"path": str(args.mask), "mask_actor_return": mask_return} if args.mask else None,
        "from_init": {"path": str(args.init), **from_init} if args.init else None,
    }
    print(f"{'variant':18} {'return':>16} {'train s (CPU)':>14} {'final loss':>10}")
    for name, v in results["variants"].items():
        print(f"{name:18} {v['return_mean']:8.1f} +- {v['return_std']:5.1f} {v['train_cpu_seconds_median']:14.3f} "
              f"{v['final_loss_median']:10.3f}" + (f"  sparsity {v['sparsity']:.3f}" if "sparsity" in v else ""))
    diff = results["numpy_minus_torch_return"]
    print(f"numpy - torch return: {diff['mean']:.1f} (standard error {diff['standard_error'] or float('nan'):.1f})")
    if args.mask:
        print(f"mask actor itself: return {mask_return:.1f}")
    for name, r in from_init.items():
        print(f"{name} from {args.init}: return {r['return']:.1f}, final loss {r['final_loss']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
