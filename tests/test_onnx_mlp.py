"""The shared ONNX builder for MLP policies: parity with NumPy under ONNX Runtime."""
from __future__ import annotations

import subprocess
import sys
from itertools import pairwise

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import ROOT
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.onnx_mlp import policy_onnx, read_policy_onnx, save_onnx


def _random_policy(rng, sizes):
    weights = [rng.normal(size=(o, i)).astype(np.float32) * (rng.random((o, i)) < 0.3)
               for i, o in pairwise(sizes)]
    biases = [rng.normal(size=o).astype(np.float32) for o in sizes[1:]]
    return weights, biases


def _numpy_forward(weights, biases, activation, output, mean, std, low, high, obs):
    x = (obs - mean) / std
    act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}[activation]
    for k, (w, b) in enumerate(zip(weights, biases)):
        x = x @ w.T + b
        if k < len(weights) - 1:
            x = act(x)
    x = np.tanh(x) if output == "tanh" else np.clip(x, -1, 1)
    return x * (high - low) / 2 + (high + low) / 2


@pytest.mark.parametrize("activation,output,normalise", [("relu", "tanh", False), ("tanh", "clip", True)])
def test_onnx_matches_numpy_for_any_batch(tmp_path, activation, output, normalise):
    rng = np.random.default_rng(0)
    weights, biases = _random_policy(rng, [11, 32, 16, 3])
    mean = rng.normal(size=11).astype(np.float32) if normalise else np.zeros(11, np.float32)
    std = rng.uniform(0.5, 2, size=11).astype(np.float32) if normalise else np.ones(11, np.float32)
    low, high = np.array([-1, -2, 0], np.float32), np.array([1, 2, 0.4], np.float32)
    model = policy_onnx(weights, biases, activation, output, mean, std, low, high, {"env_id": "Hopper-v5"})
    path = save_onnx(model, tmp_path / "actor.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 257):
        obs = (rng.normal(size=(batch, 11)) * 5).astype(np.float32)
        got = session.run(["actions"], {"obs": obs})[0]
        want = _numpy_forward(weights, biases, activation, output, mean, std, low, high, obs)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    read_w, read_b, meta = read_policy_onnx(path)
    assert meta["env_id"] == "Hopper-v5"
    for a, b in zip(read_w + read_b, weights + biases):
        np.testing.assert_array_equal(a, b)


def test_mismatched_layers_are_rejected():
    rng = np.random.default_rng(1)
    weights, biases = _random_policy(rng, [4, 8, 2])
    with pytest.raises(ValueError, match="takes 7 inputs"):
        policy_onnx([weights[0], rng.normal(size=(2, 7))], biases, "relu", "tanh", 0, 1, -1, 1)


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="not a valid ONNX model"):
        read_policy_onnx(bad)
    with pytest.raises(UserError, match="does not exist"):
        read_policy_onnx(tmp_path / "missing.onnx")


def test_builder_does_not_import_torch():
    code = ("import sys; sys.modules['torch'] = None; import tinypolicy.ondevice.onnx_mlp, tinypolicy.ondevice.dataset; "
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
