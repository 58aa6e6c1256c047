"""Training throughput: tinypolicy vs Stable-Baselines3, side by side in one process.

Both run the same env, network sizes (256-256), batch size, update ratio (one gradient
step per env step, TD3's actor every second step) and torch thread count, after a
`--warmup` of random actions, so only steady-state training counts. tinypolicy's RLx2
runs with its n-step target already switched on, in float32 and with bfloat16 hidden
layers (`--precision bf16`).

Every implementation is built once and then trained in short interleaved chunks
(`--chunk` env steps each, round-robin until each has done `--steps`): a slow spell of
this shared VM, which can last minutes, then hits every implementation alike instead of
whichever happened to run during it. Speeds are total steps over total time.

`handwritten-td3-{fp32,bf16}` (TD3 only) is our dense TD3 update with its backward pass
written out by hand (`HandwrittenTD3`: no autograd, no modules, no replay sampling): what
a rewrite of the update without autograd could reach at most, in each precision.

A last runner, `matmul-floor`, is the ceiling of any implementation on this machine: per
env step it does only the env step and the matrix products of that step's updates (the
same shapes, batch and thread count, preallocated, no autograd, no optimiser, no
activations), in each of the benchmarked precisions. No implementation of the same
algorithm at the same network sizes and precision can beat its speed, so its ratio to
SB3 bounds what can be reached here.

    python -m benchmarks.train_speed --env Hopper-v5 --steps 3000 --threads 1,2

`table` prints docs/BENCHMARKS.md's section-1 table from written results (LABEL=PATH, or
PATH labelled by its file name; by default runs a and b of 2026-12-05):

    python -m benchmarks.train_speed table [--threads 2] [--precisions fp32] [LABEL=]RESULTS.json...
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import torch

from benchmarks.sb3_reference import sb3_model
from tinypolicy.envs import make_env
from tinypolicy.export.bench import cpu_model
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.pipeline.train import PRECISIONS, TrainConfig, Trainer, native_bf16


def tinypolicy_runner(env_id: str, algo: str, method: str, precision: str, warmup: int, threads: int,
                      seed: int) -> Callable[[int], None]:
    cfg = TrainConfig(env_id=env_id, algo=algo, method=method, actor_sparsity=0.9, critic_sparsity=0.85,
                      total_steps=300_000, learning_starts=warmup, nstep_start=0, threads=threads, seed=seed,
                      precision=precision)
    trainer = Trainer(cfg, Path("."))
    trainer.reset_env()

    def run(steps: int) -> None:
        for _ in range(steps):
            trainer.env_step()

    run(warmup + 50)  # includes the first updates (allocator warm-up)
    return run


def sb3_runner(env_id: str, algo: str, warmup: int, threads: int, seed: int) -> Callable[[int], None]:
    torch.set_num_threads(threads)
    cfg = TrainConfig(env_id=env_id, algo=algo, method="dense", total_steps=300_000, seed=seed)
    model = sb3_model(cfg, make_env(env_id), warmup)

    def run(steps: int) -> None:
        model.learn(steps, reset_num_timesteps=False)

    run(warmup + 50)
    return run


def _mlp_products(sizes: list[int], batch: int, forward: int, weight_grads: int, input_grads: int,
                  first_input_grad: bool) -> list[tuple[int, int, int]]:
    """(m, k, n) of the matrix products of `forward` passes and of backward passes through
    an MLP with layer widths `sizes`: `weight_grads` of them compute weight gradients,
    `input_grads` propagate gradients to the layer inputs (to the network's own input too
    if `first_input_grad`)."""
    shapes = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        shapes += [(batch, n_in, n_out)] * forward
        shapes += [(n_out, batch, n_in)] * weight_grads
        if i > 0 or first_input_grad:
            shapes += [(batch, n_out, n_in)] * input_grads
    return shapes


def update_products(algo: str, obs_dim: int, act_dim: int, hidden: list[int],
                    batch: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """The matrix products of one dense critic update and of one actor update (two Q heads)."""
    actor_out = act_dim if algo == "td3" else 2 * act_dim
    actor = [obs_dim, *hidden, actor_out]
    critic = [obs_dim + act_dim, *hidden, 1]
    heads_in_actor_loss = 1 if algo == "td3" else 2
    critic_update = (_mlp_products(actor, batch, 1, 0, 0, False)             # next action (target actor)
                     + _mlp_products(critic, batch, 2 * 2, 2, 2, False))     # target and online Q, backward
    actor_update = (_mlp_products(actor, batch, 1, 1, 1, False)
                    + _mlp_products(critic, batch, heads_in_actor_loss, 0, heads_in_actor_loss, True))
    return critic_update, actor_update


def floor_runner(env_id: str, algo: str, precision: str, warmup: int, threads: int,
                 seed: int) -> Callable[[int], None]:
    """`precision` "bf16" multiplies every product in bfloat16, the first and last layers
    too (tinypolicy keeps those in float32), so it bounds the bf16 trainers from above."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(env_id=env_id, algo=algo)
    env = make_env(env_id, seed=seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    critic_update, actor_update = update_products(algo, obs_dim, act_dim, list(cfg.hidden), cfg.batch_size)
    actor_every = cfg.policy_freq if algo == "td3" else 1

    dtype = PRECISIONS[precision] or torch.float32

    def operands(shapes):
        return [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.empty(m, n, dtype=dtype))
                for m, k, n in shapes]

    critic_ops, actor_ops = operands(critic_update), operands(actor_update)
    env.reset(seed=seed)
    done_steps = 0

    def run(steps: int) -> None:
        nonlocal done_steps
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
            for a, b, out in critic_ops:
                torch.mm(a, b, out=out)
            done_steps += 1
            if done_steps % actor_every == 0:
                for a, b, out in actor_ops:
                    torch.mm(a, b, out=out)

    run(warmup + 50)
    return run


