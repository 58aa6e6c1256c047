"""`tinypolicy` command-line interface.

A user's mistake (bad env id, bad sparsity, unreadable file) is reported on one line with
exit status 2, an OSError (a full disk, a read-only folder) on one line with status 1;
Ctrl-C exits with 130 and the run resumes when the same command is re-run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from importlib import resources
from pathlib import Path

from tinypolicy import __version__
from tinypolicy.config import add_flags, flag_values, from_dict
from tinypolicy.export.settings import BenchConfig, EmbeddedConfig, ExportConfig
from tinypolicy.ondevice.errors import UserError, run_command
from tinypolicy.ondevice.flags import ArgumentParser, positive_int, random_seed
from tinypolicy.ondevice.retrain import add_arguments as add_retrain_arguments
from tinypolicy.ondevice.retrain import run as run_retrain
from tinypolicy.pipeline.settings import (
    BACKENDS,
    ADCollectConfig,
    ADEvalConfig,
    ADExportConfig,
    ADTrainConfig,
    DistillConfig,
    GeneraliseConfig,
    ImportConfig,
    QLearningConfig,
    TrainConfig,
)

CHECKPOINT_HELP = "a checkpoint.pt, or the run folder holding it (tinypolicy train --out)"


def _override(text: str) -> tuple[str, str, object]:
    key, sep, raw = text.partition("=")
    stage, dot, name = key.strip().partition(".")
    if not sep or not dot or not stage or not name:
        raise argparse.ArgumentTypeError(f"expected STAGE.KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set distill.init=zeros
    return stage, name, value


def _command(sub, name: str, help: str, description: str, *, inputs: tuple[tuple[str, str, str], ...] = (),
             out: bool | str = True, config: type | None = None, quiet: bool = True) -> argparse.ArgumentParser:
    """A subcommand: positional input paths (name, metavar, help), `--out DIR` (required when
    `out` is True; optional with `out` as its help text), the flags of `config`, `--quiet`."""
    p = sub.add_parser(name, help=help, description=description)
    for argument, metavar, text in inputs:
        p.add_argument(argument, type=Path, metavar=metavar, help=text)
    if out is True:
        p.add_argument("--out", required=True, type=Path, metavar="DIR")
    elif out:
        p.add_argument("--out", type=Path, default=None, metavar="DIR", help=out)
    if config is not None:
        add_flags(p, config)
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tinypolicy", description="Compress RL control policies for robots and microcontrollers.")
    parser.add_argument("--version", action="version", version=f"tinypolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "train", "train a sparse TD3/SAC agent (RLx2 and baselines)",
                 "Train a sparse TD3 or SAC agent from scratch. Re-running the same command resumes from the "
                 "last checkpoint in --out.", config=TrainConfig)
    p.add_argument("--env", dest="env_id", required=True, metavar="ENV", help="Gymnasium env id, e.g. Hopper-v5")

    p = _command(sub, "evaluate", "evaluate a checkpoint's deterministic policy",
                 "Print the mean and std return over N deterministic episodes as JSON.",
                 inputs=(("checkpoint", "CHECKPOINT", CHECKPOINT_HELP),), out=False, quiet=False)
    p.add_argument("--env", dest="env_id", default=None, metavar="ENV",
                   help="env id (default: the one the checkpoint was trained on)")
    p.add_argument("--episodes", type=positive_int, default=10, metavar="N")
    p.add_argument("--seed", type=random_seed, default=1000, metavar="K", help="seed of the first episode")

    p = _command(sub, "compress", "run the whole pipeline on one env",
                 "Run every pipeline stage on ENV with a preset: train (RLx2) -> evaluate -> export -> bench -> "
                 "embedded -> distill (HaDES) -> retrain -> report. Each stage leaves a stamp; re-running skips "
                 "finished stages and resumes an interrupted one. Work in --out done with other parameters is "
                 "refused before anything runs, unless --force or --rerun allow it.",
                 out="default artifacts/ENV")
    p.add_argument("--env", dest="env_id", default=TrainConfig.env_id, metavar="ENV",
                   help=f"Gymnasium env id (default: {TrainConfig.env_id})")
    p.add_argument("--preset", default="quick", metavar="NAME", help="tiny, quick or full (default quick)")
    p.add_argument("--from", dest="source", type=Path, default=None, metavar="CHECKPOINT",
                   help="compress this policy instead of training one (a checkpoint, e.g. of `tinypolicy import`): "
                        "it is distilled into a sparse student (DAgger); with --method (e.g. prune, rigl) a policy "
                        "with critics is fine-tuned in the env by that method instead")
    p.add_argument("--presets", type=Path, default=None, metavar="FILE",
                   help="a TOML file of presets (default: the packaged pipeline/presets.toml)")
    # A trained policy comes in by --from alone, the route that compares it by content and records it.
    add_flags(p.add_argument_group("training (an unset flag keeps the preset's value)"), TrainConfig,
              with_defaults=False, exclude=("init_from",))
    p.add_argument("--init-from", help=argparse.SUPPRESS)  # parsed only to point train's flag users at --from
    p.add_argument("--set", dest="overrides", action="append", default=[], type=_override, metavar="STAGE.KEY=VALUE",
                   help="override one stage parameter, e.g. --set distill.generations=50 (repeatable; VALUE is "
                        "TOML: 64, 0.5, \"expert\", [64,64])")
    p.add_argument("--force", action="store_true",
                   help="rerun every stage whose parameters changed (or whose outputs were edited), discarding "
                        "its earlier output in --out")
    p.add_argument("--rerun", action="append", default=[], metavar="STAGE",
                   help="rerun STAGE even if it is up to date, discarding its earlier output (repeatable)")

    _command(sub, "embedded", "build the exported C actor as Cortex-M firmware and for aarch64, and measure it",
             "Cross-compile an export bundle's C actor (sparse and dense) for each target, report the model's "
             "flash and RAM, run it under QEMU, check its actions against ONNX Runtime and count instructions "
             "per inference. Writes DIR/embedded.json and keeps the firmware in DIR/embedded/TARGET/. Needs "
             "Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm, qemu-user, "
             "gcc-aarch64-linux-gnu (make embedded-deps).",
             inputs=(("bundle", "DIR", "an export bundle (tinypolicy export)"),), out=False, config=EmbeddedConfig)

    p = _command(sub, "import", "import a policy trained elsewhere (Stable-Baselines3, a state dict, ONNX)",
                 "Write a dense tinypolicy checkpoint (DIR/checkpoint.pt, as `train` writes it) from a "
                 "Stable-Baselines3 zip (TD3, SAC, DDPG with their critics; PPO, A2C actor only), a PyTorch state "
                 "dict of an MLP actor (CleanRL's layout) or an ONNX MLP actor, so that evaluate, export, distill "
                 "--expert and compress take it. No file is unpickled: what only a pickle holds comes from flags.",
                 inputs=(("source", "SOURCE", "an SB3 model .zip, a state dict .pt/.pth or an .onnx actor"),),
                 config=ImportConfig, quiet=False)
    p.add_argument("--env", dest="env_id", required=True, metavar="ENV", help="the Gymnasium env id it acts in")

    _command(sub, "export", "export a checkpoint's actor to ONNX (fp32, int8) and C",
             "Write an export bundle: actor.onnx (dead neurons removed), actor.dense.onnx, actor.int8.onnx, "
             "actor.c/actor.h (sparse) and actor_dense.c, export.json with parity against PyTorch on rollout "
             "and extreme observations.", inputs=(("checkpoint", "CHECKPOINT", CHECKPOINT_HELP),),
             config=ExportConfig)

    _command(sub, "bench", "latency, size and return of every variant of an export bundle",
             "Measure batch-1 latency (p50/p99) of PyTorch, ONNX Runtime (dense, pruned, int8) and the C "
             "kernels, MACs, sizes and returns; writes bench.json, bench.md and bench.png.",
             inputs=(("bundle", "DIR", "an export bundle (from tinypolicy export)"),), out="default: the bundle",
             config=BenchConfig)

    p = _command(sub, "sweep", "run many training jobs (envs x methods x sparsities x seeds)",
                 "Run every job of a sweep config (TOML, see pipeline/sweep.py), locally or as Ray tasks, then "
                 "write sweep.csv, sweep.md and sweep.png with the ultimate compression ratio per env. "
                 "Re-running resumes unfinished jobs.", inputs=(("config", "CONFIG", None),), out=False)
    p.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                   help="local: one job after another in this process; ray: one Ray task per job")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="an existing Ray cluster (default: start a local one)")

    _command(sub, "distill", "distil a tiny synthetic dataset with HaDES",
             "Behaviour distillation (HaDES): evolve D state-action pairs with OpenAI-ES so that a policy "
             "trained on them by behaviour cloning does well in ENV. Writes dataset.npz/.json, fitness.csv/.png "
             "and states.png into --out; re-running the same command resumes (a larger --generations extends "
             "the run).", config=DistillConfig)

    p = _command(sub, "generalise", "retrain a distilled dataset with other architectures",
                 "Retrain policies on DATASET from fresh inits over every combination of widths, depths, "
                 "activations, BC learning rates and steps (and, with --mask, an exported actor's sparse topology on "
                 "the NumPy on-device trainer); writes the mean, the worst cell and the share of cells at 60% of "
                 "the expert, as CSV, JSON, a table and a plot.",
                 inputs=(("dataset", "DATASET", "dataset directory or its dataset.npz"),),
                 out="default DATASET_DIR/generalise", config=GeneraliseConfig)
    p.add_argument("--env", dest="env_id", required=True, metavar="ENV")

    p = sub.add_parser("retrain", help="retrain a policy from a distilled dataset (NumPy + onnx only)",
                       description="Behaviour-clone an MLP on a distilled dataset with its recipe and write an "
                                   "ONNX actor (env units in and out). Needs no torch; a robot runs the same "
                                   "as `python -m ondevice.retrain` from a copy of the ondevice/ folder.")
    add_retrain_arguments(p)
    _add_ad_parser(sub)
    return parser


def _add_ad_parser(sub) -> None:
    """`tinypolicy ad collect | train | evaluate | export`: Algorithm Distillation on Dark Room
    or Dark Key-to-Door. Collect and train flags default per env (AD_ENV_DEFAULTS), so they
    are added without defaults and `cmd_ad` fills the unset ones."""
    import dataclasses

    from tinypolicy.pipeline.settings import AD_ENV_DEFAULTS, DARK_ROOM_ID

    envs = tuple(AD_ENV_DEFAULTS)

    def add_env_flags(parser, cls: type, stage: str) -> None:
        """`cls`'s flags, unset unless given; their help names each env's default."""
        add_flags(parser, cls, with_defaults=False)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for action in parser._actions:
            if action.dest in defaults:
                values = {env: AD_ENV_DEFAULTS[env][stage].get(action.dest, defaults[action.dest]) for env in envs}
                shown = (f"{next(iter(values.values()))}" if len(set(values.values())) == 1
                         else ", ".join(f"{env.split('/')[-1]}: {value}" for env, value in values.items()))
                action.help = f"{action.help or ''} (default: {shown})".strip()

    p = sub.add_parser("ad", help="Algorithm Distillation: in-context RL on Dark Room and Dark Key-to-Door",
                       description=f"Algorithm Distillation on {' or '.join(envs)}: collect Q-learning histories, "
                                   "train the causal transformer, evaluate it in context on held-out tasks with "
                                   "frozen weights, export its step function to ONNX.")
    stages = p.add_subparsers(dest="ad_command", required=True, metavar="STAGE")
    per_env = "(flags left out take the env's defaults, tinypolicy.pipeline.settings.AD_ENV_DEFAULTS)"

    s = _command(stages, "collect", "learning histories of tabular Q-learning, and expert data",
                 "Split the env's tasks (goals; key/door pairs) into train / held-out, run Q-learning on every "
                 "training task with one or more seeds and keep every k-th episode; also roll out the optimal "
                 f"policy (data for the ED baseline). Writes histories.npz. {per_env}", quiet=False)
    s.add_argument("--env", default=DARK_ROOM_ID, choices=envs, help=f"(default: {DARK_ROOM_ID})")
    add_env_flags(s, ADCollectConfig, "collect")
    add_env_flags(s, QLearningConfig, "q_learning")

    s = _command(stages, "train", "train the AD (or ED) transformer; re-running resumes",
                 "Train the causal transformer to predict the source's actions on random across-episode "
                 "windows. --source expert trains the ED baseline. Checkpoints every --checkpoint-every steps; "
                 f"re-running resumes. {per_env}")
    s.add_argument("--data", required=True, type=Path, metavar="DIR", help="the directory `ad collect` wrote")
    add_env_flags(s, ADTrainConfig, "train")

    s = _command(stages, "evaluate", "in-context curves on held-out tasks (frozen weights)",
                 "From an empty context: return per episode of AD, ED, the source, random and optimal on the "
                 "held-out tasks, AD on training tasks and the context ablations. Writes curves.json, "
                 f"curves.csv, curves.png and context_ablation.png. {per_env}",
                 inputs=(("checkpoint", "CHECKPOINT", "the AD checkpoint.pt"),))
    add_env_flags(s, ADEvalConfig, "evaluate")
    s.add_argument("--ed", type=Path, default=None, metavar="CHECKPOINT", help="the ED checkpoint.pt (optional)")

    e = _command(stages, "export", "ONNX step function, checked under ONNX Runtime",
                 "Export the [1, T] step function to ONNX and re-run the held-out in-context curve under ONNX "
                 f"Runtime next to PyTorch. Writes ad.onnx and export.json. {per_env}",
                 inputs=(("checkpoint", "CHECKPOINT", None),))
    add_env_flags(e, ADExportConfig, "export")
    for stage in (stages.choices["train"], s, e):
        stage.add_argument("--env", default=None, choices=envs,
                           help="refuse the input unless it was collected on this env (default: the input's)")


def _config(cls: type, args: argparse.Namespace, **fixed):
    """The `cls` config the command line's flags describe."""
    return from_dict(cls, flag_values(args, cls), f"tinypolicy {args.command}", fixed=fixed)


