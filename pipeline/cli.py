"""`tinypolicy` command-line interface.

A user's mistake (bad env id, bad sparsity, unreadable file) is reported on one line with
exit status 2; Ctrl-C exits with 130 and the run resumes when the same command is re-run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path

from pipeline import __version__
from pipeline.errors import UserError

DEFAULT_ENV = "Hopper-v5"


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden sizes look like 256,256, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive, got {text!r}")
    return sizes


def _add_train_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """Training flags. Without defaults (compress), unset flags leave the preset's value."""
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--algo", choices=["td3", "sac"], default=d("td3"))
    p.add_argument("--method", choices=["dense", "static", "set", "rigl", "rlx2"], default=d("rlx2"),
                   help="dense; static sparse (SS); SET (random grow); RigL (gradient grow); "
                        "RLx2 (RigL + delayed n-step target + dynamic buffer)")
    p.add_argument("--actor-sparsity", type=_sparsity, default=d(0.9), metavar="S")
    p.add_argument("--critic-sparsity", type=_sparsity, default=d(0.85), metavar="S")
    p.add_argument("--steps", dest="total_steps", type=_positive_int, default=d(300_000), metavar="N",
                   help="env steps; every schedule scales with it")
    p.add_argument("--seed", type=int, default=d(0), metavar="K")
    p.add_argument("--hidden", type=_hidden, default=d((256, 256)), metavar="W,W")
    p.add_argument("--eval-interval", type=_positive_int, default=d(5_000), metavar="N")
    p.add_argument("--eval-episodes", type=_positive_int, default=d(10), metavar="N")
    p.add_argument("--checkpoint-interval", type=_positive_int, default=d(25_000), metavar="N",
                   help="env steps between checkpoints (a killed run resumes from the last one)")
    p.add_argument("--lr", type=float, default=d(3e-4), metavar="X", help="Adam learning rate")
    p.add_argument("--threads", type=_positive_int, default=d(1), metavar="N", help="torch threads")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinypolicy", description="Compress RL control policies for robots and microcontrollers.")
    parser.add_argument("--version", action="version", version=f"tinypolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a sparse TD3/SAC agent (RLx2 and baselines)",
                       description="Train a sparse TD3 or SAC agent from scratch. Re-running the same "
                                   "command resumes from the last checkpoint in --out.")
    p.add_argument("--env", dest="env_id", required=True, metavar="ENV", help="Gymnasium env id, e.g. Hopper-v5")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    _add_train_options(p, defaults=True)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint's deterministic policy",
                       description="Print the mean and std return over N deterministic episodes as JSON.")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    p.add_argument("--env", dest="env_id", default=None, metavar="ENV",
                   help="env id (default: the one the checkpoint was trained on)")
    p.add_argument("--episodes", type=_positive_int, default=10, metavar="N")
    p.add_argument("--seed", type=int, default=1000, metavar="K", help="seed of the first episode")

    p = sub.add_parser("compress", help="run the whole pipeline on one env",
                       description="Run every pipeline stage on ENV with a preset; re-running resumes. "
                                   "Stages available now: sparse training (RLx2) and evaluation.")
    p.add_argument("--env", dest="env_id", default=DEFAULT_ENV, metavar="ENV")
    p.add_argument("--preset", default="quick", metavar="NAME", help="tiny, quick or full (default quick)")
    p.add_argument("--presets", type=Path, default=None, metavar="FILE",
                   help="a TOML file of presets (default: the packaged pipeline/presets.toml)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="default artifacts/ENV")
    _add_train_options(p, defaults=False)
    p.add_argument("--quiet", action="store_true")
    _add_ad_parser(sub)
    return parser


def _add_ad_parser(sub) -> None:
    """`tinypolicy ad collect | train | evaluate | export`: Algorithm Distillation on Dark Room."""
    p = sub.add_parser("ad", help="Algorithm Distillation: in-context RL on Dark Room",
                       description="Algorithm Distillation on Dark Room (tinypolicy/DarkRoom-v0): collect "
                                   "Q-learning histories, train the causal transformer, evaluate it in context "
                                   "on held-out goals with frozen weights, export its step function to ONNX.")
    stages = p.add_subparsers(dest="ad_command", required=True, metavar="STAGE")

    s = stages.add_parser("collect", help="learning histories of tabular Q-learning, and expert data",
                          description="Split the 81 goals into train / held-out, run Q-learning on every "
                                      "training goal with several seeds and keep every k-th episode; also roll "
                                      "out the optimal policy (data for the ED baseline). Writes histories.npz.")
    s.add_argument("--out", required=True, type=Path, metavar="DIR")
    s.add_argument("--test-goals", type=_positive_int, default=16, metavar="N", help="held-out goals (default 16)")
    s.add_argument("--seeds-per-goal", type=_positive_int, default=10, metavar="N")
    s.add_argument("--episodes", type=_positive_int, default=200, metavar="N", help="source episodes per history")
    s.add_argument("--keep-every", type=_positive_int, default=4, metavar="K", help="keep every K-th episode")
    s.add_argument("--seed", type=int, default=0, metavar="K", help="seed of the goal split and the learners")

    s = stages.add_parser("train", help="train the AD (or ED) transformer; re-running resumes",
                          description="Train the causal transformer to predict the source's actions on random "
                                      "across-episode windows. --source expert trains the ED baseline. "
                                      "Checkpoints every --checkpoint-every steps; re-running resumes.")
    s.add_argument("--data", required=True, type=Path, metavar="DIR", help="the directory `ad collect` wrote")
    s.add_argument("--out", required=True, type=Path, metavar="DIR")
    s.add_argument("--source", choices=["learning", "expert"], default="learning",
                   help="learning histories (AD, default) or expert episodes (ED)")
    for name, kind, help_text in (("steps", _positive_int, "gradient steps"), ("batch", _positive_int, "windows per step"),
                                  ("lr", float, "peak AdamW learning rate"),
                                  ("window", _positive_int, "context length T in transitions"),
                                  ("dim", _positive_int, None), ("layers", _positive_int, None),
                                  ("heads", _positive_int, None), ("ff-dim", _positive_int, None),
                                  ("checkpoint-every", _positive_int, None), ("seed", int, None)):
        s.add_argument(f"--{name}", type=kind, default=None, metavar="X", help=help_text)
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    s = stages.add_parser("evaluate", help="in-context curves on held-out goals (frozen weights)",
                          description="From an empty context: return per episode of AD, ED, the source, random and "
                                      "optimal on the held-out goals, AD on training goals and the context "
                                      "ablations. Writes curves.json, curves.csv, curves.png and context_ablation.png.")
    s.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="the AD checkpoint.pt")
    s.add_argument("--ed", type=Path, default=None, metavar="CHECKPOINT", help="the ED checkpoint.pt (optional)")
    s.add_argument("--out", required=True, type=Path, metavar="DIR")
    s.add_argument("--episodes", type=_positive_int, default=500, metavar="N", help="AD, source, random (default 500)")
    s.add_argument("--short-episodes", type=_positive_int, default=150, metavar="N",
                   help="ED, AD on training goals and the ablations (default 150)")
    s.add_argument("--seeds", type=_positive_int, default=3, metavar="N", help="evaluation seeds per goal")
    s.add_argument("--seed", type=int, default=1000, metavar="K")
    s.add_argument("--greedy", action="store_true", help="argmax actions instead of sampling")
    s.add_argument("--quiet", action="store_true")

    s = stages.add_parser("export", help="ONNX step function, checked under ONNX Runtime",
                          description="Export the [1, T] step function to ONNX and re-run the held-out in-context "
                                      "curve under ONNX Runtime next to PyTorch. Writes ad.onnx and export.json.")
    s.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    s.add_argument("--out", required=True, type=Path, metavar="DIR")
    s.add_argument("--episodes", type=_positive_int, default=100, metavar="N")
    s.add_argument("--seed", type=int, default=1000, metavar="K")
    s.add_argument("--quiet", action="store_true")


