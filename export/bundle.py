"""`tinypolicy export`: a trained actor -> an export bundle a robot can run.

The bundle (a folder) is the typed artefact between export and everything downstream
(bench, embedded targets, compress):

    actor.onnx          dead neurons removed, normalisation and action scaling inside
    actor.dense.onnx    the same policy with the masked dense weights (the baseline)
    actor.int8.onnx     ONNX Runtime static QDQ quantization of actor.onnx
    actor.h, actor.c, actor_dense.c, actor_int8.c
                        C99 kernels: sparse, dense reference, int8 sparse (actor.int8.onnx's quantisation)
    observations.npy    the observations parity was checked on (rollouts + extremes)
    export.json         what all of the above are, with hashes, and the parity results

`export.json` is written last, so a bundle without it is incomplete; `load_bundle`
checks every file against the hashes it records.
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from tqdm import tqdm

from tinypolicy import __version__
from tinypolicy.checkpoint import Checkpoint, load_checkpoint
from tinypolicy.envs import actor_policy, evaluate_policy, require_dims, rollout
from tinypolicy.export.c_codegen import (
    DENSE,
    HEADER,
    INT8,
    SPARSE,
    int8_output_step,
    int8_rows_apart,
    int8_table_bytes,
    sparse_table_bytes,
    write_c_sources,
)
from tinypolicy.export.mlp import MLPPolicy, policy_from_actor
from tinypolicy.export.prune import PruneResult, remove_dead_neurons
from tinypolicy.export.runtimes import CKernels, ort_actions, ort_session
from tinypolicy.export.settings import ExportConfig
from tinypolicy.models import sparse_layers
from tinypolicy.ondevice.artefact import atomic_write, prepare_output_dir, read_manifest, sha256_file, write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.onnx_mlp import save_onnx

FORMAT, VERSION = "tinypolicy.export", 2  # 2: actor_int8.c
MANIFEST = "export.json"
FILES = {"onnx": "actor.onnx", "onnx_dense": "actor.dense.onnx", "onnx_int8": "actor.int8.onnx",
         "c_header": HEADER, "c_sparse": SPARSE, "c_dense": DENSE, "c_int8": INT8,
         "observations": "observations.npy"}
PARITY_TOLERANCE = 1e-5
# A wrong export (bad scaling, a mis-folded bias, a transposed table) is off by 1e-3 or
# more; float32 round-off grows with the weights' magnitude. Export fails when a runtime
# is further from PyTorch than this many times PyTorch's own distance from float64.
ROUNDOFF_FACTOR = 4.0
EXTREME_FRACTION = 0.2
QUANTIZATION = ("int8 static QDQ calibrated on rollouts: U8 activations, S8 per-channel weights; "
                "first layer float")


def _validated_actor(ckpt: Checkpoint) -> torch.nn.Module:
    """The checkpoint's actor, refusing masks that are not binary."""
    actor = ckpt.build_actor()  # refuses non-finite weights and nonzero weights outside the mask
    for k, layer in enumerate(sparse_layers(actor)):
        if not bool(((layer.mask == 0) | (layer.mask == 1)).all()):
            raise UserError(f"{ckpt.path}: actor layer {k} has a mask that is not binary")
    require_dims(ckpt.env_id, ckpt.data["spaces"], "the checkpoint")
    return actor


def rollout_observations(policy, env_id: str, count: int, seed: int) -> np.ndarray:
    """`count` observations visited by `policy` in `env_id` (episodes seeded seed, seed+1, ...)."""
    return np.asarray([step.obs for step in rollout(env_id, policy, seed, steps=count)], dtype=np.float32)