def load_presets(path: Path | None) -> dict:
    try:
        text = path.read_text() if path else resources.files("tinypolicy.pipeline").joinpath("presets.toml").read_text()
        return tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read presets {path}: {exc}") from None


# Each command imports its stage when it runs: `tinypolicy retrain` must work where torch is
# not installed, and `tinypolicy --help` stays fast.

def cmd_train(args) -> int:
    from tinypolicy.pipeline.train import train

    summary = train(_config(TrainConfig, args, env_id=args.env_id), args.out, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("mean_return", "std_return", "actor_sparsity", "steps")}))
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from tinypolicy.checkpoint import load_checkpoint
    from tinypolicy.envs import actor_policy, evaluate_policy, require_dims

    torch.set_num_threads(1)  # batch-1 inference: more threads cost 7x the CPU on a busy machine, gain nothing

    ckpt = load_checkpoint(args.checkpoint)
    actor = ckpt.build_actor()
    env_id = args.env_id or ckpt.env_id
    require_dims(env_id, ckpt.data["spaces"], "the checkpoint")
    returns = evaluate_policy(actor_policy(actor), env_id, args.episodes, args.seed)
    mean, std = float(returns.mean()), float(returns.std())
    if not (math.isfinite(mean) and math.isfinite(std)):  # NaN is not JSON: say so instead of printing it
        raise UserError(f"{env_id} gave non-finite returns for {ckpt.path}'s policy (the simulation diverged)")
    print(json.dumps({"env_id": env_id, "episodes": args.episodes, "mean_return": mean, "std_return": std}))
    return 0


