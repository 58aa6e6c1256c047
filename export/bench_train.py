"""Training throughput: tinypolicy vs Stable-Baselines3, side by side in one process.

Both run the same env, network sizes (256-256), batch size, update ratio (one gradient
step per env step, TD3's actor every second step) and torch thread count. Each is timed
over `--steps` env steps after a `--warmup` of random actions, so only steady-state
training counts. tinypolicy's RLx2 runs with its n-step target already switched on.

tinypolicy runs in float32 and with bfloat16 hidden layers (`--precision bf16`).

    python -m export.bench_train --env Hopper-v5 --steps 3000 --threads 2
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from pipeline.artefact import write_json


def time_tinypolicy(env_id: str, algo: str, method: str, precision: str, warmup: int, steps: int, threads: int,
                    seed: int) -> float:
    from pipeline.train import Trainer, TrainConfig

    cfg = TrainConfig(env_id=env_id, algo=algo, method=method, actor_sparsity=0.9, critic_sparsity=0.85,
                      total_steps=300_000, learning_starts=warmup, nstep_start=0, threads=threads, seed=seed,
                      precision=precision)
    trainer = Trainer(cfg, Path("."))
    trainer.reset_env()
    while trainer.step < warmup + 50:  # includes the first updates (allocator warm-up)
        trainer.env_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.env_step()
    return steps / (time.perf_counter() - start)


def time_sb3(env_id: str, algo: str, warmup: int, steps: int, threads: int, seed: int) -> float:
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    torch.set_num_threads(threads)
    env = gym.make(env_id)
    common = dict(learning_starts=warmup, batch_size=256, train_freq=1, gradient_steps=1, seed=seed,
                  policy_kwargs=dict(net_arch=[256, 256]), device="cpu", verbose=0)
    if algo == "td3":
        act_dim = env.action_space.shape[0]
        model = TD3("MlpPolicy", env, action_noise=NormalActionNoise(np.zeros(act_dim), 0.1 * np.ones(act_dim)),
                    learning_rate=3e-4, **common)
    else:
        model = SAC("MlpPolicy", env, learning_rate=3e-4, **common)
    model.learn(warmup + 50)
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--algos", default="td3,sac")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", default="fp32,bf16", help="tinypolicy's hidden-layer compute dtypes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    # Rounds interleave every implementation, so a slow spell of the machine hits all of them;
    # each row reports the median over rounds and its ratio to SB3's median.
    impls = ["sb3"] + [f"tinypolicy-{method}-{precision}" for precision in args.precisions.split(",")
                       for method in ("dense", "rlx2")]
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for algo in args.algos.split(","):
            for impl in impls:
                if impl == "sb3":
                    speed = time_sb3(args.env, algo, args.warmup, args.steps, args.threads, args.seed)
                else:
                    _, method, precision = impl.split("-")
                    speed = time_tinypolicy(args.env, algo, method, precision, args.warmup, args.steps,
                                            args.threads, args.seed)
                runs.setdefault((algo, impl), []).append(speed)
    rows = []
    for (algo, impl), speeds in runs.items():
        median = statistics.median(speeds)
        rows.append({"algo": algo, "impl": impl, "steps_per_s": median, "rounds": speeds,
                     "ratio": median / statistics.median(runs[(algo, "sb3")])})

    print(f"{args.env}, {args.steps} env steps after {args.warmup} warm-up, {args.threads} torch threads, "
          f"median of {args.rounds} rounds")
    print(f"{'algo':5} {'implementation':23} {'env steps/s':>12} {'vs SB3':>7}  rounds")
    for r in rows:
        rounds = " ".join(f"{v:.1f}" for v in r["rounds"])
        print(f"{r['algo']:5} {r['impl']:23} {r['steps_per_s']:12.1f} {r['ratio']:6.2f}x  {rounds}")
    if args.out:
        import stable_baselines3

        result = {"env": args.env, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                  "rounds": args.rounds,
                  "seed": args.seed, "torch": torch.__version__, "sb3": stable_baselines3.__version__,
                  "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
                  "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
