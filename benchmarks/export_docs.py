"""Export and bench several checkpoints in one go and write the results docs/BENCHMARKS.md cites.

    python -m benchmarks.export_docs runs/hopper-td3-rlx2-s0/checkpoint.pt runs/halfcheetah-td3-rlx2-s0/checkpoint.pt

For each checkpoint (a missing one is skipped with a note): copy it (training may be
rewriting it), `export_bundle` into artifacts/export/NAME, `bench_bundle`, and copy
bench.json/.md/.png to docs/results/export_NAME.*; then print one markdown table over all.
`--untrained ENV:SPARSITY` adds an actor at RLx2's initialisation (ER random masks,
re-initialised weights, no training): latency and size at a chosen sparsity, returns
meaningless.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from tinypolicy.checkpoint import save_checkpoint
from tinypolicy.envs import make_env
from tinypolicy.export.bench import BENCH_JSON, BENCH_MD, BENCH_PNG, bench_bundle
from tinypolicy.export.bundle import MANIFEST, export_bundle
from tinypolicy.models import TwinCritic, make_actor, sparsify


def table(results: dict[str, tuple[dict, dict]]) -> str:
    """Two markdown tables (structure and size; latency, return and parity) over actors."""
    size = ["| actor | env steps | weight sparsity | widths dense -> pruned | MACs dense / structural / nonzero "
            "| bytes: dense fp32 / C sparse tables / actor.onnx / actor.int8.onnx |",
            "|---|---:|---:|---|---:|---:|"]
    speed = ["| actor | p50 µs: PyTorch / ORT dense / ORT pruned / ORT int8 / C dense / C sparse "
             "| C sparse vs ORT dense / vs C dense | return: PyTorch / ORT int8 / C sparse "
             "| parity max err (rollouts / all) | int8 max err (rollouts) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, (m, b) in results.items():
        lat = {k: v["p50_us"] for k, v in b["latency"].items()}
        ret, by, files = b["returns"], m["parameter_bytes"], m["files"]
        size.append(
            f"| {name} | {m['checkpoint']['steps_done']:,} | {b['sparsity']:.3f} "
            f"| {'-'.join(map(str, m['widths']['dense']))} -> {'-'.join(map(str, m['widths']['pruned']))} "
            f"| {m['macs']['dense']:,} / {m['macs']['structural']:,} / {m['macs']['nonzero']:,} "
            f"| {by['dense_fp32']:,} / {by['sparse_fp32']:,} / {files['onnx']['bytes']:,} "
            f"/ {files['onnx_int8']['bytes']:,} |")
        speed.append(
            f"| {name} | {lat['pytorch_eager']:.1f} / {lat['ort_dense']:.1f} / {lat['ort_pruned']:.1f} "
            f"/ {lat['ort_int8']:.1f} / {lat['c_dense']:.1f} / {lat['c_sparse']:.2f} "
            f"| {b['speedup']['c_sparse_vs_ort_dense']:.1f}x / {b['speedup']['c_sparse_vs_c_dense']:.1f}x "
            f"| {ret['pytorch_eager']['mean']:.1f} / {ret['ort_int8']['mean']:.1f} / {ret['c_sparse']['mean']:.1f} "
            f"| {max(m['parity']['max_abs_error_rollouts'].values()):.1e} "
            f"/ {max(m['parity']['max_abs_error'].values()):.1e} "
            f"| {m['int8']['max_abs_error_rollouts']:.3f} |")
    return "\n".join(size) + "\n\n" + "\n".join(speed)


def results_in(work: Path) -> dict[str, tuple[dict, dict]]:
    """(export.json, bench.json) of every benched bundle under `work`."""
    found = {}
    for bench in sorted(work.glob(f"*/bundle/{BENCH_JSON}")):
        bundle = bench.parent
        found[bundle.parent.name] = (json.loads((bundle / MANIFEST).read_text()), json.loads(bench.read_text()))
    return found


def untrained_checkpoint(env_id: str, sparsity: float, path: Path, seed: int = 0) -> Path:
    """A checkpoint of a TD3 actor (256-256) with RLx2's initial topology, never trained."""
    env = make_env(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    env.close()
    torch.manual_seed(seed)  # the weights' re-initialisation draws from the global generator
    actor = make_actor("td3", obs_dim, act_dim, [256, 256], low, high)
    sparsify(actor, sparsity, False, torch.Generator().manual_seed(seed))
    spaces = {"obs_dim": obs_dim, "act_dim": act_dim, "action_low": low.tolist(), "action_high": high.tolist()}
    config = {"env_id": env_id, "algo": "td3", "method": f"untrained ER masks, sparsity {sparsity}",
              "hidden": [256, 256], "seed": seed}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"config": config, "spaces": spaces, "steps_done": 0, "actor": actor.state_dict(),
                           "critic": TwinCritic(obs_dim, act_dim, [256, 256]).state_dict()})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, metavar="CHECKPOINT")
    parser.add_argument("--work", type=Path, default=Path("artifacts/export"), metavar="DIR")
    parser.add_argument("--results", type=Path, default=Path("docs/results"), metavar="DIR")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--untrained", action="append", default=[], metavar="ENV:SPARSITY",
                        help="also an untrained actor with RLx2's initial masks, e.g. Hopper-v5:0.95")
    parser.add_argument("--table-only", action="store_true",
                        help="print the tables of what is already benched under --work, run nothing")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.table_only:
        print(table(results_in(args.work)))
        return 0
    for spec in args.untrained:
        env_id, sparsity = spec.rsplit(":", 1)
        name = f"{env_id.lower()}-untrained-{sparsity}"
        path = args.work / "untrained" / name / "checkpoint.pt"
        args.checkpoints.append(untrained_checkpoint(env_id, float(sparsity), path))

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
