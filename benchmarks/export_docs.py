"""The export benchmark behind docs/BENCHMARKS.md, on the actors committed under docs/results/actors/.

    python -m benchmarks.export_docs run                  # export + bench every committed actor
    python -m benchmarks.export_docs run hopper-rlx2-98   # or some of them
    python -m benchmarks.export_docs table                # the docs tables, from docs/results/export_*.json
    python -m benchmarks.export_docs save-actor runs/hopper-td3-rlx2-a98-c95-fp32-s0 hopper-rlx2-98
    python -m benchmarks.export_docs untrained HalfCheetah-v5 0.90 halfcheetah-untrained-90

A benchmark actor is an actor-only checkpoint, docs/results/actors/NAME/actor.pt (a few
hundred KB: the actor's weights and masks, its config and spaces, no critic, optimiser
or replay state), with actor.json beside it saying where it came from. `save-actor` writes
one from a training checkpoint (or its run folder) and copies the run's eval.json;
`untrained` writes an actor at RLx2's initialisation (ER random masks, re-initialised
weights: right shapes, meaningless returns), for development while training runs.

`run` exports each actor (artifacts/export/NAME/bundle), benches it and writes
docs/results/export_NAME.json (bench.json), export_NAME.export.json (the bundle's
export.json) and export_NAME.{md,png}; `table` prints the markdown the docs show, from
those files only.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from tinypolicy.checkpoint import load_checkpoint, save_checkpoint
from tinypolicy.envs import env_spaces, make_env
from tinypolicy.export.bench import BENCH_JSON, BENCH_MD, BENCH_PNG, C_VARIANTS, LABELS, bench_bundle
from tinypolicy.export.bundle import MANIFEST, export_bundle
from tinypolicy.export.c_codegen import int8_steps_apart
from tinypolicy.models import make_actor, sparsify
from tinypolicy.ondevice.artefact import sha256_file, write_json
from tinypolicy.ondevice.errors import UserError

ACTORS = Path("docs/results/actors")
RESULTS = Path("docs/results")
ACTOR_FILE, ACTOR_INFO = "actor.pt", "actor.json"


def committed_actors(root: Path = ACTORS, names: list[str] | None = None) -> dict[str, Path]:
    """NAME -> actor.pt of the committed benchmark actors (all, or `names`)."""
    found = {p.parent.name: p for p in sorted(root.glob(f"*/{ACTOR_FILE}"))}
    missing = [n for n in names or () if n not in found]
    if missing:
        raise UserError(f"no committed actor {', '.join(missing)} under {root} (have: {', '.join(found) or 'none'})")
    return {n: found[n] for n in names} if names else found


def actor_info(actor: Path) -> dict:
    info = actor.with_name(ACTOR_INFO)
    return json.loads(info.read_text()) if info.is_file() else {}


def save_actor(checkpoint: Path, name: str, root: Path = ACTORS) -> Path:
    """Write root/NAME/actor.pt, the actor-only checkpoint of a training checkpoint, and
    actor.json (its source, hash and, when the run folder has one, eval.json)."""
    ckpt = load_checkpoint(checkpoint)
    ckpt.build_actor()  # refuses NaN weights and weights outside the mask before anything is written
    out = root / name
    if (out / ACTOR_FILE).exists():
        raise UserError(f"{out / ACTOR_FILE} exists; remove it first to replace that benchmark actor")
    out.mkdir(parents=True, exist_ok=True)
    data = {key: ckpt.data[key] for key in ("config", "spaces", "steps_done", "actor")}
    save_checkpoint(out / ACTOR_FILE, data)
    evaluation = ckpt.path.with_name("eval.json")
    write_json(out / ACTOR_INFO, {
        "trained": True, "source": str(ckpt.path.resolve()), "source_sha256": sha256_file(ckpt.path),
        "env_id": ckpt.env_id, "steps_done": ckpt.steps_done, "method": ckpt.config.get("method"),
        "eval": json.loads(evaluation.read_text()) if evaluation.is_file() else None})
    return out / ACTOR_FILE


def untrained_checkpoint(env_id: str, sparsity: float, path: Path, seed: int = 0) -> Path:
    """An actor-only checkpoint of a TD3 actor (256-256) with RLx2's initial topology, never trained."""
    env = make_env(env_id)
    spaces = env_spaces(env)
    env.close()
    torch.manual_seed(seed)  # the weights' re-initialisation draws from the global generator
    actor = make_actor("td3", spaces["obs_dim"], spaces["act_dim"], [256, 256], spaces["action_low"],
                       spaces["action_high"])
    sparsify(actor, sparsity, False, torch.Generator().manual_seed(seed))
    config = {"env_id": env_id, "algo": "td3", "method": f"untrained ER masks, sparsity {sparsity}",
              "hidden": [256, 256], "seed": seed}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"config": config, "spaces": spaces, "steps_done": 0, "actor": actor.state_dict()})
    write_json(path.with_name(ACTOR_INFO), {"trained": False, "env_id": env_id, "sparsity": sparsity, "seed": seed,
                                            "steps_done": 0, "method": config["method"]})
    return path