def _train_config(args: argparse.Namespace, base: dict):
    from pipeline.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in base.items() if k in names}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    return TrainConfig(**values)


def load_presets(path: Path | None) -> dict:
    try:
        text = path.read_text() if path else resources.files("pipeline").joinpath("presets.toml").read_text()
        return tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read presets {path}: {exc}") from None


def cmd_train(args) -> int:
    from pipeline.train import train

    summary = train(_train_config(args, {}), args.out, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("mean_return", "std_return", "actor_sparsity", "steps")}))
    return 0


def cmd_evaluate(args) -> int:
    from pipeline.checkpoint import load_checkpoint
    from pipeline.envs import actor_policy, evaluate_policy, make_env

    ckpt = load_checkpoint(args.checkpoint)
    actor = ckpt.build_actor()
    env_id = args.env_id or ckpt.env_id
    env = make_env(env_id)
    spaces = ckpt.data["spaces"]
    if env.observation_space.shape[0] != spaces["obs_dim"] or env.action_space.shape[0] != spaces["act_dim"]:
        raise UserError(f"{env_id} has obs/action dims {env.observation_space.shape[0]}/"
                        f"{env.action_space.shape[0]}, the checkpoint expects {spaces['obs_dim']}/{spaces['act_dim']}")
    env.close()
    returns = evaluate_policy(actor_policy(actor), env_id, args.episodes, args.seed)
    print(json.dumps({"env_id": env_id, "episodes": args.episodes, "mean_return": float(returns.mean()),
                      "std_return": float(returns.std())}))
    return 0


