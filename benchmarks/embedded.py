"""Embedded-target benchmark: flash, RAM, instructions per inference and ORT parity of
exported actors on Cortex-M4 (STM32F405), Cortex-M7 (STM32F746) and aarch64 (Pi 4 class).

Actors of the benchmark's real shapes: HalfCheetah-v5 (17-256-256-6) at 90% and 95% and
Hopper-v5 (11-256-256-3) at 98% actor sparsity, with training's ER random topology and
initial weights (`benchmarks.export_docs.untrained_checkpoint`), untrained: footprint and instruction counts
depend only on the sizes of the sparsity pattern, and parity is checked all the same.
Trained checkpoints are added with --checkpoint NAME=PATH (copied first, since training
may still be writing them). Each actor goes through `tinypolicy export`'s code, then
`embedded_report` for every target. Re-running reuses finished export bundles.

    python -m benchmarks.embedded --out docs/results/embedded.json \\
        --checkpoint hopper-rlx2=/work/main/runs/hopper-td3-rlx2-s0/checkpoint.pt
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from benchmarks.export_docs import untrained_checkpoint
from tinypolicy.export.bundle import export_bundle, load_bundle
from tinypolicy.export.embedded import TARGETS, embedded_report, write_embedded_json
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.ondevice.errors import UserError

UNTRAINED = (("halfcheetah-90", "HalfCheetah-v5", 0.90), ("halfcheetah-95", "HalfCheetah-v5", 0.95),
             ("hopper-98", "Hopper-v5", 0.98))


def exported(checkpoint: Path, bundle: Path, parity_samples: int, progress: bool) -> dict:
    try:
        return load_bundle(bundle)
    except UserError:  # not exported yet, or interrupted: export (again)
        export_bundle(checkpoint, bundle, parity_samples=parity_samples, episodes=1, progress=progress)
        return load_bundle(bundle)


def _kernel_row(kernel: dict) -> dict:
    if not kernel["fits"]:
        return {"fits": False, "message": kernel["message"]}
    return {"fits": True, "flash_bytes": kernel["flash_bytes"], "ram_bytes": kernel["ram_bytes"],
            "static_ram_bytes": kernel["static_ram_bytes"], "stack_bytes": kernel["stack_bytes"],
            "instructions_median": kernel["instructions"]["median"],
            "instructions_min": kernel["instructions"]["min"], "instructions_max": kernel["instructions"]["max"],
            "estimate_us": kernel["estimate"]["microseconds"], "estimate_assumption": kernel["estimate"]["assumption"],
            "parity_max_abs_diff": kernel["parity"]["max_abs_diff"], "parity_ok": kernel["parity"]["ok"]}


def markdown(results: dict) -> str:
    """One row per actor and target: sparse vs dense flash, RAM and instructions, and parity."""
    lines = ["| actor | target | flash KiB sparse / dense | RAM KiB sparse / dense | instructions / inference "
             "sparse / dense (exact, median) | dense/sparse | sparse µs (estimate) | parity: max abs diff vs ORT |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, actor in results["actors"].items():
        for target, report in actor["targets"].items():
            s, d = report["kernels"]["sparse"], report["kernels"]["dense"]
            if not d["fits"]:
                lines.append(f"| {name} | {target} | {s['flash_bytes'] / 1024:.1f} / does not fit | | | | | |")
                continue
            lines.append(
                f"| {name} | {target} | {s['flash_bytes'] / 1024:.1f} / {d['flash_bytes'] / 1024:.1f} | "
                f"{s['ram_bytes'] / 1024:.2f} / {d['ram_bytes'] / 1024:.2f} | "
                f"{s['instructions_median']:,} / {d['instructions_median']:,} | "
                f"{report['dense_over_sparse']['instructions']:.1f}x | "
                f"{s['estimate_us'][0]:.0f}-{s['estimate_us'][1]:.0f} | "
                f"{max(s['parity_max_abs_diff'], d['parity_max_abs_diff']):.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results/embedded.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-embedded"), help="bundles and firmware")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="a trained checkpoint to include (repeatable)")
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--parity-samples", type=int, default=2000, help="export's parity observations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    jobs = []
    for name, env_id, sparsity in UNTRAINED:
        ckpt = args.work / name / "actor.pt"
        if not ckpt.exists():
            torch.manual_seed(args.seed)  # the initial weights (the masks are seeded inside)
            untrained_checkpoint(env_id, sparsity, ckpt, args.seed)
        jobs.append((name, ckpt, False))
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        copy = args.work / name / "checkpoint.pt"
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
        jobs.append((name, copy, True))

    results = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": platform.processor() or
               platform.machine(), "seed": args.seed, "actors": {}}
    for name, ckpt, trained in jobs:
        manifest = exported(ckpt, args.work / name / "bundle", args.parity_samples, not args.quiet)
        actor = {"env_id": manifest["env_id"], "trained": trained, "checkpoint_steps": manifest["checkpoint"]["steps_done"],
                 "layer_sparsity": [round(l["sparsity"], 4) for l in manifest["layers"]],
                 "widths": manifest["widths"], "macs": manifest["macs"], "parameter_bytes": manifest["parameter_bytes"],
                 "targets": {}}
        for target in args.targets:
            report = embedded_report(manifest["dir"], target, progress=not args.quiet)
            write_embedded_json(manifest["dir"], [report])
            actor["targets"][target] = {
                "part": report["part"], "compiler": report["compiler"], "cflags": report["cflags"],
                "emulator": report["emulator"], "harness_only": report["harness_only"],
                "dense_over_sparse": report.get("dense_over_sparse"),
                "kernels": {k: _kernel_row(v) for k, v in report["kernels"].items()}}
        results["actors"][name] = actor
        print(f"{name}: done", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(markdown(results))
    return 0


def print_table(path: Path) -> None:
    """The markdown table of a results file written by main()."""
    print(markdown(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    raise SystemExit(main())