def run(names: list[str] | None, work: Path, results: Path, episodes: int, progress: bool,
        root: Path = ACTORS) -> dict[str, tuple[dict, dict, dict]]:
    out = {}
    for name, actor in committed_actors(root, names).items():
        bundle = work / name / "bundle"
        manifest = export_bundle(actor, bundle, episodes=episodes, progress=progress)
        bench = bench_bundle(bundle, episodes=episodes, progress=progress)
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle / BENCH_JSON, results / f"export_{name}.json")
        shutil.copyfile(bundle / MANIFEST, results / f"export_{name}.export.json")
        for src, suffix in ((BENCH_MD, "md"), (BENCH_PNG, "png")):
            shutil.copyfile(bundle / src, results / f"export_{name}.{suffix}")
        out[name] = (manifest, bench, actor_info(actor))
    return out


def results_in(results: Path, root: Path = ACTORS) -> dict[str, tuple[dict, dict, dict]]:
    """(export.json, bench.json, actor.json) of every benched actor under `results`."""
    found = {}
    for bench in sorted(results.glob("export_*.export.json")):
        name = bench.name.removeprefix("export_").removesuffix(".export.json")
        info = root / name / ACTOR_INFO
        found[name] = (json.loads(bench.read_text()), json.loads(bench.with_name(f"export_{name}.json").read_text()),
                       json.loads(info.read_text()) if info.is_file() else {})
    return found


def _variant_cell(b: dict, name: str, key: str = "p50_us") -> str:
    lat = b["latency"].get(name)
    return f"{lat[key]:.2f}" if lat and key in lat else "n/a"


