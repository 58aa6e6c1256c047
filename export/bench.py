"""`tinypolicy bench`: batch-1 latency, size and return of every variant of an export bundle.

All variants are measured in one process, interleaved round by round, on the same
observations (the bundle's rollout observations, cycled), single-threaded:

    pytorch_eager   the masked dense actor as a torch module (torch.inference_mode)
    ort_dense       actor.dense.onnx in ONNX Runtime
    ort_pruned      actor.onnx (dead neurons removed)
    ort_int8        actor.int8.onnx
    c_sparse        tp_actor (sparse), timed inside C and through ctypes
    c_dense         tp_actor_dense, the vectorised dense kernel, likewise
    c_int8          tp_actor_int8, the int8 sparse kernel, likewise
    emx_dense       emx-onnx-cgen's C for actor.dense.onnx, likewise (where installed)

Every C kernel, emx-onnx-cgen's included, is compiled with the same flags for this
machine (`HOST_CFLAGS`: -O3 -march=native). Speed-ups of the sparse kernel are against
the fastest dense variant (PyTorch, ONNX Runtime, our dense C, emx-onnx-cgen), and set
against the ideal ratio dense MACs / nonzero MACs.

Latency of the Python-called variants is each `run()`/call timed alone with
perf_counter_ns after a warm-up, inputs prepared outside the timed region; ORT's fixed
per-call cost is shown by a one-node Identity model of the same input shape.
"""
from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from tinypolicy.envs import evaluate_policy
from tinypolicy.export.bundle import FILES, load_bundle
from tinypolicy.export.c_codegen import HOST_CFLAGS, host_branch, host_compiler
from tinypolicy.export.embedded import update_bench_report
from tinypolicy.export.mlp import MLPPolicy
from tinypolicy.export.runtimes import EMX, EMX_VERSION, FLOAT_P, CKernels, emx_missing, ort_actions, ort_session
from tinypolicy.export.settings import BenchConfig
from tinypolicy.ondevice.artefact import prepare_output_dir, write_json, write_text
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.onnx_mlp import read_policy_onnx, save_onnx
from tinypolicy.plots import save_figure, subplots

BENCH_JSON, BENCH_MD, BENCH_PNG = "bench.json", "bench.md", "bench.png"
VARIANTS = ("pytorch_eager", "ort_dense", "ort_pruned", "ort_int8", "c_sparse", "c_dense", "c_int8", "emx_dense")
C_VARIANTS = {"c_sparse": "sparse", "c_dense": "dense", "c_int8": "int8", "emx_dense": EMX}
DENSE_VARIANTS = ("pytorch_eager", "ort_dense", "c_dense", "emx_dense")
# The C kernels' clock-free loops (c_timer.c): independent calls (a throughput) and calls chained
# through their actions (a latency, which the goal is judged by: it neither overlaps calls nor pays
# the clock reads that weigh on a p50 of a 60 ns call).
C_LOOP_COMPARISONS = {"c_loop_mean": "loop_mean_us", "c_chained_mean": "chained_mean_us"}
LABELS = {"pytorch_eager": "PyTorch eager (masked dense)", "ort_dense": "ONNX Runtime, masked dense",
          "ort_pruned": "ONNX Runtime, pruned", "ort_int8": "ONNX Runtime, int8 (pruned)",
          "c_sparse": "C sparse (tp_actor)", "c_dense": "C dense, vectorised (tp_actor_dense)",
          "c_int8": "C int8 sparse (tp_actor_int8)", "emx_dense": f"emx-onnx-cgen {EMX_VERSION}, dense ONNX",
          "ort_identity": "ONNX Runtime, Identity (overhead)"}


def _policy_from_onnx(path: Path, manifest: dict[str, Any]) -> MLPPolicy:
    weights, biases, meta = read_policy_onnx(path)
    return MLPPolicy(tuple(weights), tuple(biases), manifest["hidden_activation"], manifest["output"],
                     obs_mean=np.asarray(json.loads(meta["obs_mean"]), np.float32),
                     obs_std=np.asarray(json.loads(meta["obs_std"]), np.float32),
                     action_low=np.asarray(manifest["action_low"], np.float32),
                     action_high=np.asarray(manifest["action_high"], np.float32))


