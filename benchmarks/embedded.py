"""Embedded-target benchmark: flash, RAM, instructions per inference and per multiply-accumulate,
and ONNX Runtime parity of the committed benchmark actors (docs/results/actors/, see
benchmarks.export_docs) on Cortex-M4 (STM32F405), Cortex-M7 (STM32F746) and aarch64 (Pi 4
class), for the sparse float kernel, the dense reference and the int8 sparse kernel.

    python -m benchmarks.embedded run --out docs/results/embedded.json
    python -m benchmarks.embedded table docs/results/embedded.json     # the docs table, from the file

Each actor goes through `tinypolicy export`'s code (bundles under --work), then
`embedded_report` for every target.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.export_docs import ACTORS, actor_info, committed_actors
from tinypolicy.export.bundle import export_bundle, load_bundle
from tinypolicy.export.embedded import TARGETS, embedded_report, write_embedded_json
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.ondevice.errors import UserError

# Goals of issue 22 on Cortex-M, in instructions per MAC (nonzero MACs for the sparse kernel).
GOALS = {"sparse": 4.0, "dense": 3.0}
INT8_FLASH_GOAL_BYTES = 16 * 1024


def _kernel_row(kernel: dict) -> dict:
    if not kernel["fits"]:
        return {"fits": False, "message": kernel["message"]}
    return {"fits": True, "flash_bytes": kernel["flash_bytes"], "ram_bytes": kernel["ram_bytes"],
            "static_ram_bytes": kernel["static_ram_bytes"], "stack_bytes": kernel["stack_bytes"],
            "instructions_median": kernel["instructions"]["median"],
            "instructions_min": kernel["instructions"]["min"], "instructions_max": kernel["instructions"]["max"],
            "instructions_per_mac": kernel["instructions"]["per_mac"], "macs": kernel["instructions"]["macs"],
            "macs_counted": kernel["instructions"]["macs_counted"],
            "estimate_us": kernel["estimate"]["microseconds"], "estimate_assumption": kernel["estimate"]["assumption"],
            "parity_max_abs_diff": kernel["parity"]["max_abs_diff"], "parity_ok": kernel["parity"]["ok"],
            "parity_reference": kernel["parity"]["reference"]}


def _cells(kernels: list[dict], key: str, fmt) -> str:
    return " / ".join(fmt(k[key]) if k["fits"] else "does not fit" for k in kernels)


def markdown(results: dict) -> str:
    """One row per actor and target: the three kernels' flash, RAM, instructions per
    inference and per MAC, and parity; then the goals, met or not."""
    kernels = ("sparse", "int8", "dense")
    lines = ["| actor | trained | target | flash KiB sparse / int8 / dense | RAM KiB sparse / int8 / dense "
             "| instructions / inference sparse / int8 / dense (exact, median) | instructions per MAC: sparse "
             "(nonzero) / int8 (nonzero) / dense (all) | sparse µs (estimate) | parity: max abs diff vs ORT "
             "(float kernels; int8 vs actor.int8.onnx) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    goals = []
    for name, actor in results["actors"].items():
        for target, report in actor["targets"].items():
            ks = [report["kernels"][k] for k in kernels]
            s = ks[0]
            lines.append(
                f"| {name} | {'yes' if actor['trained'] else '**no**'} | {target} "
                f"| {_cells(ks, 'flash_bytes', lambda v: f'{v / 1024:.1f}')} "
                f"| {_cells(ks, 'ram_bytes', lambda v: f'{v / 1024:.2f}')} "
                f"| {_cells(ks, 'instructions_median', lambda v: f'{v:,}')} "
                f"| {_cells(ks, 'instructions_per_mac', lambda v: f'{v:.2f}')} "
                f"| {s['estimate_us'][0]:.0f}-{s['estimate_us'][1]:.0f} "
                f"| {_cells(ks, 'parity_max_abs_diff', lambda v: f'{v:.1e}')} |")
            if target.startswith("cortex-m"):
                for kernel, goal in GOALS.items():
                    k = report["kernels"][kernel]
                    if k["fits"]:
                        met = k["instructions_per_mac"] <= goal
                        goals.append(f"- {name}, {target}, {kernel}: {k['instructions_per_mac']:.2f} instructions "
                                     f"per MAC, goal at most {goal:g}: {'met' if met else '**not met**'}")
                k = report["kernels"]["int8"]
                sparsity = 1 - actor["macs"]["nonzero"] / actor["macs"]["dense"]
                if k["fits"] and actor["env_id"].startswith("HalfCheetah") and sparsity >= 0.945:
                    met = k["flash_bytes"] <= INT8_FLASH_GOAL_BYTES
                    goals.append(f"- {name}, {target}, int8 flash {k['flash_bytes'] / 1024:.1f} KiB, goal (95% "
                                 f"HalfCheetah) at most 16 KiB: {'met' if met else '**not met**'}")
    return "\n".join(lines) + "\n\n" + "\n".join(goals)


def run(names: list[str] | None, work: Path, targets: list[str], parity_samples: int, progress: bool) -> dict:
    results = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               "machine": platform.processor() or platform.machine(), "actors": {}}
    for name, actor_path in committed_actors(ACTORS, names).items():
        info = actor_info(actor_path)
        # Exported afresh every time: a bundle left by an earlier run may hold older generated C.
        export_bundle(actor_path, work / name / "bundle", parity_samples=parity_samples, episodes=1,
                      progress=progress)
        manifest = load_bundle(work / name / "bundle")
        actor = {"env_id": manifest["env_id"], "trained": bool(info.get("trained")),
                 "checkpoint_steps": manifest["checkpoint"]["steps_done"],
                 "layer_sparsity": [round(l["sparsity"], 4) for l in manifest["layers"]],
                 "widths": manifest["widths"], "macs": manifest["macs"], "parameter_bytes": manifest["parameter_bytes"],
                 "targets": {}}
        for target in targets:
            report = embedded_report(manifest["dir"], target, progress=progress)
            write_embedded_json(manifest["dir"], [report])
            actor["targets"][target] = {
                "part": report["part"], "compiler": report["compiler"], "cflags": report["cflags"],
                "emulator": report["emulator"], "harness_only": report["harness_only"],
                "kernels": {k: _kernel_row(v) for k, v in report["kernels"].items()}}
        results["actors"][name] = actor
        print(f"{name}: done", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="measure the committed actors on every target")
    p_run.add_argument("names", nargs="*", metavar="NAME")
    p_run.add_argument("--out", type=Path, default=Path("docs/results/embedded.json"))
    p_run.add_argument("--work", type=Path, default=Path("artifacts/bench-embedded"), help="bundles and firmware")
    p_run.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    p_run.add_argument("--parity-samples", type=int, default=2000, help="export's parity observations")
    p_run.add_argument("--quiet", action="store_true")
    p_table = sub.add_parser("table", help="print the docs table of a results file")
    p_table.add_argument("results", type=Path, nargs="?", default=Path("docs/results/embedded.json"))
    args = parser.parse_args(argv)
    try:
        if args.command == "table":
            if not args.results.is_file():
                raise UserError(f"{args.results} does not exist; run `python -m benchmarks.embedded run` first")
            print(markdown(json.loads(args.results.read_text())))
            return 0
        torch.set_num_threads(1)
        results = run(args.names or None, args.work, args.targets, args.parity_samples, not args.quiet)
    except UserError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
