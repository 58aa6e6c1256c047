"""ONNX export of the Algorithm Distillation step function, checked under ONNX Runtime.

The graph is `models.ad_transformer.ADStepPolicy`: inputs `states`, `prev_actions` (int64
[1, T]), `prev_rewards` (float32 [1, T]) and `valid_length` (int64 [1]); output `logits`
(float32 [1, 5]) of token valid_length - 1. The device keeps the last T transitions in a
ring buffer (left-aligned while it fills) and calls the model once per env step; token t is
(s_t, a_{t-1}, r_{t-1}) with a_{-1} = 5 ("none"). `ort_step_function` is that loop's
reference implementation.

The check re-runs the held-out in-context curve under ONNX Runtime with the same uniforms
as PyTorch (actions are sampled by inverse CDF, so the two runs act alike wherever their
probabilities agree) and records the largest logit difference on the windows it visits.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from models.ad_transformer import ADStepPolicy, ADTransformer
from pipeline.ad import (NO_ACTION, StepFunction, build_model, in_context_returns, load_ad_checkpoint,
                         plot_curves, torch_step_function)
from pipeline.artefact import write_json

OPSET = 17
INPUTS = ("states", "prev_actions", "prev_rewards", "valid_length")


def export_step_onnx(model: ADTransformer, path: Path) -> Path:
    """Write the [1, T] step function of `model` to `path` (atomically)."""
    window = model.cfg.window
    example = (torch.zeros(1, window, dtype=torch.long), torch.full((1, window), NO_ACTION, dtype=torch.long),
               torch.zeros(1, window), torch.tensor([window], dtype=torch.long))
    step = ADStepPolicy(model).eval()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.onnx")
    # The TorchScript exporter: the dynamo one needs onnxscript, which the project does not ship.
    torch.onnx.export(step, example, tmp, dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                      output_names=["logits"])
    tmp.replace(path)
    return path


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_step_function(session, window: int) -> StepFunction:
    """Batch of windows [B, n] -> logits [B, A], one [1, T] session call per sequence, as on a device."""

    def step(states, prev_actions, prev_rewards):
        batch, n = states.shape
        padded = {"states": np.zeros((1, window), np.int64), "prev_actions": np.full((1, window), NO_ACTION, np.int64),
                  "prev_rewards": np.zeros((1, window), np.float32), "valid_length": np.array([n], np.int64)}
        logits = []
        for i in range(batch):
            padded["states"][0, :n], padded["prev_actions"][0, :n], padded["prev_rewards"][0, :n] = (
                states[i], prev_actions[i], prev_rewards[i])
            logits.append(session.run(None, padded)[0][0])
        return np.stack(logits)

    return step


def export_ad(checkpoint_path: Path, out_dir: Path, episodes: int = 100, seed: int = 1000,
              progress: bool = True) -> dict:
    """Export ad.onnx into out_dir and compare it with PyTorch on the held-out in-context
    curve (one evaluation seed per held-out goal); writes export.json and parity.png."""
    ckpt = load_ad_checkpoint(checkpoint_path)
    model = build_model(ckpt)
    window = model.cfg.window
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_step_onnx(model, out_dir / "ad.onnx")
    session = ort_session(onnx_path)
    goals = ckpt["test_goals"].numpy()

    torch_fn, ort_fn = torch_step_function(model), ort_step_function(session, window)
    gaps, agree, total = [0.0], [0], [0]

    def checked(states, prev_actions, prev_rewards):
        ort_logits = ort_fn(states, prev_actions, prev_rewards)
        torch_logits = torch_fn(states, prev_actions, prev_rewards)
        gaps[0] = max(gaps[0], float(np.abs(ort_logits - torch_logits).max()))
        agree[0] += int((ort_logits.argmax(1) == torch_logits.argmax(1)).sum())
        total[0] += len(states)
        return ort_logits

    started = time.time()
    torch_curve = in_context_returns(torch_fn, goals, episodes, window, seed, progress=progress, desc="torch")
    torch_seconds = time.time() - started
    started = time.time()
    ort_curve = in_context_returns(checked, goals, episodes, window, seed, progress=progress, desc="onnxruntime")
    ort_seconds = time.time() - started

    full = {name: np.zeros((1, window), np.int64) for name in INPUTS[:2]}
    feed = {**full, "prev_rewards": np.zeros((1, window), np.float32), "valid_length": np.array([window], np.int64)}
    for _ in range(20):
        session.run(None, feed)
    started = time.perf_counter()
    for _ in range(200):
        session.run(None, feed)
    latency_ms = (time.perf_counter() - started) / 200 * 1000

    torch_mean, ort_mean = torch_curve.mean(0), ort_curve.mean(0)
    summary = {
        "onnx": str(onnx_path), "opset": OPSET, "window": window, "bytes": onnx_path.stat().st_size,
        "goals": len(goals), "episodes": episodes, "seed": seed,
        "max_abs_logit_diff": gaps[0], "greedy_action_agreement": agree[0] / max(1, total[0]),
        "torch_mean_return": float(torch_mean.mean()), "onnx_mean_return": float(ort_mean.mean()),
        "torch_last_20": float(torch_mean[-20:].mean()), "onnx_last_20": float(ort_mean[-20:].mean()),
        "max_abs_curve_diff": float(np.abs(torch_mean - ort_mean).max()),
        "ort_step_latency_ms_full_window": round(latency_ms, 3),
        "torch_seconds": round(torch_seconds, 1), "onnx_seconds": round(ort_seconds, 1),
        "curves": {"torch": [round(float(v), 3) for v in torch_mean], "onnx": [round(float(v), 3) for v in ort_mean]},
    }
    write_json(out_dir / "export.json", summary)
    plot_curves({"torch": torch_mean, "onnxruntime": ort_mean}, out_dir / "parity.png",
                title=f"AD held-out curve: PyTorch vs ONNX Runtime ({len(goals)} goals)")
    return summary
