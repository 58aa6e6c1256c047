"""On-device retraining benchmark: time on one core, and MuJoCo returns vs the torch inner loop.

1. Time: `python -m pipeline.retrain DATASET --hidden 64,64 --activation tanh` run as a
   fresh process `--timing-runs` times with one BLAS/OpenMP thread, pinned to one core
   (taskset); the median of the trainer's own clock and of the whole command's wall time.
2. Returns: for each seed, the NumPy retrained ONNX actor run under ONNX Runtime and the
   torch inner loop's policy trained on the same dataset with the same seed, each
   evaluated deterministically in MuJoCo (pipeline.envs.evaluate_policy); in-process
   training times of both side by side (one thread each).
3. With `--mask ACTOR.onnx`: retraining at the exported actor's sparsity, per seed, and
   the mask actor's own return for reference.

    python -m export.bench_retrain --dataset DIR [--mask ACTOR.onnx] --seeds 0,1,2,3,4 \
        --episodes 10 --out docs/results/bench_retrain_hopper.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from pipeline.dataset import Dataset, load_dataset
from pipeline.envs import evaluate_policy
from pipeline.retrain import retrain

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
    train, cpu, wall = [], [], []
    for run in range(runs):
        command = [*pin, sys.executable, "-m", "pipeline.retrain", str(dataset), "--out",
                   str(workdir / "timing.onnx"), "--hidden", "64,64", "--activation", "tanh", "--seed", str(run)]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        wall.append(time.perf_counter() - started)
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        train.append(summary["train_seconds"])
        cpu.append(summary["train_cpu_seconds"])
    return {"command": " ".join(command[len(pin):]), "pinned": bool(pin), "runs": runs,
            "train_seconds_median": statistics.median(train), "train_seconds": train,
            "train_cpu_seconds_median": statistics.median(cpu), "train_cpu_seconds": cpu,
            "wall_seconds_median": statistics.median(wall), "wall_seconds": wall}


def torch_inner_loop(dataset: Dataset, seed: int):
    """The HaDES inner loop (models/bc.py, torch, one thread) trained on `dataset` as a 64-64
    tanh policy from its own init with `seed`: (obs -> env-unit action, training seconds)."""
    import torch

    from models.bc import init_params, policy_mean, train_bc

    torch.set_num_threads(1)
    recipe = replace(dataset.recipe, hidden=(64, 64), activation="tanh")
    init = init_params(1, dataset.obs_dim, dataset.act_dim, recipe.hidden, seed)
    started = time.perf_counter()
    params, _ = train_bc(torch.as_tensor(dataset.states), torch.as_tensor(dataset.actions), init, recipe.steps,
                         recipe.lr, recipe.activation, recipe.adam_eps, recipe.grad_clip)
    seconds = time.perf_counter() - started

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        mu = policy_mean(params, torch.as_tensor(dataset.normalise(obs))[None, None], recipe.activation)
        return dataset.to_env_units(mu[0, 0].numpy())

    return policy, seconds


def _stats(returns: list[float]) -> dict:
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "per_seed": returns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--mask", type=Path, default=None, help="an exported actor.onnx (its sparsity is kept)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per policy")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the first evaluation episode")
    parser.add_argument("--timing-runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset = load_dataset(args.dataset)
    evaluate = lambda policy: float(evaluate_policy(policy, dataset.env_id, args.episodes, args.eval_seed).mean())  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        timing = time_cli(args.dataset, args.timing_runs, workdir)
        print(f"64-64 tanh, D={dataset.size}: train {timing['train_seconds_median']:.3f} s "
              f"(CPU {timing['train_cpu_seconds_median']:.3f} s), "
              f"command {timing['wall_seconds_median']:.3f} s (median of {args.timing_runs})", flush=True)
        variants: dict[str, list[float]] = {"numpy-64-64-tanh": [], "torch-64-64-tanh": []}
        summaries: dict[str, list[dict]] = {"numpy-64-64-tanh": []}
        torch_seconds: list[float] = []
        if args.mask:
            variants["numpy-mask"], summaries["numpy-mask"] = [], []
        for seed in seeds:
            out = workdir / f"dense-{seed}.onnx"
            summaries["numpy-64-64-tanh"].append(retrain(args.dataset, out, hidden=(64, 64), activation="tanh",
                                                         seed=seed))
            variants["numpy-64-64-tanh"].append(evaluate(onnx_policy(out)))
            torch_policy, seconds = torch_inner_loop(dataset, seed)
            torch_seconds.append(seconds)
            variants["torch-64-64-tanh"].append(evaluate(torch_policy))
            if args.mask:
                out = workdir / f"mask-{seed}.onnx"
                summaries["numpy-mask"].append(retrain(args.dataset, out, mask_path=args.mask, seed=seed))
                variants["numpy-mask"].append(evaluate(onnx_policy(out)))
            print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in variants.items()), flush=True)
        mask_return = evaluate(onnx_policy(args.mask)) if args.mask else None

    results = {
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "numpy": np.__version__, "date": time.strftime("%Y-%m-%d"), "dataset": str(args.dataset),
        "dataset_sha256": dataset.sha256, "dataset_meta": dataset.meta, "env_id": dataset.env_id,
        "dataset_size": dataset.size, "recipe": asdict(dataset.recipe),
        "seeds": seeds, "episodes": args.episodes, "eval_seed": args.eval_seed, "timing": timing,
        "returns": {k: _stats(v) for k, v in variants.items()},
        "train_seconds": {**{k: statistics.median(s["train_seconds"] for s in v) for k, v in summaries.items()},
                          "torch-64-64-tanh": statistics.median(torch_seconds)},
        "final_loss": {k: statistics.median(s["final_loss"] for s in v) for k, v in summaries.items()},
        "mask": {"path": str(args.mask), "sparsity": summaries["numpy-mask"][0]["sparsity"],
                 "hidden": summaries["numpy-mask"][0]["hidden"], "mask_actor_return": mask_return}
        if args.mask else None,
    }
    for name, stats in results["returns"].items():
        print(f"{name:18} return {stats['mean']:8.1f} +- {stats['std']:6.1f} over seeds {seeds}")
    times = results["train_seconds"]
    print(f"in-process training, median over seeds: NumPy {times['numpy-64-64-tanh']:.3f} s, torch inner loop "
          f"{times['torch-64-64-tanh']:.3f} s ({times['torch-64-64-tanh'] / times['numpy-64-64-tanh']:.1f}x)")
    if args.mask:
        print(f"mask actor itself: {mask_return:.1f}, sparsity {results['mask']['sparsity']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