class HandwrittenTD3:
    """Dense TD3 (twin critics, target smoothing, delayed actor, Polyak targets) with its
    backward pass written out in eager tensor ops: no autograd, no nn.Module, weights
    stored [in, out] so every forward product is a plain (b)addmm. Not a trainer (no
    replay buffer, no masks): the `handwritten-td3` runner uses it to measure what
    removing autograd and module overhead from our update could buy on this machine.

    `dtype` bfloat16 is tinypolicy's mixed precision: every layer but the output layer
    computes in bfloat16 from float32 masters (each network cast once per change of its
    masters, gradients cast back to float32 for Adam)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], batch: int, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        def layers(sizes, ensemble):
            shape = (ensemble,) if ensemble else ()
            params = []
            for n_in, n_out in pairwise(sizes):
                bound = 1.0 / n_in ** 0.5
                params += [(torch.rand(*shape, n_in, n_out, generator=generator) * 2 - 1) * bound,
                           (torch.rand(*shape, 1, n_out, generator=generator) * 2 - 1) * bound]
            return params

        self.obs_dim, self.batch = obs_dim, batch
        self.actor = layers([obs_dim, *hidden, act_dim], 0)
        self.critic = layers([obs_dim + act_dim, *hidden, 1], 2)
        self.actor_target = [p.clone() for p in self.actor]
        self.critic_target = [p.clone() for p in self.critic]
        self.adam = {id(params): ([torch.zeros(()) for _ in params], [torch.zeros_like(p) for p in params],
                                  [torch.zeros_like(p) for p in params]) for params in (self.actor, self.critic)}
        self.updates = 0
        self.dtype = dtype
        self.compute: dict[int, list[torch.Tensor]] = {}
        for params in (self.actor, self.critic, self.actor_target, self.critic_target):
            self._refresh(params)

    def _refresh(self, params: list[torch.Tensor]) -> None:
        """Recast `params` (after their masters changed) to the compute dtype; the output
        layer stays float32."""
        self.compute[id(params)] = [p.to(self.dtype) for p in params[:-2]] + params[-2:]

    @staticmethod
    def _master_grads(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return [g.float() for g in grads]

    @staticmethod
    def forward(params: list[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The MLP's output and each layer's input (ReLU between layers). Critic weights
        are [2, in, out]: a [batch, in] input feeds both heads."""
        inputs = []
        for i in range(0, len(params), 2):
            weight, bias = params[i], params[i + 1]
            x = x.to(weight.dtype)
            if weight.dim() == 3 and x.dim() == 2:
                x = x.expand(weight.shape[0], *x.shape)
            inputs.append(x)
            x = torch.baddbmm(bias, x, weight) if weight.dim() == 3 else torch.addmm(bias, x, weight)
            if i + 2 < len(params):
                x.relu_()
        return x, inputs

    @staticmethod
    def backward(params: list[torch.Tensor], inputs: list[torch.Tensor], grad: torch.Tensor,
                 weight_grads: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradients of the parameters (if `weight_grads`) and of the MLP's input, given
        the gradient of its output."""
        grads: list[torch.Tensor] = []
        for i in range(len(params) - 2, -1, -2):
            grad = grad.to(params[i].dtype)
            if weight_grads:
                grads = [inputs[i // 2].transpose(-1, -2) @ grad, grad.sum(-2, keepdim=True)] + grads
            grad = grad @ params[i].transpose(-1, -2)
            if i:
                grad = torch.ops.aten.threshold_backward(grad, inputs[i // 2], 0)
        return grads, grad

    def critic_grads(self, obs, actions, returns, next_obs, discount, noise) -> list[torch.Tensor]:
        """Gradients of the twin critics' TD loss; `returns` and `discount` are [batch, 1]."""
        next_pre_tanh = self.forward(self.compute[id(self.actor_target)], next_obs)[0]
        next_action = (torch.tanh(next_pre_tanh) + noise).clamp_(-1.0, 1.0)
        next_q = self.forward(self.compute[id(self.critic_target)], torch.cat([next_obs, next_action], 1))[0]
        target = torch.minimum(next_q[0], next_q[1]).mul_(discount).add_(returns)
        critic = self.compute[id(self.critic)]
        q, inputs = self.forward(critic, torch.cat([obs, actions], 1))
        # d/dq of sum over heads of mean((q - target)^2)
        return self._master_grads(self.backward(critic, inputs, (q - target).mul_(2.0 / len(obs)), True)[0])

    def actor_grads(self, obs) -> list[torch.Tensor]:
        actor = self.compute[id(self.actor)]
        pre_tanh, actor_inputs = self.forward(actor, obs)
        action = torch.tanh(pre_tanh)
        head = [p[0] for p in self.compute[id(self.critic)]]
        q, critic_inputs = self.forward(head, torch.cat([obs, action], 1))
        # d/dq of -mean(q), back to the action, then through tanh
        _, grad_in = self.backward(head, critic_inputs, torch.full_like(q, -1.0 / len(obs)), False)
        grad_pre_tanh = grad_in[:, self.obs_dim:].mul_(1.0 - action * action)
        return self._master_grads(self.backward(actor, actor_inputs, grad_pre_tanh, True)[0])

    def adam_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float = 3e-4) -> None:
        steps, exp_avgs, exp_avg_sqs = self.adam[id(params)]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

    def update(self, obs, actions, returns, next_obs, discount, noise, policy_freq: int = 2,
               tau: float = 0.005) -> None:
        self.adam_step(self.critic, self.critic_grads(obs, actions, returns, next_obs, discount, noise))
        self._refresh(self.critic)
        self.updates += 1
        if self.updates % policy_freq == 0:
            self.adam_step(self.actor, self.actor_grads(obs))
            torch._foreach_lerp_(self.actor_target, self.actor, tau)
            torch._foreach_lerp_(self.critic_target, self.critic, tau)
            for params in (self.actor, self.actor_target, self.critic_target):
                self._refresh(params)


