"""A Stable-Baselines3 reference run: a baseline for our dense TD3/SAC, or a teacher to compress.

TD3 and SAC answer one question about our dense baseline: does an independent, widely used
implementation with the same settings (256-256 networks, batch 256, lr, gamma, tau, noise, one
update per env step, the same scaled random warm-up) learn the same way on the same budget?
PPO trains an actor-only teacher for `tinypolicy compress --from` with the RL Zoo's tuned
Hopper settings (`PPO_ZOO`) or SB3's defaults (`--ppo-settings sb3`), observations and
rewards normalised by VecNormalize; its
observation statistics are saved as `obs_stats.npz` for `tinypolicy import --obs-stats`,
since VecNormalize's own file is a pickle.

Evaluation matches `tinypolicy train`: every `--eval-interval` env steps, `--eval-episodes`
deterministic episodes on seeds seed + 100, ...; the output directory gets `metrics.csv`
(step, eval_return, eval_return_std, elapsed_s), `eval.json`, the trained model, `model.zip`,
and the best-evaluated one, `best_model.zip` (with `best_obs_stats.npz` for PPO).

    python -m benchmarks.sb3_reference --env Hopper-v5 --algo td3 --steps 300000 --seed 0 \\
        --out runs/hopper-td3-sb3-s0
    python -m benchmarks.sb3_reference --env Hopper-v5 --algo ppo --seed 0 --out runs/hopper-ppo-sb3-s0
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tinypolicy.envs import evaluate_policy, make_env
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.train import Schedule, TrainConfig
from tinypolicy.tables import CsvLog

# RL Zoo (rl-baselines3-zoo, hyperparams/ppo.yml, Hopper) for 1M steps, one env; the Zoo's
# VecNormalize defaults (observations clipped at 10 standard deviations, rewards normalised).
PPO_ZOO = dict(n_steps=512, batch_size=32, n_epochs=5, learning_rate=9.80828e-05, gamma=0.999, gae_lambda=0.99,
               clip_range=0.2, ent_coef=0.00229519, vf_coef=0.835671, max_grad_norm=0.7)
PPO_ZOO_POLICY = dict(log_std_init=-2.0, ortho_init=False, net_arch=dict(pi=[256, 256], vf=[256, 256]))
PPO_ZOO_STEPS = 1_000_000
PPO_CLIP_OBS = 10.0


def sb3_ppo(env_id: str, seed: int, settings: str):
    """An SB3 PPO on a VecNormalize'd env, with the RL Zoo's Hopper settings ("zoo") or SB3's
    defaults ("sb3": the PPO paper's MuJoCo settings, a 64-64 tanh policy)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    zoo = settings == "zoo"
    venv = VecNormalize(DummyVecEnv([lambda: make_env(env_id, seed=seed)]), gamma=PPO_ZOO["gamma"] if zoo else 0.99,
                        clip_obs=PPO_CLIP_OBS)
    venv.seed(seed)
    if not zoo:
        return PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0)
    return PPO("MlpPolicy", venv, policy_kwargs=dict(PPO_ZOO_POLICY, activation_fn=torch.nn.ReLU), seed=seed,
               device="cpu", verbose=0, **PPO_ZOO)