def table(results: dict[str, tuple[dict, dict, dict]]) -> str:
    """Three markdown tables over actors: structure and size; latency of every variant;
    the sparse kernel against the fastest dense one, with returns and parity."""
    size = ["| actor | trained | env steps | weight sparsity | widths dense -> pruned | MACs dense / nonzero "
            "| bytes: dense fp32 / C sparse fp32 / C sparse int8 / actor.int8.onnx |",
            "|---|---|---:|---:|---|---:|---:|"]
    names = ("c_sparse", "c_int8", "c_dense", "emx_dense", "ort_dense", "ort_pruned", "ort_int8", "pytorch_eager")
    speed = ["| actor | " + " | ".join(f"{LABELS[n]}" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    ratio = ["| actor | fastest dense (p50) | C sparse vs fastest dense: p50 / chained latency / untimed loop (C "
             "kernels) | ideal (dense / nonzero MACs) | half of ideal met (chained latency) "
             "| return: PyTorch / C sparse / C int8 "
             "| parity max err C vs PyTorch | C int8 vs ORT int8 (steps) |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for name, (m, b, info) in results.items():
        by, files = m["parameter_bytes"], m["files"]
        trained = "yes" if info.get("trained") else "**no** (untrained stand-in)"
        size.append(
            f"| {name} | {trained} | {m['checkpoint']['steps_done']:,} | {b['sparsity']:.3f} "
            f"| {'-'.join(map(str, m['widths']['dense']))} -> {'-'.join(map(str, m['widths']['pruned']))} "
            f"| {m['macs']['dense']:,} / {m['macs']['nonzero']:,} "
            f"| {by['dense_fp32']:,} / {by['sparse_fp32']:,} / {by['sparse_int8']:,} / {files['onnx_int8']['bytes']:,} |")
        speed.append(f"| {name} | " + " | ".join(
            _variant_cell(b, n) + (f" ({_variant_cell(b, n, 'chained_mean_us')} / {_variant_cell(b, n, 'loop_mean_us')})"
                                   if n in C_VARIANTS else "")
            for n in names) + " |")
        p50, chained, loop = (b["speedup"][k] for k in ("p50", "c_chained_mean", "c_loop_mean"))
        ret = b["returns"]
        c8 = m["int8"]["c_kernel_vs_onnx"]
        c8_steps = int8_steps_apart(c8["max_abs_error"], c8["quantisation_step"])
        c8_cell = "n/a (not quantised)" if c8_steps is None else f"{c8_steps:.2f}"
        ratio.append(
            f"| {name} | {LABELS[p50['fastest_dense']]} | {p50['c_sparse_vs_fastest_dense']:.1f}x / "
            f"{chained['c_sparse_vs_fastest_dense']:.1f}x / {loop['c_sparse_vs_fastest_dense']:.1f}x "
            f"| {chained['ideal']:.1f}x | {'yes' if chained['goal_half_of_ideal_met'] else '**no**'} "
            f"| {ret['pytorch_eager']['mean']:.1f} / {ret['c_sparse']['mean']:.1f} / {ret['c_int8']['mean']:.1f} "
            f"| {max(m['parity']['max_abs_error'][k] for k in ('c_sparse', 'c_dense')):.1e} "
            f"| {c8_cell} |")
    note = ("Latency cells: p50 µs of single calls (C kernels timed inside C, two clock reads included); in "
            "parentheses for the C kernels, clock-free loop means: chained (each call's observation depends on "
            "the previous call's action, so calls cannot overlap: the latency) / untimed (independent calls, "
            "which the core may overlap: a throughput); ONNX Runtime and PyTorch are called from Python (their Identity-model overhead is in "
            "each export_NAME.md).")
    return "\n".join(size) + "\n\n" + "\n".join(speed) + "\n\n" + note + "\n\n" + "\n".join(ratio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="export and bench committed actors, write docs/results/export_*")
    p_run.add_argument("names", nargs="*", metavar="NAME")
    p_run.add_argument("--work", type=Path, default=Path("artifacts/export"), metavar="DIR")
    p_run.add_argument("--episodes", type=int, default=10)
    p_run.add_argument("--quiet", action="store_true")
    p_table = sub.add_parser("table", help="print the docs tables from docs/results/export_*.json")
    for sub_parser in (p_run, p_table):  # one folder of results per machine measured
        sub_parser.add_argument("--results", type=Path, default=RESULTS, metavar="DIR",
                                help=f"where the export_*.json files are (default {RESULTS})")
    p_save = sub.add_parser("save-actor", help="commit-ready actor-only checkpoint of a training checkpoint")
    p_save.add_argument("checkpoint", type=Path)
    p_save.add_argument("name")
    p_untrained = sub.add_parser("untrained", help="an untrained stand-in actor (RLx2's initial masks)")
    p_untrained.add_argument("env_id")
    p_untrained.add_argument("sparsity", type=float)
    p_untrained.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "save-actor":
            print(f"wrote {save_actor(args.checkpoint, args.name)}")
        elif args.command == "untrained":
            print(f"wrote {untrained_checkpoint(args.env_id, args.sparsity, ACTORS / args.name / ACTOR_FILE)}")
        elif args.command == "run":
            run(args.names or None, args.work, args.results, args.episodes, not args.quiet)
            print(table(results_in(args.results)))
        else:
            print(table(results_in(args.results)))
    except UserError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