def cmd_import(args) -> int:
    from tinypolicy.pipeline.import_policy import import_policy

    print(json.dumps(import_policy(args.source, args.env_id, args.out, _config(ImportConfig, args))))
    return 0


def cmd_compress(args) -> int:
    if args.init_from is not None:
        raise UserError("compress takes the policy to start from as --from CHECKPOINT (--init-from is for train)")
    from tinypolicy.pipeline.compress import PipelineConfig, compress

    presets = load_presets(args.presets)
    if args.preset not in presets:
        raise UserError(f"unknown preset {args.preset!r}; available: {', '.join(presets)}")
    overrides: dict[str, dict] = {"train": flag_values(args, TrainConfig)}
    for stage, key, value in args.overrides:
        overrides.setdefault(stage, {})[key] = value
    config = PipelineConfig.from_preset(args.env_id, presets[args.preset], overrides, source=args.source)
    out = args.out or Path("artifacts") / args.env_id
    records = compress(config, out, progress=not args.quiet, force=args.force, rerun=args.rerun)

    origin = f", from {args.source}" if args.source else ""
    print(f"\ntinypolicy compress: {args.env_id}, preset {args.preset}{origin}, artefacts in {out}")
    print(f"  {'stage':9} {'status':11} {'time':>8}  result")
    for r in records:
        print(f"  {r['stage']:9} {r['status']:11} {r['seconds']:7.1f}s  {STAGE_RESULTS[r['stage']](r['summary'])}")
    return 0