def sb3_model(cfg: TrainConfig, env, learning_starts: int):
    """An SB3 TD3 or SAC with `cfg`'s dense hyperparameters (one update per env step)."""
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    common = dict(learning_rate=cfg.lr, buffer_size=min(cfg.buffer_capacity, cfg.total_steps),
                  learning_starts=learning_starts, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
                  train_freq=1, gradient_steps=1, policy_kwargs=dict(net_arch=list(cfg.hidden)),
                  seed=cfg.seed, device="cpu", verbose=0)
    if cfg.algo == "sac":
        return SAC("MlpPolicy", env, **common)
    act_dim = env.action_space.shape[0]
    return TD3("MlpPolicy", env, policy_delay=cfg.policy_freq, target_policy_noise=cfg.policy_noise,
               target_noise_clip=cfg.noise_clip,  # SB3 adds both noises in [-1, 1] units, as we do
               action_noise=NormalActionNoise(np.zeros(act_dim), cfg.exploration_noise * np.ones(act_dim)),
               **common)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--algo", choices=("td3", "sac", "ppo"), default="td3")
    parser.add_argument("--ppo-settings", choices=("zoo", "sb3"), default="zoo",
                        help="PPO's hyperparameters: the RL Zoo's for Hopper, or SB3's defaults (64-64 tanh)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"env steps (default: 300,000 for td3/sac, {PPO_ZOO_STEPS:,} for ppo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--learning-starts", type=int, default=None,
                        help="env steps of random actions before learning (default: as `tinypolicy train`)")
    parser.add_argument("--eval-interval", type=int, default=TrainConfig.eval_interval)
    parser.add_argument("--eval-episodes", type=int, default=TrainConfig.eval_episodes)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from stable_baselines3.common.callbacks import BaseCallback

    on_policy = args.algo == "ppo"
    steps = args.steps or (PPO_ZOO_STEPS if on_policy else 300_000)
    # TrainConfig validates the shared settings; PPO borrows only those (it has no TD3 "algo")
    cfg = TrainConfig(env_id=args.env, algo="td3" if on_policy else args.algo, method="dense", total_steps=steps,
                      seed=args.seed, eval_interval=args.eval_interval, eval_episodes=args.eval_episodes,
                      learning_starts=args.learning_starts)
    try:
        cfg.validate()
        env = make_env(cfg.env_id, seed=cfg.seed)
    except UserError as exc:
        parser.exit(2, f"sb3_reference: error: {exc}\n")
    torch.set_num_threads(args.threads)
    warmup = 0 if on_policy else Schedule.for_config(cfg).learning_starts
    model = sb3_ppo(cfg.env_id, cfg.seed, args.ppo_settings) if on_policy else sb3_model(cfg, env, warmup)
    # PPO acts on normalised observations; the statistics are frozen while evaluating
    normalise = model.get_env().normalize_obs if on_policy else (lambda obs: obs)

    args.out.mkdir(parents=True, exist_ok=True)
    metrics = CsvLog(args.out / "metrics.csv", ["step", "eval_return", "eval_return_std", "elapsed_s"])
    start = time.perf_counter()

    def evaluate() -> np.ndarray:
        return evaluate_policy(lambda obs: model.predict(normalise(obs), deterministic=True)[0], cfg.env_id,
                               cfg.eval_episodes, seed=cfg.seed + 100)

    def save_teacher(prefix: str) -> None:
        """The model (and PPO's observation statistics, which VecNormalize keeps in a pickle) as
        a teacher for `tinypolicy import` and `compress --from`."""
        model.save(args.out / f"{prefix}model.zip")
        if on_policy:
            rms = model.get_env().obs_rms
            np.savez(args.out / f"{prefix}obs_stats.npz", mean=rms.mean, var=rms.var,
                     epsilon=model.get_env().epsilon, clip_obs=PPO_CLIP_OBS)

    best = {"step": None, "mean_return": -np.inf}
    evaluation_seconds = [0.0]  # excluded from the training time, as tinypolicy train excludes its own

    class Evaluation(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % cfg.eval_interval == 0:
                evaluation_start = time.perf_counter()
                returns = evaluate()
                evaluation_seconds[0] += time.perf_counter() - evaluation_start
                metrics.write({"step": self.num_timesteps, "eval_return": float(returns.mean()),
                               "eval_return_std": float(returns.std()), "elapsed_s": time.perf_counter() - start})
                print(f"step {self.num_timesteps}: return {returns.mean():.1f}", flush=True)
                # PPO's return can collapse late in a run: the best evaluated model is the teacher a user keeps
                if returns.mean() > best["mean_return"]:
                    best.update(step=self.num_timesteps, mean_return=float(returns.mean()))
                    save_teacher("best_")
            return True

    model.learn(cfg.total_steps, callback=Evaluation())
    train_time = time.perf_counter() - start - evaluation_seconds[0]
    save_teacher("")
    returns = evaluate()
    write_json(args.out / "eval.json", {
        "env_id": cfg.env_id, "algo": args.algo, "implementation": "stable-baselines3", "seed": cfg.seed,
        **({"ppo_settings": args.ppo_settings} if on_policy else {"learning_starts": warmup}),
        "steps": cfg.total_steps, "episodes": cfg.eval_episodes,
        "mean_return": float(returns.mean()), "std_return": float(returns.std()), "returns": returns.tolist(),
        "best": best, "train_time_s": train_time, "steps_per_s": cfg.total_steps / train_time})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
