"""ONNX export of the Algorithm Distillation step function, checked under ONNX Runtime.

The graph is `tinypolicy.models.ad_transformer.ADStepPolicy`: inputs `states`, `prev_actions` (int64
[1, T]), `prev_rewards` (float32 [1, T]) and `valid_length` (int64 [1]); output `logits`
(float32 [1, 5]) of token valid_length - 1. The device keeps the last T transitions in a
ring buffer (left-aligned while it fills) and calls the model once per env step; token t is
(s_t, a_{t-1}, r_{t-1}) with a_{-1} = 5 ("none"). `ort_step_function` is that loop's
reference implementation.

`tinypolicy.pipeline.ad.export` uses these to re-run the held-out in-context curve under ONNX
Runtime next to PyTorch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tinypolicy.models.ad_transformer import ADStepPolicy, ADTransformer
from tinypolicy.ondevice.artefact import atomic_write

OPSET = 17
INPUTS = ("states", "prev_actions", "prev_rewards", "valid_length")


def export_step_onnx(model: ADTransformer, path: Path) -> Path:
    """Write the [1, T] step function of `model` to `path` (atomically)."""
    window = model.cfg.window
    example = (torch.zeros(1, window, dtype=torch.long), torch.full((1, window), model.cfg.num_actions, dtype=torch.long),
               torch.zeros(1, window), torch.tensor([window], dtype=torch.long))
    step = ADStepPolicy(model).eval()
    path = Path(path)
    # The TorchScript exporter: the dynamo one needs onnxscript, which the project does not ship.
    atomic_write(path, lambda tmp: torch.onnx.export(step, example, tmp, dynamo=False, opset_version=OPSET,
                                                     input_names=list(INPUTS), output_names=["logits"]))
    return path


def ort_step_function(session, window: int, no_action: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Batch of windows [B, n] -> logits [B, A], one [1, T] session call per sequence, as on a
    device; `no_action` is the model's "no previous action" token (`ADConfig.num_actions`)."""

    def step(states, prev_actions, prev_rewards):
        batch, n = states.shape
        padded = {"states": np.zeros((1, window), np.int64), "prev_actions": np.full((1, window), no_action, np.int64),
                  "prev_rewards": np.zeros((1, window), np.float32), "valid_length": np.array([n], np.int64)}
        logits = []
        for i in range(batch):
            padded["states"][0, :n], padded["prev_actions"][0, :n], padded["prev_rewards"][0, :n] = (
                states[i], prev_actions[i], prev_rewards[i])
            logits.append(session.run(None, padded)[0][0])
        return np.stack(logits)

    return step


def step_latency_ms(session, window: int, calls: int = 200) -> float:
    """Mean milliseconds of one [1, T] call with a full window, after a warm-up."""
    feed = {"states": np.zeros((1, window), np.int64), "prev_actions": np.zeros((1, window), np.int64),
            "prev_rewards": np.zeros((1, window), np.float32), "valid_length": np.array([window], np.int64)}
    for _ in range(calls // 10):
        session.run(None, feed)
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    return (time.perf_counter() - started) / calls * 1000