def extreme_observations(visited: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Observations beyond anything visited: half uniform over the visited range widened by
    its span on both sides, half at the corners of that widened box."""
    low, high = visited.min(axis=0), visited.max(axis=0)
    span = np.maximum(high - low, 1e-3)
    low, high = low - span, high + span
    uniform = rng.uniform(low, high, size=(count // 2, visited.shape[1]))
    corners = np.where(rng.random((count - count // 2, visited.shape[1])) < 0.5, low, high)
    return np.concatenate([uniform, corners]).astype(np.float32)


def _layer_stats(dense: MLPPolicy, pruned: PruneResult) -> list[dict[str, Any]]:
    stats = []
    for k, (w, p) in enumerate(zip(dense.weights, pruned.policy.weights)):
        nnz = int(np.count_nonzero(w))
        stats.append({"layer": k, "dense_shape": list(w.shape), "pruned_shape": list(p.shape),
                      "nnz": nnz, "sparsity": 1.0 - nnz / w.size,
                      "pruned_nnz": int(np.count_nonzero(p))})
    return stats


def _metadata(ckpt: Checkpoint, checkpoint_sha256: str, dense: MLPPolicy, pruned: PruneResult,
              macs: dict[str, int]) -> dict[str, str]:
    layers = _layer_stats(dense, pruned)
    return {
        "env_id": ckpt.env_id,
        "algo": ckpt.config.get("algo", ""),
        "obs_dim": str(dense.obs_dim), "act_dim": str(dense.act_dim),
        "action_low": json.dumps(dense.action_low.tolist()),
        "action_high": json.dumps(dense.action_high.tolist()),
        "obs_mean": json.dumps(dense.obs_mean.tolist()), "obs_std": json.dumps(dense.obs_std.tolist()),
        "layer_sparsity": json.dumps([round(l["sparsity"], 6) for l in layers]),
        "layer_nnz": json.dumps([l["nnz"] for l in layers]),
        "nnz": str(sum(l["nnz"] for l in layers)),
        "dense_macs": str(macs["dense"]), "structural_macs": str(macs["structural"]),
        "nonzero_macs": str(macs["nonzero"]),
        "kept_neurons": json.dumps(pruned.kept),
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_steps": str(ckpt.steps_done),
        "tinypolicy_version": __version__,
    }


class _Calibration:
    """ORT's CalibrationDataReader protocol over an observation array, in batches."""

    def __init__(self, obs: np.ndarray, batch: int = 64):
        self._batches = iter([{"obs": obs[i:i + batch]} for i in range(0, len(obs), batch)])

    def get_next(self):
        return next(self._batches, None)


def quantize_int8(fp32_path: Path, out_path: Path, calibration_obs: np.ndarray, metadata: dict[str, str]) -> None:
    """Static QDQ int8 quantization calibrated on policy rollouts (dynamic quantization
    recomputes activation scales on every call: slower than fp32 at batch 1).

    The first layer stays float: observation dims differ in scale by orders of magnitude
    (joint angles vs velocities) and one per-tensor input scale erases the small ones.
    U8 activations, S8 per-channel weights, full range: on the Hopper actor `reduce_range`
    (ORT's advice for CPUs without VNNI) doubled the action error and gained no speed."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), _Calibration(calibration_obs),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=["layer0"])
        model = onnx.load(str(quantized))
    onnx.helper.set_model_props(model, {**metadata, "quantization": QUANTIZATION})
    onnx.checker.check_model(model)
    save_onnx(model, out_path)


def _max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _refuse_another_bundle(out: Path, checkpoint_sha256: str) -> None:
    """Re-exporting the same checkpoint into its bundle replaces it (the user named that
    output); a bundle of another checkpoint, or a foreign export.json, is never replaced."""
    if not (out / MANIFEST).is_file():
        return
    existing = read_manifest(out / MANIFEST, FORMAT, VERSION, "export manifest")
    if existing.get("checkpoint", {}).get("sha256") != checkpoint_sha256:
        raise UserError(f"{out} holds the export bundle of another checkpoint "
                        f"({existing.get('checkpoint', {}).get('path')}); use another --out")


def export_bundle(checkpoint_path: str | Path, out_dir: str | Path,
                  parity_samples: int = ExportConfig.parity_samples, episodes: int = ExportConfig.episodes,
                  seed: int = ExportConfig.seed, progress: bool = True) -> dict[str, Any]:
    """Export a checkpoint's actor to `out_dir`; returns the manifest (export.json).

    Raises UserError for an unusable checkpoint and for a failed parity check (the
    manifest is still written, with `parity.passed` false, for diagnosis). Parity against
    PyTorch within 1e-5 is reported as `parity.within_tolerance`; it fails only beyond
    what float32 round-off explains (`parity.failure_threshold`), since a large trained
    actor on extreme observations is itself 1e-5 away from exact arithmetic in PyTorch.
    """
    start = time.time()
    ckpt = load_checkpoint(checkpoint_path)
    actor = _validated_actor(ckpt)
    out = prepare_output_dir(out_dir)  # before the minute of rollouts, quantization and compiling
    checkpoint_sha256 = sha256_file(ckpt.path)
    _refuse_another_bundle(out, checkpoint_sha256)
    steps = tqdm(total=6, desc="export", disable=not progress, unit="step")

    dense = policy_from_actor(actor)
    pruned = remove_dead_neurons(dense)
    macs = {"dense": dense.macs(), "structural": pruned.policy.macs(), "nonzero": sum(pruned.policy.nnz())}
    steps.update()

    rng = np.random.default_rng(seed)
    n_extreme = round(parity_samples * EXTREME_FRACTION)
    visited = rollout_observations(actor_policy(actor), ckpt.env_id, parity_samples - n_extreme, seed)
    observations = np.concatenate([visited, extreme_observations(visited, n_extreme, rng)])
    steps.update()

    (out / MANIFEST).unlink(missing_ok=True)  # the bundle is incomplete until the manifest is back
    metadata = _metadata(ckpt, checkpoint_sha256, dense, pruned, macs)
    save_onnx(pruned.policy.onnx(metadata), out / FILES["onnx"])
    save_onnx(dense.onnx({**metadata, "variant": "masked dense (dead neurons kept)"}), out / FILES["onnx_dense"])
    quantize_int8(out / FILES["onnx"], out / FILES["onnx_int8"], visited, metadata)
    int8_model = onnx.load(str(out / FILES["onnx_int8"]))
    write_c_sources(pruned.policy, out, dense=dense, int8_onnx=int8_model)

    def save_observations(tmp: Path) -> None:
        with tmp.open("wb") as f:  # given a name, NumPy would append ".npy" to the temporary one
            np.save(f, observations)

    atomic_write(out / FILES["observations"], save_observations)
    steps.update()

    with torch.no_grad():
        reference = actor(torch.from_numpy(observations)).numpy()
        # Exact arithmetic, for scale: how much of the disagreement is float32 round-off. From the
        # actor itself, not from the exported MLP: an export that drops something (a normaliser,
        # an activation) must not widen its own allowance.
        exact = copy.deepcopy(actor).double()(torch.from_numpy(observations).double()).numpy()
    with tempfile.TemporaryDirectory() as build:
        try:
            kernels = CKernels(out, build, dense.obs_dim, dense.act_dim)
        except RuntimeError as exc:
            raise UserError(f"the generated C does not compile: {exc}") from None
        outputs = {
            "torch_pruned": pruned.policy(observations),
            "onnx": ort_actions(ort_session(out / FILES["onnx"]), observations),
            "onnx_dense": ort_actions(ort_session(out / FILES["onnx_dense"]), observations),
            "c_sparse": kernels.actions(observations),
            "c_dense": kernels.actions(observations, "dense"),
        }
        steps.update()
        int8_session = ort_session(out / FILES["onnx_int8"], fuse=False)  # the model's own arithmetic
        int8_actions = ort_actions(int8_session, observations)
        visited_rows = slice(0, len(visited))
        step = int8_output_step(int8_model)
        fused = ort_actions(ort_session(out / FILES["onnx_int8"]), observations)
        int8 = {"c_kernel_vs_onnx": int8_rows_apart(kernels.actions(observations, "int8"), int8_actions, step),
                # what ORT's default (fused) session computes on this CPU, against the model's arithmetic
                "onnx_runtime_fused_vs_onnx": int8_rows_apart(fused, int8_actions, step),
                "max_abs_error": _max_error(int8_actions, reference),
                "max_abs_error_rollouts": _max_error(int8_actions[visited_rows], reference[visited_rows]),
                "mean_abs_error_rollouts": float(np.abs(int8_actions[visited_rows] - reference[visited_rows]).mean())}
        eval_seed = 1000 + seed
        fp32_returns = evaluate_policy(actor_policy(actor), ckpt.env_id, episodes, eval_seed)
        int8_returns = evaluate_policy(lambda o: ort_actions(int8_session, o[None])[0], ckpt.env_id,
                                       episodes, eval_seed)
        steps.update()
    errors = {name: _max_error(y, reference) for name, y in outputs.items()}
    parity = {"observations": len(observations), "rollout_observations": len(visited),
              "extreme_observations": n_extreme, "reference": "PyTorch eager (masked actor), float32",
              "tolerance": PARITY_TOLERANCE, "max_abs_error": errors,
              "max_abs_error_rollouts": {name: _max_error(y[visited_rows], reference[visited_rows])
                                         for name, y in outputs.items()},
              "max_abs_error_vs_float64": {name: _max_error(y, exact)
                                           for name, y in {"pytorch": reference, **outputs}.items()},
              "within_tolerance": all(e <= PARITY_TOLERANCE for e in errors.values())}
    parity["roundoff_scale"] = parity["max_abs_error_vs_float64"]["pytorch"]
    parity["failure_threshold"] = max(PARITY_TOLERANCE, ROUNDOFF_FACTOR * parity["roundoff_scale"])
    parity["passed"] = all(e <= parity["failure_threshold"] for e in errors.values())
    onnx.checker.check_model(str(out / FILES["onnx"]), full_check=True)

    manifest = {
        "format": FORMAT, "version": VERSION, "tinypolicy_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": {"path": str(ckpt.path.resolve()), "sha256": metadata["checkpoint_sha256"],
                       "steps_done": ckpt.steps_done, "algo": ckpt.config.get("algo"),
                       "method": ckpt.config.get("method")},
        "env_id": ckpt.env_id, "obs_dim": dense.obs_dim, "act_dim": dense.act_dim,
        "action_low": dense.action_low.tolist(), "action_high": dense.action_high.tolist(),
        "hidden_activation": dense.hidden_activation, "output": dense.output,
        "widths": {"dense": dense.widths, "pruned": pruned.policy.widths},
        "layers": _layer_stats(dense, pruned),
        "dead_neurons": {"kept": pruned.kept, "folded_constants": pruned.folded,
                         "removed": [d - len(k) for d, k in zip(dense.widths[1:-1], pruned.kept)]},
        "macs": macs,
        "parameter_bytes": {"dense_fp32": 4 * (dense.macs() + sum(b.size for b in dense.biases)),
                            "pruned_fp32": 4 * (pruned.policy.macs() + sum(b.size for b in pruned.policy.biases)),
                            "sparse_fp32": sparse_table_bytes(pruned.policy),
                            "sparse_int8": int8_table_bytes(int8_model)},
        "parity": parity,
        "int8": {"method": QUANTIZATION, **int8, "episodes": episodes, "seed": eval_seed,
                 "fp32_return_mean": float(fp32_returns.mean()), "fp32_return_std": float(fp32_returns.std()),
                 "int8_return_mean": float(int8_returns.mean()), "int8_return_std": float(int8_returns.std())},
        "files": {key: {"name": name, "bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
                  for key, name in FILES.items()},
        "seconds": round(time.time() - start, 1),
    }
    write_json(out / MANIFEST, manifest)
    steps.update()
    steps.close()
    if not parity["passed"]:
        worst = max(errors, key=errors.get)
        raise UserError(f"parity check failed: {worst} differs from PyTorch by {errors[worst]:.2e}, "
                        f"beyond float32 round-off ({parity['failure_threshold']:.1e}); see {out / MANIFEST}")
    if not int8["c_kernel_vs_onnx"]["passed"]:
        c_int8 = int8["c_kernel_vs_onnx"]
        raise UserError(f"parity check failed: c_int8 differs from ONNX Runtime on {FILES['onnx_int8']} by more "
                        f"than one quantisation step ({step:.2e}) on {c_int8['rows_beyond_one_step']} of "
                        f"{c_int8['rows']} observations (max {c_int8['max_abs_error']:.2e}); see {out / MANIFEST}")
    return manifest


def load_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete, unmodified export bundle, with `dir` set to its folder.

    Refuses a folder without export.json, a manifest of another format or version, a
    missing, truncated or changed file, and an env id or dimensions in export.json (which
    records the other files' hashes, not its own) that disagree with the ONNX actors'."""
    folder = Path(bundle_dir)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not an export bundle (no {MANIFEST}; run `tinypolicy export` first)")
    manifest = read_manifest(path, FORMAT, VERSION, "export manifest")
    files = manifest.get("files", {})
    for key, name in FILES.items():
        entry, file = files.get(key), folder / name
        if not entry or entry.get("name") != name:
            raise UserError(f"{path} does not list {name}")
        if not file.is_file():
            raise UserError(f"export bundle {folder} is missing {name}")
        if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
            raise UserError(f"{file} is truncated or was changed after export (hash mismatch)")
    for key in ("onnx", "onnx_dense", "onnx_int8"):
        facts = _onnx_facts(folder / FILES[key])
        differ = [f"{name} {manifest.get(name)!r} where {FILES[key]} has {value!r}" for name, value in facts.items()
                  if manifest.get(name) != value]
        if differ:
            raise UserError(f"{path} records {', '.join(differ)}: it was edited; export the checkpoint again")
    if any(len(manifest.get(key) or ()) != manifest["act_dim"] for key in ("action_low", "action_high")):
        raise UserError(f"{path}: action_low and action_high must hold act_dim {manifest['act_dim']} values each")
    return {**manifest, "dir": str(folder)}


def _onnx_facts(path: Path) -> dict[str, Any]:
    """What an actor ONNX file says of itself: its env (metadata) and the widths of its `obs`
    input and `actions` output."""
    model = onnx.load(str(path))

    def width(values, name: str) -> int | None:
        dims = next((v.type.tensor_type.shape.dim for v in values if v.name == name), None)
        return dims[-1].dim_value if dims else None

    return {"env_id": next((p.value for p in model.metadata_props if p.key == "env_id"), None),
            "obs_dim": width(model.graph.input, "obs"), "act_dim": width(model.graph.output, "actions")}
