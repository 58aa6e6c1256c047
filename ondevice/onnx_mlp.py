"""ONNX graphs for MLP policies, built from NumPy weights.

Every ONNX actor tinypolicy writes (the exported RLx2 actor, its masked-dense twin, a
policy retrained on the robot) goes through `policy_onnx`, so they share one contract:

    obs float32 [batch, obs_dim] in env units
      -> (obs - obs_mean) / obs_std            (omitted when it is the identity)
      -> Gemm -> act -> ... -> Gemm            (hidden activation relu or tanh)
      -> tanh or clip(-1, 1)                   (the policy's squashing)
      -> * (high - low) / 2 + (high + low) / 2
    -> actions float32 [batch, act_dim] in env units

This module imports only NumPy and onnx: the on-device retraining path uses it where
PyTorch is not installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .artefact import atomic_write
from .errors import UserError

OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: loadable by ONNX Runtime >= 1.11
HIDDEN_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "elu": "Elu"}  # ONNX Elu: alpha 1, as trained
OUTPUTS = ("tanh", "clip")


def policy_onnx(weights: list[np.ndarray], biases: list[np.ndarray], hidden_activation: str, output: str,
                obs_mean, obs_std, action_low, action_high, metadata: dict[str, str] | None = None,
                graph_name: str = "tinypolicy_actor") -> onnx.ModelProto:
    """The ONNX model of an MLP policy; `weights[k]` is [out, in] as in `nn.Linear`."""
    if hidden_activation not in HIDDEN_ACTIVATIONS:
        raise ValueError(f"hidden_activation must be one of {sorted(HIDDEN_ACTIVATIONS)}, got {hidden_activation!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not weights or len(weights) != len(biases):
        raise ValueError("need one bias per weight matrix and at least one layer")
    for k, (w, b) in enumerate(zip(weights, biases)):
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"layer {k}: weight {w.shape} and bias {b.shape} do not fit")
        if k and w.shape[1] != weights[k - 1].shape[0]:
            raise ValueError(f"layer {k} takes {w.shape[1]} inputs, layer {k - 1} gives {weights[k - 1].shape[0]}")
    obs_dim, act_dim = weights[0].shape[1], weights[-1].shape[0]
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)
    obs_mean, obs_std = f32(obs_mean).reshape(obs_dim), f32(obs_std).reshape(obs_dim)
    low, high = f32(action_low).reshape(act_dim), f32(action_high).reshape(act_dim)

    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(f32(value), name))
        return name

    x = "obs"
    if np.any(obs_mean != 0) or np.any(obs_std != 1):
        nodes.append(helper.make_node("Sub", [x, const("obs_mean", obs_mean)], ["obs_centred"]))
        nodes.append(helper.make_node("Div", ["obs_centred", const("obs_std", obs_std)], ["obs_normalised"]))
        x = "obs_normalised"
    for k, (w, b) in enumerate(zip(weights, biases)):
        y = f"layer{k}"
        nodes.append(helper.make_node("Gemm", [x, const(f"layer{k}.weight", w), const(f"layer{k}.bias", b)],
                                      [y], transB=1, name=f"layer{k}"))
        x = y
        if k < len(weights) - 1:
            nodes.append(helper.make_node(HIDDEN_ACTIVATIONS[hidden_activation], [x], [f"{y}.act"]))
            x = f"{y}.act"
    if output == "tanh":
        nodes.append(helper.make_node("Tanh", [x], ["squashed"]))
    else:
        nodes.append(helper.make_node("Clip", [x, const("clip_low", np.float32(-1.0)),
                                               const("clip_high", np.float32(1.0))], ["squashed"]))
    nodes.append(helper.make_node("Mul", ["squashed", const("action_scale", (high - low) / 2)], ["scaled"]))
    nodes.append(helper.make_node("Add", ["scaled", const("action_offset", (high + low) / 2)], ["actions"]))

    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["batch", act_dim])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tinypolicy", ir_version=IR_VERSION)
    helper.set_model_props(model, {str(k): str(v) for k, v in (metadata or {}).items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write atomically (a temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(model.SerializeToString()))
    return path


def read_policy_onnx(path: str | Path) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, str]]:
    """Weights, biases and metadata of a policy written by `policy_onnx` (e.g. as a mask).

    Refuses, with a `UserError`, a file that is missing, not ONNX, or not such a policy.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and the checker raise many types for corrupt files
        raise UserError(f"cannot read {path}: not a valid ONNX model ({type(exc).__name__})") from None
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if not gemms or any(len(n.input) != 3 or n.input[1] not in tensors or n.input[2] not in tensors for n in gemms):
        raise UserError(f"{path} is not a tinypolicy MLP policy (no Gemm layers with constant weights)")
    weights = [tensors[n.input[1]].astype(np.float32) for n in gemms]
    biases = [tensors[n.input[2]].astype(np.float32) for n in gemms]
    return weights, biases, {p.key: p.value for p in model.metadata_props}