def _embedded_result(s: dict) -> str:
    parts = [f"{t} sparse {s[t]['sparse']['flash_bytes'] / 1024:.1f} KiB flash" for t in s["targets"]
             if s[t].get("sparse", {}).get("flash_bytes")]
    return ", ".join(parts + [f"{t} skipped" for t in s["skipped"]]) or "no target"


def _parity_result(s: dict) -> str:
    """A stamped export passed its parity check: within 1e-5 of PyTorch, or within what float32
    round-off explains (a trained actor on extreme observations; PyTorch's own error from float64
    says how far). Stamps written before the errors were recorded hold only the verdict."""
    verdict = "ok" if s["parity_within_1e-5"] else "within float32 round-off"
    if "parity_max_abs_error" not in s:
        return verdict
    scale = "" if s["parity_within_1e-5"] else f"; PyTorch itself {s['parity_roundoff_scale']:.1e} from float64"
    return f"{verdict} (max error {s['parity_max_abs_error']:.1e}{scale})"


# One line of the compress summary table per stage, from the summary its stamp records.
STAGE_RESULTS = {
    "train": lambda s: f"actor sparsity {s['actor_sparsity']:.3f}, " + (
        f"return {s['mean_return']:.1f} (teacher {s['teacher']['mean_return']:.1f}, {s['teacher']['method']})"
        if "teacher" in s else f"critic {s['critic_sparsity']:.3f}, {s['steps']:,} steps"),
    "evaluate": lambda s: f"return {s['mean_return']:.1f} +- {s['std_return']:.1f} "
                          f"(random {s['random_mean_return']:.1f})",
    "export": lambda s: f"widths {s['widths']}, nonzero MACs {s['macs']['nonzero']:,} of {s['macs']['dense']:,}, "
                        f"parity {_parity_result(s)}",
    "bench": lambda s: f"C sparse {s['latency_p50_us']['c_sparse']:.2f} us: "
                       f"{s['speedup']['p50']['c_sparse_vs_fastest_dense']:.1f}x the fastest dense "
                       f"({s['speedup']['p50']['fastest_dense']}; ideal {s['speedup']['p50']['ideal']:.0f}x)",
    "embedded": _embedded_result,
    "distill": lambda s: f"D={s['size']} HaDES-{s['mode'].upper()}, fresh-init return {s['fresh_init_mean']:.1f} "
                         f"(random {s['random_policy_return']:.1f})",
    "retrain": lambda s: f"from fresh inits: return dense {s['dense']['mean_return']:.1f}, sparse-mask "
                         f"{s['sparse']['mean_return']:.1f} ({s['sparse']['sparsity']:.0%} sparse)",
    "report": lambda s: s["report"],
}


