"""AD's sampling temperature, measured on training tasks only (never the held-out ones).

`tinypolicy ad evaluate` samples the model's actions from softmax(logits / T). This rolls the
frozen model out from an empty context on a random subset of its *training* tasks at each
temperature and records the per-episode return, so that an env's default temperature
(AD_ENV_DEFAULTS) is chosen without looking at the held-out tasks it is reported on:

    python -m benchmarks.ad_temperature run runs/ad-k2d-v4/ad/checkpoint-3000.pt \\
        --temperatures 1,0.7,0.5,0.35,0.25 --out docs/results/ad_k2d_temperature.json
    python -m benchmarks.ad_temperature table docs/results/ad_k2d_temperature.json

`run` writes the file after each temperature and, re-run with the same checkpoint and
settings, skips the temperatures already in it (a different checkpoint or setting in an
existing file is refused).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tinypolicy.ondevice.artefact import check_output_file, sha256_file, write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.flags import positive_int, random_seed
from tinypolicy.pipeline.ad import (
    build_model,
    checkpoint_env,
    in_context_returns,
    load_ad_checkpoint,
    torch_step_function,
)

MARKS = (1, 10, 25, 50, 100)


def temperature_list(text: str) -> list[float]:
    try:
        temperatures = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of temperatures: {text!r}") from None
    if not temperatures or min(temperatures) < 0 or len(set(temperatures)) != len(temperatures):
        raise argparse.ArgumentTypeError(f"temperatures must be distinct and >= 0: {text!r}")
    return temperatures


def run(checkpoint_path: Path, temperatures: list[float], pairs: int, episodes: int, seed: int, out: Path) -> dict:
    check_output_file(out, "--out", (checkpoint_path,))
    ckpt = load_ad_checkpoint(checkpoint_path)
    env_cls = checkpoint_env(ckpt, None, checkpoint_path)
    train_tasks = ckpt["train_goals"].numpy()
    tasks = train_tasks[np.random.default_rng(seed).permutation(len(train_tasks))[:pairs]]
    settings = {"checkpoint": str(checkpoint_path), "checkpoint_sha256": sha256_file(checkpoint_path),
                "env": env_cls.env_id, "train_step": int(ckpt["step"]), "tasks": len(tasks), "episodes": episodes,
                "seed": seed}
    result = {**settings, "curves": {}, "seconds": {}}
    if out.exists():
        try:
            result = json.loads(out.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {out}: {exc}") from None
        differs = {k: (result.get(k), v) for k, v in settings.items() if k != "checkpoint" and result.get(k) != v}
        if differs:
            raise UserError(f"{out} holds another run ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in differs.items())}); "
                            "give another --out")
    torch.set_num_threads(1)
    model = build_model(ckpt)
    step_fn = torch_step_function(model)
    for temperature in temperatures:
        key = f"{temperature:g}"
        if key in result["curves"]:
            continue
        started = time.time()
        curve = in_context_returns(step_fn, env_cls(tasks), episodes, model.cfg.window, seed,
                                   temperature=temperature, progress=True, desc=f"T={key}").mean(0)
        result["curves"][key] = [round(float(v), 3) for v in curve]
        result["seconds"][key] = round(time.time() - started, 1)
        write_json(out, result)
    return result


def table(result: dict) -> str:
    marks = [e for e in MARKS if e <= result["episodes"]]
    lines = ["| temperature | " + " | ".join(f"ep. {e}" for e in marks) + f" | mean 1-{result['episodes']} |",
             "|---:|" + "---:|" * (len(marks) + 1)]
    for key, curve in sorted(result["curves"].items(), key=lambda item: -float(item[0])):
        cells = [f"{curve[e - 1]:.2f}" for e in marks] + [f"{np.mean(curve):.2f}"]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", f"{result['env']}: {result['tasks']} training tasks x 1 seed (seed {result['seed']}), "
              f"AD checkpoint of training step {result['train_step']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="roll the model out on training tasks at each temperature")
    r.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    r.add_argument("--temperatures", type=temperature_list, required=True, metavar="T,...")
    r.add_argument("--pairs", type=positive_int, default=40, metavar="N", help="training tasks (default: 40)")
    r.add_argument("--episodes", type=positive_int, default=100, metavar="N", help="(default: 100)")
    r.add_argument("--seed", type=random_seed, default=7, metavar="K", help="task subset and sampling (default: 7)")
    r.add_argument("--out", type=Path, required=True, metavar="FILE")
    t = commands.add_parser("table", help="print the Markdown table of a run's file")
    t.add_argument("file", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            result = run(args.checkpoint, args.temperatures, args.pairs, args.episodes, args.seed, args.out)
            print(table(result), end="")
        else:
            try:
                result = json.loads(args.file.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot read {args.file}: {exc}") from None
            print(table(result), end="")
    except UserError as exc:
        parser.exit(2, f"ad_temperature: error: {exc}\n")
    except KeyError as exc:
        parser.exit(2, f"ad_temperature: error: {exc} missing (not a file of `ad_temperature run`)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
