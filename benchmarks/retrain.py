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
"""
from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
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
