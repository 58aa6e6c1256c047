"""Export and bench several checkpoints in one go and write the results docs/BENCHMARKS.md cites.

    python -m export.bench_docs runs/hopper-td3-rlx2-s0/checkpoint.pt runs/halfcheetah-td3-rlx2-s0/checkpoint.pt

For each checkpoint (a missing one is skipped with a note): copy it (training may be
rewriting it), `export_bundle` into artifacts/export/NAME, `bench_bundle`, and copy
bench.json/.md/.png to docs/results/export_NAME.*; then print one markdown table over all.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from export.bench import BENCH_JSON, BENCH_MD, BENCH_PNG, bench_bundle
from export.bundle import export_bundle


def table(results: dict[str, tuple[dict, dict]]) -> str:
    lines = ["| actor | env steps | weight sparsity | widths dense -> pruned | MACs dense / structural / nonzero "
             "| C sparse tables | p50 µs: PyTorch / ORT dense / ORT pruned / ORT int8 / C dense / C sparse "
             "| C sparse vs ORT dense / vs C dense | return fp32 / int8 / C sparse | parity max err | int8 max err (rollouts) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (m, b) in results.items():
        lat = {k: v["p50_us"] for k, v in b["latency"].items()}
        ret = b["returns"]
        lines.append(
            f"| {name} | {m['checkpoint']['steps_done']:,} | {b['sparsity']:.3f} "
            f"| {'-'.join(map(str, m['widths']['dense']))} -> {'-'.join(map(str, m['widths']['pruned']))} "
            f"| {m['macs']['dense']:,} / {m['macs']['structural']:,} / {m['macs']['nonzero']:,} "
            f"| {m['parameter_bytes']['sparse_fp32']:,} B "
            f"| {lat['pytorch_eager']:.1f} / {lat['ort_dense']:.1f} / {lat['ort_pruned']:.1f} / {lat['ort_int8']:.1f} "
            f"/ {lat['c_dense']:.1f} / {lat['c_sparse']:.2f} "
            f"| {b['speedup']['c_sparse_vs_ort_dense']:.1f}x / {b['speedup']['c_sparse_vs_c_dense']:.1f}x "
            f"| {ret['pytorch_eager']['mean']:.1f} / {ret['ort_int8']['mean']:.1f} / {ret['c_sparse']['mean']:.1f} "
            f"| {max(m['parity']['max_abs_error'].values()):.1e} | {m['int8']['max_abs_error_rollouts']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT")
    parser.add_argument("--work", type=Path, default=Path("artifacts/export"), metavar="DIR")
    parser.add_argument("--results", type=Path, default=Path("docs/results"), metavar="DIR")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    results = {}
    for ckpt in args.checkpoints:
        if not ckpt.is_file():
            print(f"skipping {ckpt}: no such checkpoint")
            continue
        name = ckpt.parent.name  # the run folder, e.g. hopper-td3-rlx2-s0
        work = args.work / name
        work.mkdir(parents=True, exist_ok=True)
        snapshot = work / "checkpoint.pt"
        shutil.copyfile(ckpt, snapshot)
        manifest = export_bundle(snapshot, work / "bundle", episodes=args.episodes, progress=not args.quiet)
        bench = bench_bundle(work / "bundle", episodes=args.episodes, progress=not args.quiet)
        args.results.mkdir(parents=True, exist_ok=True)
        for src, suffix in ((BENCH_JSON, "json"), (BENCH_MD, "md"), (BENCH_PNG, "png")):
            shutil.copyfile(work / "bundle" / src, args.results / f"export_{name}.{suffix}")
        results[name] = (manifest, bench)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