def handwritten_runner(env_id: str, precision: str, warmup: int, threads: int, seed: int) -> Callable[[int], None]:
    """Env step, one-row policy forward, then `HandwrittenTD3.update` on a fixed random
    batch: what tinypolicy's TD3 would reach without autograd and modules, before paying
    for replay sampling (an upper bound for such a rewrite, not a trainer)."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(env_id=env_id, algo="td3")
    env = make_env(env_id, seed=seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    generator = torch.Generator().manual_seed(seed)
    td3 = HandwrittenTD3(obs_dim, act_dim, list(cfg.hidden), cfg.batch_size, generator,
                         PRECISIONS[precision] or torch.float32)
    batch = cfg.batch_size
    obs, next_obs = torch.randn(2, batch, obs_dim, generator=generator)
    actions = torch.rand(batch, act_dim, generator=generator) * 2 - 1
    returns, discount = torch.randn(batch, 1, generator=generator), torch.full((batch, 1), cfg.gamma)
    observation, _ = env.reset(seed=seed)

    def run(steps: int) -> None:
        nonlocal observation
        for _ in range(steps):
            with torch.no_grad():
                policy = torch.tanh(td3.forward(td3.actor, torch.as_tensor(observation, dtype=torch.float32)[None])[0])
            observation, _, terminated, truncated, _ = env.step(policy[0].numpy())
            if terminated or truncated:
                observation, _ = env.reset()
            noise = (torch.randn(batch, act_dim) * cfg.policy_noise).clamp_(-cfg.noise_clip, cfg.noise_clip)
            td3.update(obs, actions, returns, next_obs, discount, noise, cfg.policy_freq, cfg.tau)

    run(warmup + 50)
    return run


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
TABLE_RUNS = (f"a={RESULTS / 'bench_train_hopper_avx512_2026-12-05a.json'}",
              f"b={RESULTS / 'bench_train_hopper_avx512_2026-12-05b.json'}")
TABLE_COLUMNS = {"matmul-floor": "floor", "handwritten-td3": "hand-written", "tinypolicy-dense": "dense",
                 "tinypolicy-rlx2": "RLx2"}
SLOW_CHUNK = 0.5  # a chunk under this share of its implementation's median chunk marks the ratio with *


def markdown_table(runs: list[tuple[str, dict]], threads: int = 2, precisions: tuple[str, ...] = ("fp32",)) -> str:
    """SB3's env steps/s and each implementation's ratio to it, one row per algorithm and run
    (`runs`: (label, written results)); "-" where a run lacks the implementation, "*" where one
    of its chunks ran under SLOW_CHUNK of its median chunk (a slow spell of the machine)."""
    columns = {f"{impl}-{precision}": f"{name} {precision}" for precision in precisions
               for impl, name in TABLE_COLUMNS.items()}
    lines = ["| algo | run | SB3 | " + " | ".join(columns.values()) + " |", "|---|---|" + "---:|" * (1 + len(columns))]
    algos = dict.fromkeys(r["algo"] for _, result in runs for r in result["rows"])
    for algo in algos:
        for label, result in runs:
            rows = {r["impl"]: r for r in result["rows"] if r["algo"] == algo and r["threads"] == threads}
            if "sb3" not in rows:
                continue
            cells = [algo.upper(), label, f"{rows['sb3']['steps_per_s']:.1f}"]
            for column in columns:
                r = rows.get(column)
                slow = r is not None and min(r["chunks"]) < SLOW_CHUNK * statistics.median(r["chunks"])
                cells.append("-" if r is None else f"{r['ratio']:.2f}x" + "*" * slow)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed table",
                                     description="Print the training-speed table of written results.")
    parser.add_argument("results", nargs="*", default=list(TABLE_RUNS), metavar="[LABEL=]RESULTS.json")
    parser.add_argument("--threads", type=int, default=2, help="the thread count whose rows to show")
    parser.add_argument("--precisions", default="fp32", help="comma-separated, e.g. fp32,bf16")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.results:
        label, _, path = spec.rpartition("=")
        try:
            runs.append((label or Path(path).stem, json.loads(Path(path).read_text())))
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: {exc}")
    sys.stdout.write(markdown_table(runs, args.threads, tuple(args.precisions.split(","))))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:
        return table_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--algos", default="td3,sac")
    parser.add_argument("--steps", type=int, default=3000, help="timed env steps per implementation")
    parser.add_argument("--chunk", type=int, default=250, help="env steps per turn of the round-robin")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--threads", default="2",
                        help="torch thread counts, comma-separated: every implementation runs at each, and "
                             "'vs SB3' compares at the same count ('vs fastest SB3' against SB3's best)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", default=None,
                        help="tinypolicy's hidden-layer compute dtypes (default: fp32, plus bf16 where the CPU "
                             "multiplies bfloat16 natively)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.steps < args.chunk or args.chunk <= 0:
        parser.error("--steps must be at least --chunk, and --chunk positive")
    if not all(t.strip().isdigit() and int(t) > 0 for t in args.threads.split(",")):
        parser.error("--threads must be positive integers separated by commas, e.g. 1,2")

    thread_counts = [int(t) for t in args.threads.split(",")]
    precisions = args.precisions or ("fp32,bf16" if native_bf16() else "fp32")
    rows = []
    for algo in args.algos.split(","):
        runners: dict[tuple[str, int], Callable[[int], None]] = {}
        for threads in thread_counts:
            runners["sb3", threads] = sb3_runner(args.env, algo, args.warmup, threads, args.seed)
            for precision in precisions.split(","):
                runners[f"matmul-floor-{precision}", threads] = floor_runner(
                    args.env, algo, precision, args.warmup, threads, args.seed)
                if algo == "td3":
                    runners[f"handwritten-td3-{precision}", threads] = handwritten_runner(
                        args.env, precision, args.warmup, threads, args.seed)
                for method in ("dense", "rlx2"):
                    runners[f"tinypolicy-{method}-{precision}", threads] = tinypolicy_runner(
                        args.env, algo, method, precision, args.warmup, threads, args.seed)
        chunk_speeds: dict[tuple[str, int], list[float]] = {key: [] for key in runners}
        for _ in range(args.steps // args.chunk):
            for (impl, threads), run in runners.items():
                torch.set_num_threads(threads)  # the thread count is process-wide; each runner has its own
                start = time.perf_counter()
                run(args.chunk)
                chunk_speeds[impl, threads].append(args.chunk / (time.perf_counter() - start))
        algo_rows = []
        for (impl, threads), speeds in chunk_speeds.items():
            total = len(speeds) * args.chunk / sum(args.chunk / v for v in speeds)
            algo_rows.append({"algo": algo, "impl": impl, "threads": threads, "steps_per_s": total,
                              "chunk_min": min(speeds), "chunk_max": max(speeds), "chunks": speeds})
        sb3 = {r["threads"]: r["steps_per_s"] for r in algo_rows if r["impl"] == "sb3"}
        for r in algo_rows:
            r["ratio"] = r["steps_per_s"] / sb3[r["threads"]]
            r["ratio_to_fastest_sb3"] = r["steps_per_s"] / max(sb3.values())
        rows += algo_rows

    print(f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}): {args.env}, {args.steps} timed env steps "
          f"each after {args.warmup} warm-up, interleaved in chunks of {args.chunk}")
    print(f"{'algo':5} {'implementation':23} {'threads':>7} {'env steps/s':>12} {'vs SB3':>7} {'vs fastest SB3':>15}"
          f"  chunk range")
    for r in rows:
        print(f"{r['algo']:5} {r['impl']:23} {r['threads']:7d} {r['steps_per_s']:12.1f} {r['ratio']:6.2f}x "
              f"{r['ratio_to_fastest_sb3']:14.2f}x  {r['chunk_min']:.0f}-{r['chunk_max']:.0f}")
    if args.out:
        import stable_baselines3

        result = {"env": args.env, "steps": args.steps, "warmup": args.warmup, "threads": thread_counts,
                  "chunk": args.chunk,
                  "seed": args.seed, "torch": torch.__version__, "sb3": stable_baselines3.__version__,
                  "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "date": time.strftime("%Y-%m-%d"),
                  "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