def cmd_embedded(args) -> int:
    from tinypolicy.export.bench import BENCH_MD
    from tinypolicy.export.embedded import embedded_report, summary_lines, update_bench_report, write_embedded_json

    failed = []
    for target in args.targets:
        report = embedded_report(args.bundle, target, progress=not args.quiet)
        path = write_embedded_json(args.bundle, [report])
        print("\n".join(summary_lines(report)))
        failed += [f"{target} {name}" for name, k in report["kernels"].items() if k["fits"] and not k["parity"]["ok"]]
    update_bench_report(args.bundle / BENCH_MD, args.bundle)
    print(f"wrote {path}")
    if failed:
        print(f"tinypolicy: firmware actions differ from ONNX Runtime: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    from tinypolicy.export.bundle import export_bundle

    m = export_bundle(args.checkpoint, args.out, progress=not args.quiet, **flag_values(args, ExportConfig))
    print(json.dumps({"out": str(args.out), "widths": m["widths"], "macs": m["macs"],
                      "parity_max_abs_error": max(m["parity"]["max_abs_error"].values()),
                      "parity_within_1e-5": m["parity"]["within_tolerance"],
                      "int8_max_abs_error_rollouts": m["int8"]["max_abs_error_rollouts"]}))
    return 0


def cmd_bench(args) -> int:
    from tinypolicy.export.bench import BENCH_MD, bench_bundle

    bench_bundle(args.bundle, args.out, progress=not args.quiet, **flag_values(args, BenchConfig))
    print((Path(args.out or args.bundle) / BENCH_MD).read_text())
    return 0


def cmd_sweep(args) -> int:
    from tinypolicy.pipeline.sweep import load_sweep_config, run_sweep

    config = load_sweep_config(args.config)
    run_sweep(config, args.backend, args.ray_address, progress=not args.quiet)
    print((config.out / "sweep.md").read_text(), end="")
    return 0


def cmd_distill(args) -> int:
    from tinypolicy.pipeline.distill import distill

    summary = distill(_config(DistillConfig, args), args.out, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def cmd_ad(args) -> int:
    from dataclasses import asdict

    import torch

    from tinypolicy.pipeline import ad
    from tinypolicy.pipeline.settings import AD_ENV_DEFAULTS

    def env_config(cls: type, env_id: str, stage: str):
        """The `cls` config of `stage`: the env's defaults under the flags given."""
        return from_dict(cls, AD_ENV_DEFAULTS[env_id][stage] | flag_values(args, cls),
                         f"tinypolicy ad {args.ad_command}")

    torch.set_num_threads(1)  # collect and export; train and evaluate set their --threads
    if args.ad_command == "collect":
        collect_cfg = env_config(ADCollectConfig, args.env, "collect")
        summary = ad.collect(args.out, args.env, q_cfg=env_config(QLearningConfig, args.env, "q_learning"),
                             **asdict(collect_cfg))
    elif args.ad_command == "train":
        env_id = ad.histories_env(args.data, args.env)
        summary = ad.train(args.data, args.out, env_config(ADTrainConfig, env_id, "train"), progress=not args.quiet)
    elif args.ad_command == "evaluate":
        env_id = ad.checkpoint_env_id(args.checkpoint, args.env)
        result = ad.evaluate(args.checkpoint, args.out, env_config(ADEvalConfig, env_id, "evaluate"),
                             ed_checkpoint=args.ed, progress=not args.quiet, env_id=env_id)
        summary = {k: result[k] for k in ("return_at_episode", "mean_first_100", "mean_last_50", "eval_seconds")}
    else:
        env_id = ad.checkpoint_env_id(args.checkpoint, args.env)
        result = ad.export(args.checkpoint, args.out, progress=not args.quiet, env_id=env_id,
                           **asdict(env_config(ADExportConfig, env_id, "export")))
        summary = {k: v for k, v in result.items() if k != "curves"}
    print(json.dumps(summary))
    return 0


def cmd_generalise(args) -> int:
    from tinypolicy.pipeline.generalise import generalise

    summary = generalise(args.dataset, args.env_id, args.out, progress=not args.quiet,
                         **flag_values(args, GeneraliseConfig))
    print(summary["table"])
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compress": cmd_compress, "sweep": cmd_sweep,
            "export": cmd_export, "bench": cmd_bench, "embedded": cmd_embedded,
            "distill": cmd_distill, "generalise": cmd_generalise, "retrain": run_retrain, "ad": cmd_ad,
            "import": cmd_import}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command("tinypolicy", lambda: COMMANDS[args.command](args))
    except KeyboardInterrupt:
        print("\ntinypolicy: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
