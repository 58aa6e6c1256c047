"""ONNX export of the Algorithm Distillation step function, checked under ONNX Runtime.

The graph is `tinypolicy.models.ad_transformer.ADStepPolicy`: inputs `states`, `prev_actions` (int64
[1, T]), `prev_rewards` (float32 [1, T]), for a model that takes them `episode_returns` (float32
[1, T]: the return collected earlier in each token's episode), and `valid_length` (int64 [1]);
output `logits` (float32 [1, 5]) of token valid_length - 1. The device keeps the last T
transitions in a ring buffer (left-aligned while it fills) and calls the model once per env
step; token t is (s_t, a_{t-1}, r_{t-1}[, R_t]) with a_{-1} = 5 ("none").
`ort_step_function` is that loop's reference implementation.

`tinypolicy.pipeline.ad.export` uses these to re-run the held-out in-context curve under ONNX
Runtime next to PyTorch.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tinypolicy.models.ad_transformer import ADConfig, ADStepPolicy, ADTransformer
from tinypolicy.ondevice.artefact import atomic_write

OPSET = 17


def input_names(cfg: ADConfig) -> list[str]:
    """The step function's inputs, in order."""
    return ["states", "prev_actions", "prev_rewards", *["episode_returns"] * cfg.episode_return_input,
            "valid_length"]


def _feed(names: list[str], window: int, no_action: int) -> dict[str, np.ndarray]:
    """Empty [1, T] inputs: no states, no previous actions, no rewards, a full window."""
    feed = {"states": np.zeros((1, window), np.int64), "prev_actions": np.full((1, window), no_action, np.int64),
            "prev_rewards": np.zeros((1, window), np.float32), "episode_returns": np.zeros((1, window), np.float32),
            "valid_length": np.array([window], np.int64)}
    return {name: feed[name] for name in names}


def export_step_onnx(model: ADTransformer, path: Path) -> Path:
    """Write the [1, T] step function of `model` to `path` (atomically)."""
    names = input_names(model.cfg)
    example = tuple(torch.from_numpy(v) for v in _feed(names, model.cfg.window, model.cfg.num_actions).values())
    step = ADStepPolicy(model).eval()
    path = Path(path)
    # The TorchScript exporter: the dynamo one needs onnxscript, which the project does not ship.
    atomic_write(path, lambda tmp: torch.onnx.export(step, example, tmp, dynamo=False, opset_version=OPSET,
                                                     input_names=names, output_names=["logits"]))
    return path


def ort_step_function(session, window: int, no_action: int) -> Callable[..., np.ndarray]:
    """Batch of windows [B, n] -> logits [B, A], one [1, T] session call per sequence, as on a
    device; `no_action` is the model's "no previous action" token (`ADConfig.num_actions`).
    Takes the torch step function's arguments; episode_returns reach the session where it has
    that input."""
    names = [i.name for i in session.get_inputs()]

    def step(states, prev_actions, prev_rewards, episode_returns):
        batch, n = states.shape
        padded = _feed(names, window, no_action)
        padded["valid_length"][0] = n
        tokens = {"states": states, "prev_actions": prev_actions, "prev_rewards": prev_rewards,
                  "episode_returns": episode_returns}
        logits = []
        for i in range(batch):
            for name in names[:-1]:
                padded[name][0, :n] = tokens[name][i]
            logits.append(session.run(None, padded)[0][0])
        return np.stack(logits)

    return step


def step_latency_ms(session, window: int, calls: int = 200) -> float:
    """Mean milliseconds of one [1, T] call with a full window, after a warm-up."""
    feed = _feed([i.name for i in session.get_inputs()], window, 0)
    for _ in range(calls // 10):
        session.run(None, feed)
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    return (time.perf_counter() - started) / calls * 1000