def _identity_model(obs_dim: int) -> onnx.ModelProto:
    info = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["obs"], ["actions"])], "identity",
                                   [info("obs", onnx.TensorProto.FLOAT, [1, obs_dim])],
                                   [info("actions", onnx.TensorProto.FLOAT, [1, obs_dim])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def _time_python(call: Callable[[int], Any], calls: int) -> np.ndarray:
    """Nanoseconds of each of `calls` calls of call(i), after calls // 10 warm-up calls."""
    for i in range(calls // 10 + 1):
        call(i)
    times = np.empty(calls, np.float64)
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        call(i)
        times[i] = clock() - start
    return times


def _stats(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1000.0
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean()), "calls": len(us)}


def _compiler_version() -> str:
    """The first line of `--version` of the compiler the C kernels are built with."""
    try:
        return subprocess.run([host_compiler(), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, RuntimeError, IndexError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name, for the machine line of every benchmark."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _speedups(latency: dict[str, dict], variants: list[str], macs: dict[str, int], key: str) -> dict[str, Any]:
    """The sparse kernel against the fastest dense variant (by `key`: p50 or loop mean)."""
    dense = {name: latency[name][key] for name in DENSE_VARIANTS if name in variants and key in latency[name]}
    best = min(dense, key=dense.get)
    ideal = macs["dense"] / macs["nonzero"]
    ratio = dense[best] / latency["c_sparse"][key]
    return {"fastest_dense": best, "c_sparse_vs_fastest_dense": ratio, "ideal": ideal,
            "fraction_of_ideal": ratio / ideal, "goal_half_of_ideal_met": ratio >= ideal / 2}


def bench_bundle(bundle_dir: str | Path, out_dir: str | Path | None = None, calls: int = BenchConfig.calls,
                 c_calls: int = BenchConfig.c_calls, rounds: int = BenchConfig.rounds,
                 episodes: int = BenchConfig.episodes, seed: int = BenchConfig.seed,
                 progress: bool = True) -> dict[str, Any]:
    """Measure every variant of the bundle; writes bench.json, bench.md and bench.png into
    `out_dir` (default the bundle) and returns the bench.json content. emx-onnx-cgen is
    skipped, with the reason recorded, when it is not installed or fails."""
    torch.set_num_threads(1)
    manifest = load_bundle(bundle_dir)
    folder = Path(bundle_dir)
    out = prepare_output_dir(out_dir or folder)
    n_rollout = manifest["parity"]["rollout_observations"]
    observations = np.load(folder / FILES["observations"], allow_pickle=False)[:n_rollout]
    rows = [np.ascontiguousarray(o[None]) for o in observations]
    tensors = [torch.from_numpy(r) for r in rows]
    n = len(rows)

    torch_policy = _policy_from_onnx(folder / FILES["onnx_dense"], manifest).torch_module()
    sessions = {name: ort_session(folder / FILES[key])
                for name, key in (("ort_dense", "onnx_dense"), ("ort_pruned", "onnx"), ("ort_int8", "onnx_int8"))}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as build:
        identity_path = save_onnx(_identity_model(manifest["obs_dim"]), Path(build) / "identity.onnx")
        sessions["ort_identity"] = ort_session(identity_path)
        try:
            kernels = CKernels(folder, build, manifest["obs_dim"], manifest["act_dim"])
        except RuntimeError as exc:
            raise UserError(f"cannot build the bundle's C kernels: {exc}") from None
        skipped[EMX] = emx_missing()
        if not skipped[EMX]:
            try:
                kernels.add_emx(folder / FILES["onnx_dense"], build)
            except RuntimeError as exc:
                skipped[EMX] = f"emx-onnx-cgen failed: {exc}"
        skipped = {k: v for k, v in skipped.items() if v}
        variants = [v for v in VARIANTS if v not in skipped]
        c_variants = {name: kernel for name, kernel in C_VARIANTS.items() if name in variants}
        bar = tqdm(total=rounds + len(variants), desc="bench", disable=not progress)

        pointers = [r.ctypes.data_as(FLOAT_P) for r in rows]
        out_p = np.zeros(manifest["act_dim"], np.float32).ctypes.data_as(FLOAT_P)
        python_timed: dict[str, Callable[[int], Any]] = {
            "pytorch_eager": lambda i: torch_policy(tensors[i % n]),
            **{name: (lambda i, s=session: s.run(None, {"obs": rows[i % n]})) for name, session in sessions.items()},
            **{f"{name}_ctypes": (lambda i, f=kernels.function(kernel): f(pointers[i % n], out_p))
               for name, kernel in c_variants.items()},
        }
        # Rounds interleave the variants, so that a burst of load from other processes on
        # this shared machine falls on all of them rather than on one.
        samples: dict[str, list[np.ndarray]] = {name: [] for name in [*python_timed, *c_variants]}
        loop_means: dict[str, list[float]] = {name: [] for name in c_variants}
        chained_means: dict[str, list[float]] = {name: [] for name in c_variants}
        with torch.inference_mode():
            for _ in range(rounds):
                for name, call in python_timed.items():
                    samples[name].append(_time_python(call, max(1, calls // rounds)))
                for name, kernel in c_variants.items():
                    per_call, loop_mean, chained_mean = kernels.time_calls(observations, max(1, c_calls // rounds),
                                                                           kernel)
                    samples[name].append(per_call)
                    loop_means[name].append(loop_mean)
                    chained_means[name].append(chained_mean)
                bar.update()
        latency = {name: _stats(np.concatenate(samples[name])) for name in (*variants, "ort_identity")}
        for name in c_variants:
            latency[name]["loop_mean_us"] = float(np.median(loop_means[name])) / 1000.0
            latency[name]["chained_mean_us"] = float(np.median(chained_means[name])) / 1000.0
            latency[name]["ctypes"] = _stats(np.concatenate(samples[f"{name}_ctypes"]))

        policies = {
            "pytorch_eager": lambda o: torch_policy(torch.as_tensor(o, dtype=torch.float32)[None])[0].numpy(),
            **{name: (lambda o, s=sessions[name]: ort_actions(s, o[None])[0])
               for name in ("ort_dense", "ort_pruned", "ort_int8")},
            **{name: kernels.policy(kernel) for name, kernel in c_variants.items()},
        }
        returns = {}
        with torch.inference_mode():
            for name, policy in policies.items():
                r = evaluate_policy(policy, manifest["env_id"], episodes, seed)
                returns[name] = {"mean": float(r.mean()), "std": float(r.std()), "episodes": r.tolist()}
                bar.update()
    bar.close()

    result = {
        "format": "tinypolicy.bench", "version": 4,  # 4: C kernels' chained (latency) loop, c_chained_mean
        "bundle": str(folder), "env_id": manifest["env_id"],
        "checkpoint": manifest["checkpoint"],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": ort.__version__, "numpy": np.__version__, "gcc": _compiler_version(),
                    "threads": 1, "c_flags": " ".join([*HOST_CFLAGS, "-fPIC", "-shared"]), "c_branch": host_branch(),
                    "c_flags_note": "every C kernel, emx-onnx-cgen's included (without -Werror), built with these"},
        "settings": {"calls": calls, "c_calls": c_calls, "rounds": rounds, "warmup_fraction": 0.1,
                     "observations": n,
                     "episodes": episodes, "seed": seed},
        "variants": variants, "skipped": skipped,
        "sparsity": 1.0 - sum(l["nnz"] for l in manifest["layers"]) / manifest["macs"]["dense"],
        "sparsity_after_removal": 1.0 - manifest["macs"]["nonzero"] / manifest["macs"]["dense"],
        "latency": latency,
        "speedup": {"p50": _speedups(latency, variants, manifest["macs"], "p50_us"),
                    **{comparison: _speedups(latency, [v for v in variants if v in C_VARIANTS], manifest["macs"], key)
                       for comparison, key in C_LOOP_COMPARISONS.items()}},
        "macs": manifest["macs"],
        "parameter_bytes": manifest["parameter_bytes"],
        "file_bytes": {key: entry["bytes"] for key, entry in manifest["files"].items()},
        "returns": returns,
    }
    write_json(out / BENCH_JSON, result)
    _write_markdown(out / BENCH_MD, result)
    update_bench_report(out / BENCH_MD, bundle_dir)  # embedded targets' section, if measured
    _plot(out / BENCH_PNG, result)
    return result


def speedup_sentence(r: dict[str, Any]) -> str:
    """The sparse kernel's speed-up against the fastest dense variant, and whether its chained
    latency reaches half the ideal ratio (the goal)."""
    p50, loop, chained = (r["speedup"][k] for k in ("p50", "c_loop_mean", "c_chained_mean"))
    verdict = "goal met" if chained["goal_half_of_ideal_met"] else "goal NOT met"
    return (f"C sparse speed-up over the fastest dense variant: {p50['c_sparse_vs_fastest_dense']:.1f}x by p50 "
            f"(fastest: {LABELS[p50['fastest_dense']]}); among the C kernels "
            f"{chained['c_sparse_vs_fastest_dense']:.1f}x by chained-loop latency (fastest: "
            f"{LABELS[chained['fastest_dense']]}) and {loop['c_sparse_vs_fastest_dense']:.1f}x by untimed-loop "
            f"throughput; ideal (dense / nonzero MACs) {chained['ideal']:.1f}x, so the latency is "
            f"{chained['fraction_of_ideal']:.0%} of ideal: {verdict} (at least half).")


def _write_markdown(path: Path, r: dict[str, Any]) -> None:
    lines = [f"# Export benchmark: {r['env_id']}", "",
             f"Checkpoint `{r['checkpoint']['path']}` ({r['checkpoint']['steps_done']} env steps), "
             f"weight sparsity {r['sparsity']:.3f} "
             f"({r['sparsity_after_removal']:.3f} after dead-neuron removal). {r['machine']['cpu']}, 1 thread, "
             f"{r['date_utc']}; batch 1, {r['settings']['calls']} calls per Python-timed variant, "
             f"{r['settings']['c_calls']} timed inside C, in {r['settings']['rounds']} interleaved rounds; "
             f"returns over {r['settings']['episodes']} episodes from seed {r['settings']['seed']}. "
             f"C flags: `{r['machine']['c_flags']}` (actor.c's {r['machine'].get('c_branch', 'unrecorded')} branch).",
             "",
             "| variant | p50 µs | p99 µs | chained-loop mean µs | untimed-loop mean µs | via ctypes p50 / p99 µs "
             "| return |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in (*r["variants"], "ort_identity"):
        lat = r["latency"][name]
        ctypes_cell = (f"{lat['ctypes']['p50_us']:.2f} / {lat['ctypes']['p99_us']:.2f}" if "ctypes" in lat else "")
        loop_cell, chained_cell = (f"{lat[key]:.2f}" if key in lat else "" for key in C_LOOP_COMPARISONS.values())
        ret = r["returns"].get(name)
        ret_cell = f"{ret['mean']:.1f} ± {ret['std']:.1f}" if ret else ""
        lines.append(f"| {LABELS[name]} | {lat['p50_us']:.2f} | {lat['p99_us']:.2f} | {chained_cell} | {loop_cell} "
                     f"| {ctypes_cell} "
                     f"| {ret_cell} |")
    lines += ["", *(f"Skipped {LABELS[name]}: {why}." for name, why in r["skipped"].items())]
    m, b, f = r["macs"], r["parameter_bytes"], r["file_bytes"]
    lines += ["", speedup_sentence(r), "",
              "| MACs dense | structural (after neuron removal) | nonzero |", "|---:|---:|---:|",
              f"| {m['dense']:,} | {m['structural']:,} | {m['nonzero']:,} |", "",
              "| parameter bytes: dense fp32 | pruned fp32 | sparse fp32 (C) | sparse int8 (C) |",
              "|---:|---:|---:|---:|",
              f"| {b['dense_fp32']:,} | {b['pruned_fp32']:,} | {b['sparse_fp32']:,} | {b['sparse_int8']:,} |", "",
              "| file | bytes |", "|---|---:|", *(f"| {FILES[k]} | {v:,} |" for k, v in f.items()), ""]
    write_text(path, "\n".join(lines))


def _plot(path: Path, r: dict[str, Any]) -> None:
    names = [*r["variants"], "ort_identity"]
    p50 = np.array([r["latency"][n]["p50_us"] for n in names])
    p99 = np.array([r["latency"][n]["p99_us"] for n in names])
    fig, (ax_lat, ax_ret) = subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(names))
    ax_lat.barh(y, p50, xerr=[np.zeros_like(p50), p99 - p50], color="tab:blue", capsize=3)
    ax_lat.set_yticks(y, [LABELS[n] for n in names])
    ax_lat.invert_yaxis()
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("batch-1 latency, µs (bar p50, whisker p99; log scale)")
    ax_lat.set_title(f"{r['env_id']}: sparsity {r['sparsity']:.3f}, 1 thread")
    ret_names = list(r["variants"])
    means = [r["returns"][n]["mean"] for n in ret_names]
    stds = [r["returns"][n]["std"] for n in ret_names]
    ax_ret.bar(range(len(ret_names)), means, yerr=stds, color="tab:green", capsize=3)
    ax_ret.set_xticks(range(len(ret_names)), ret_names, rotation=30, ha="right")
    ax_ret.set_ylabel(f"return ({r['settings']['episodes']} episodes)")
    ax_ret.set_title("return of each variant")
    save_figure(fig, path)