def cmd_compress(args) -> int:
    from pipeline.compress import compress

    presets = load_presets(args.presets)
    if args.preset not in presets:
        raise UserError(f"unknown preset {args.preset!r}; available: {', '.join(presets)}")
    out = args.out or Path("artifacts") / args.env_id
    cfg = _train_config(args, presets[args.preset])
    records = compress(cfg, out, eval_episodes=cfg.eval_episodes, progress=not args.quiet)

    print(f"\ntinypolicy compress: {args.env_id}, preset {args.preset}, artefacts in {out}")
    print(f"  {'stage':10} {'status':11} {'time':>8}  result")
    for r in records:
        s = r["summary"]
        if r["stage"] == "train":
            result = f"actor sparsity {s['actor_sparsity']:.3f}, critic {s['critic_sparsity']:.3f}"
        elif r["stage"] == "evaluate":
            result = (f"return {s['mean_return']:.1f} +- {s['std_return']:.1f} "
                      f"(random {s['random_mean_return']:.1f})")
        else:
            result = s["report"]
        print(f"  {r['stage']:10} {r['status']:11} {r['seconds']:7.1f}s  {result}")
    return 0


def cmd_ad(args) -> int:
    import torch

    from pipeline import ad

    torch.set_num_threads(1)
    if args.ad_command == "collect":
        summary = ad.collect(args.out, test_goals=args.test_goals, seeds_per_goal=args.seeds_per_goal,
                             episodes=args.episodes, keep_every=args.keep_every, seed=args.seed)
    elif args.ad_command == "train":
        cfg = ad.train_config_from({k.replace("-", "_"): v for k, v in vars(args).items()})
        summary = ad.train(args.data, args.out, cfg, progress=not args.quiet)
    elif args.ad_command == "evaluate":
        cfg = ad.EvalConfig(episodes=args.episodes, seeds=args.seeds, short_episodes=args.short_episodes,
                            seed=args.seed, greedy=args.greedy)
        result = ad.evaluate(args.checkpoint, args.out, cfg, ed_checkpoint=args.ed, progress=not args.quiet)
        summary = {k: result[k] for k in ("return_at_episode", "mean_last_50", "eval_seconds")}
    else:
        from export.ad_onnx import export_ad

        result = export_ad(args.checkpoint, args.out, episodes=args.episodes, seed=args.seed, progress=not args.quiet)
        summary = {k: v for k, v in result.items() if k != "curves"}
    print(json.dumps(summary))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compress": cmd_compress, "ad": cmd_ad}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"tinypolicy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntinypolicy: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
