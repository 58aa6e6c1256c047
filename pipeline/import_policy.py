"""`tinypolicy import`: a policy trained elsewhere -> a dense tinypolicy checkpoint.

Reads a Stable-Baselines3 model zip (TD3, DDPG, SAC with their critics; PPO, A2C actor
only), a PyTorch state dict of an MLP actor (CleanRL's layout and the like), or an ONNX
MLP actor, and writes the checkpoint `train` writes, so every later stage takes it.

No user file is ever unpickled: tensors are read with `torch.load(weights_only=True)`,
an SB3 zip's metadata from the plain fields of its `data` JSON (never its base64 pickles),
observation statistics from an .npz (`allow_pickle=False`) or a JSON file. What only a
pickle knows (a VecNormalize file, an activation class a zip does not name in plain text)
comes from a flag, and the error says which.

Every source is first read into a `ForeignActor` (plain arrays, in the source's own
terms), then mapped onto our actor classes exactly:

- the hidden activation (relu or tanh) and observation normalisation (obs_mean, obs_std
  buffers) are properties of the actor (models/networks.py), written as such by export;
- a tanh output must already scale to the env's action bounds (it is our actor's own);
- a clip to the action bounds (SB3's `predict` clips PPO's unbounded Gaussian mean; an
  ONNX Clip) is folded into the last layer, z' = (z - centre) / half-range, so that our
  clip to [-1, 1] scaled to the bounds gives the same action; an unsquashed output is
  clipped to the bounds the same way (every Gymnasium env clips its actions itself);
- SAC's mean and log-std heads become the two halves of our Gaussian actor's last layer.

An actor-only import (PPO, A2C, a state dict, an ONNX actor) has no `critic` key; its
`source` record says where it came from.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from tinypolicy.checkpoint import CHECKPOINT_FILE, FORMAT, VERSION, load_torch_artefact, save_checkpoint
from tinypolicy.envs import actor_policy, env_spaces, make_env, require_dims
from tinypolicy.export.bundle import rollout_observations
from tinypolicy.export.runtimes import ort_session
from tinypolicy.models import TwinCritic, make_actor, sparse_layers, weight_sparsity
from tinypolicy.ondevice.artefact import prepare_output_dir, sha256_file
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.settings import ImportConfig, TrainConfig
from tinypolicy.pipeline.train import config_record

Layer = tuple[np.ndarray, np.ndarray]  # weight [out, in], bias [out], float64

# SB3 `policy_class.__module__` -> the algorithms it serves; the zip's tensors tell TD3 from DDPG,
# and its plain `data` JSON PPO from A2C (only PPO saves n_epochs).
SB3_MODULES = {"stable_baselines3.td3.policies": "TD3", "stable_baselines3.sac.policies": "SAC",
               "stable_baselines3.common.policies": "PPO/A2C"}
SB3_DEFAULT_ACTIVATION = {"TD3": "relu", "DDPG": "relu", "SAC": "relu", "PPO": "tanh", "A2C": "tanh"}
TORCH_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh"}
ONNX_ACTIVATIONS = {"Relu": "relu", "Tanh": "tanh"}
SUPPORTED = "Stable-Baselines3 TD3, SAC, DDPG, PPO and A2C with continuous (Box) actions"
VEC_NORMALIZE_HINT = ("save its statistics as plain arrays instead: "
                      "np.savez('obs_stats.npz', mean=venv.obs_rms.mean, var=venv.obs_rms.var), "
                      "then pass --obs-stats obs_stats.npz")
# Names of a state dict's tensors that belong to no actor (CleanRL's Agent keeps its critic
# beside the actor; SB3-style dicts keep targets).
NOT_ACTOR = re.compile(r"critic|value|qf|q_net|vf|target", re.IGNORECASE)
LOG_STD = re.compile(r"log_?std", re.IGNORECASE)
# A mis-read ONNX graph is off by 1e-2 or more; float32 round-off between ONNX Runtime and
# PyTorch on visited states stays orders of magnitude below this.
ONNX_CHECK_TOLERANCE = 1e-4


@dataclass
class ForeignActor:
    """An MLP actor as its source computes it, before it becomes one of ours.

    action = post(W_L act(... act(W_1 (obs - obs_mean) / obs_std + b_1) ...) + b_L), with
    post: "tanh" (tanh(z) * post_scale + post_offset), "clip" (clip(z, clip_low, clip_high))
    or "none" (z itself)."""
    layers: list[Layer]
    activation: str                  # "relu" or "tanh"
    output: str                      # "tanh", "clip" or "none"
    post_scale: np.ndarray | None = None
    post_offset: np.ndarray | None = None
    clip_low: np.ndarray | None = None
    clip_high: np.ndarray | None = None
    log_std_head: Layer | None = None   # a state-dependent log-std (SAC)
    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def obs_dim(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def act_dim(self) -> int:
        return self.layers[-1][0].shape[0]


@dataclass
class Source:
    """Everything read from the source file."""
    kind: str                        # "sb3", "state_dict" or "onnx"
    algo: str | None                 # SB3's algorithm
    actor: ForeignActor
    actor_target: ForeignActor | None = None
    critic: list[list[Layer]] | None = None         # Q heads, each a list of layers on [obs, action in [-1, 1]]
    critic_target: list[list[Layer]] | None = None


# ----------------------------------------------------------------------------- small helpers

def _array(t: Any) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)


def _chain(layers: list[Layer], where: str) -> list[Layer]:
    """`layers`, refused unless each takes what the one before gives."""
    if not layers:
        raise UserError(f"{where}: no linear layers found")
    for k in range(1, len(layers)):
        if layers[k][0].shape[1] != layers[k - 1][0].shape[0]:
            raise UserError(f"{where}: layer {k} takes {layers[k][0].shape[1]} inputs but layer {k - 1} gives "
                            f"{layers[k - 1][0].shape[0]}; not an MLP")
    return layers


def _indexed_layers(state: dict[str, torch.Tensor], prefix: str, where: str) -> list[Layer]:
    """The layers `prefix`N.weight / `prefix`N.bias of an nn.Sequential, in index order
    (none for an empty one)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    indices = sorted(int(m.group(1)) for key in state if (m := pattern.match(key)))
    return [_linear(state, f"{prefix}{i}", where) for i in indices]


def _linear(state: dict[str, torch.Tensor], name: str, where: str) -> Layer:
    weight, bias = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    if weight is None or bias is None or weight.dim() != 2 or bias.shape != (weight.shape[0],):
        raise UserError(f"{where}: {name} is not a linear layer with a bias")
    return _array(weight), _array(bias)


def _heads(state: dict[str, torch.Tensor], prefix: str, where: str) -> list[list[Layer]] | None:
    """SB3's Q heads `prefix`.qf0, qf1, ... (None when there are none)."""
    count = len({m.group(1) for key in state if (m := re.match(re.escape(prefix) + r"\.qf(\d+)\.", key))})
    return [_chain(_indexed_layers(state, f"{prefix}.qf{h}.", where), where) for h in range(count)] or None


def _read_torch(data: bytes | Path, where: str) -> Any:
    """A torch file's contents, loaded with weights_only=True: a file of pickled Python objects
    (a whole module, a VecNormalize) is refused, never unpickled."""
    try:
        return torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu",
                          weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        if type(exc).__name__ == "UnpicklingError":  # the weights-only unpickler met a Python object
            raise UserError(f"{where} holds pickled Python objects, which tinypolicy never unpickles: save the "
                            "actor's weights alone (torch.save(actor.state_dict(), path)) or pass a "
                            f"Stable-Baselines3 zip or an ONNX file; for VecNormalize statistics, {VEC_NORMALIZE_HINT}"
                            ) from None
        raise UserError(f"cannot read {where}: not a Stable-Baselines3 zip, a PyTorch state dict or an ONNX "
                        f"model ({type(exc).__name__})") from None


# ----------------------------------------------------------------------------- Stable-Baselines3

def _sb3_json(archive: zipfile.ZipFile, where: str) -> dict[str, Any]:
    try:
        data = json.loads(archive.read("data"))
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{where}: cannot read its `data` JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: its `data` JSON is not an object")
    return data


def _space_type(data: dict[str, Any], key: str) -> str:
    """A space's class name from its plain ":type:" string, e.g. "Box"."""
    text = str((data.get(key) or {}).get(":type:", ""))
    return text.rstrip("'>").rsplit(".", 1)[-1]


def _sb3_activation(kwargs: dict[str, Any], algo: str, given: str | None, where: str) -> str:
    """`given` (--activation), else the activation class policy_kwargs names in plain text
    (SB3 writes each entry's repr beside the pickle, which alone holds the class), else
    SB3's default for the algorithm."""
    if given:
        return given
    text = kwargs.get("activation_fn")
    if text is None:
        return SB3_DEFAULT_ACTIVATION[algo]
    name = str(text).rstrip("'>").rsplit(".", 1)[-1]
    if name not in TORCH_ACTIVATIONS:
        raise UserError(f"{where}: cannot use activation {text!r} (its class is only in the zip's pickle, which "
                        "tinypolicy never unpickles, and tinypolicy's actors use ReLU or Tanh); give it with "
                        "--activation relu|tanh")
    return TORCH_ACTIVATIONS[name]


def read_sb3(path: Path, activation: str | None = None) -> Source:
    where = str(path)
    with zipfile.ZipFile(path) as archive:
        data = _sb3_json(archive, where)
        try:
            state = _read_torch(archive.read("policy.pth"), f"{where}:policy.pth")
        except KeyError:
            raise UserError(f"{where} is a zip without policy.pth: not a Stable-Baselines3 model") from None
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    if module not in SB3_MODULES:
        name = module.split(".")[1].upper() if module.count(".") >= 2 else (module or "unknown")
        raise UserError(f"{where} is a {name} model ({module or 'no policy class'}); tinypolicy imports {SUPPORTED}")
    if _space_type(data, "action_space") != "Box":
        raise UserError(f"{where} acts in a {_space_type(data, 'action_space') or 'non-Box'} action space; "
                        f"tinypolicy imports {SUPPORTED}")
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UserError(f"{where}: policy.pth is not a state dict of tensors")
    kwargs = data.get("policy_kwargs") or {}
    if "features_extractor_class" in kwargs and "FlattenExtractor" not in str(kwargs["features_extractor_class"]):
        raise UserError(f"{where} uses a custom features extractor; tinypolicy imports MLP policies on flat "
                        "observations")
    algo = SB3_MODULES[module]
    if algo == "PPO/A2C":
        return _sb3_on_policy(state, kwargs, "PPO" if "n_epochs" in data else "A2C", activation, where)
    if kwargs.get("use_sde"):
        raise UserError(f"{where} uses gSDE, whose deterministic action clips the mean before tanh; tinypolicy "
                        "imports SAC without gSDE")
    critic, critic_target = _heads(state, "critic", where), _heads(state, "critic_target", where)
    if critic is not None and len(critic) > 2:
        raise UserError(f"{where} has {len(critic)} Q heads (n_critics); tinypolicy's critic has two")
    if algo == "TD3" and critic is not None and len(critic) == 1:
        algo = "DDPG"  # SB3's DDPG is its TD3 with one Q head
    activation = _sb3_activation(kwargs, algo, activation, where)
    if algo == "SAC":
        actor = ForeignActor(_chain([*_indexed_layers(state, "actor.latent_pi.", where),
                                     _linear(state, "actor.mu", where)], where),
                             activation, "tanh", log_std_head=_linear(state, "actor.log_std", where),
                             notes=[("SAC: the log-std head is kept as is; tinypolicy's actor squashes it into [-5, 2] "
                                     "with tanh where SB3 clamps it to [-20, 2], so exploration in fine-tuning starts "
                                     "near, not at, SB3's (the deterministic action is exact)")])
        return Source("sb3", algo, actor, critic=critic, critic_target=critic_target)
    actor = ForeignActor(_chain(_indexed_layers(state, "actor.mu.", where), where), activation, "tanh")
    target = ForeignActor(_chain(_indexed_layers(state, "actor_target.mu.", where), where), activation, "tanh")
    return Source("sb3", algo, actor, target, critic, critic_target)


def _sb3_on_policy(state: dict[str, torch.Tensor], kwargs: dict[str, Any], algo: str, activation: str | None,
                   where: str) -> Source:
    """PPO and A2C: the policy trunk and action_net give the Gaussian's mean; SB3's
    deterministic `predict` clips it to the bounds (tanh with `squash_output`). The
    state-independent log-std is not part of the deterministic policy."""
    if "log_std" not in state or "action_net.weight" not in state:
        raise UserError(f"{where}: an actor-critic policy without a Gaussian action head (log_std, action_net); "
                        f"tinypolicy imports {SUPPORTED}")
    layers = _chain([*_indexed_layers(state, "mlp_extractor.policy_net.", where),
                     _linear(state, "action_net", where)], where)
    actor = ForeignActor(layers, _sb3_activation(kwargs, algo, activation, where),
                         "tanh" if kwargs.get("squash_output") else "clip",
                         notes=[(f"{algo}: actor only; the deterministic action is the Gaussian mean, clipped to "
                                 "the action bounds (tanh-squashed with squash_output) as SB3's predict acts")])
    return Source("sb3", algo, actor)


# ----------------------------------------------------------------------------- state dicts

def read_state_dict(path: Path, activation: str | None = None) -> Source:
    """A PyTorch state dict of an MLP actor: deterministic (CleanRL TD3/DDPG: tanh output),
    Gaussian with a log-std head (CleanRL SAC) or with a state-independent log-std (CleanRL
    PPO: the mean, clipped to the bounds). Layers are taken in the dict's order; tensors
    whose names say critic, value, qf or target are skipped. A tuple of state dicts (CleanRL
    saves (actor, qf1, qf2)) gives its first. The activation is `activation`, else CleanRL's:
    tanh for the PPO layout, relu otherwise."""
    where = str(path)
    content = _read_torch(path, where)
    if isinstance(content, (tuple, list)) and content:
        content = content[0]
    if isinstance(content, dict) and content.get("format") == FORMAT:
        raise UserError(f"{where} is already a tinypolicy checkpoint")
    if not isinstance(content, dict) or not all(isinstance(t, torch.Tensor) for t in content.values()):
        raise UserError(f"{where} is not a state dict of tensors")
    state = {k: v for k, v in content.items() if not NOT_ACTOR.search(k)}
    names = [k[:-len(".weight")] for k, v in state.items()
             if k.endswith(".weight") and v.dim() == 2 and f"{k[:-len('.weight')]}.bias" in state]
    heads = [n for n in names if LOG_STD.search(n)]
    free_log_std = [k for k, v in state.items() if LOG_STD.search(k) and not k.endswith((".weight", ".bias"))]
    if len(heads) > 1:
        raise UserError(f"{where}: more than one log-std layer ({', '.join(heads)})")
    layers = _chain([_linear(state, n, where) for n in names if n not in heads], where)
    notes = []
    if heads:
        output, log_std_head = "tanh", _linear(state, heads[0], where)
        if log_std_head[0].shape != layers[-1][0].shape:
            raise UserError(f"{where}: log-std layer {heads[0]} {list(log_std_head[0].shape)} does not match the mean "
                            f"layer {list(layers[-1][0].shape)}")
    elif free_log_std:
        output, log_std_head = "clip", None
        notes.append("Gaussian with a state-independent log-std: actor only; the deterministic action is the mean "
                     "clipped to the action bounds")
    else:
        output, log_std_head = "tanh", None
    actor = ForeignActor(layers, activation or ("tanh" if free_log_std and not heads else "relu"), output,
                         log_std_head=log_std_head, notes=notes)
    if "action_scale" in state and "action_bias" in state:  # CleanRL's actors carry their bounds
        actor.post_scale, actor.post_offset = _array(state["action_scale"]), _array(state["action_bias"])
    return Source("state_dict", None, actor)


# ----------------------------------------------------------------------------- ONNX

def _onnx_constant(node: onnx.NodeProto) -> np.ndarray:
    value = onnx.helper.get_attribute_value(node.attribute[0])
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _per_unit(value: np.ndarray, n: int, what: str, where: str) -> np.ndarray:
    """A constant operand as one value per unit (broadcast like the ONNX op would)."""
    try:
        return np.broadcast_to(np.asarray(value, np.float64), (1, n)).reshape(n).copy()
    except ValueError:
        raise UserError(f"{where}: {what} has shape {list(np.shape(value))}, not one value per unit of {n}") from None


def _onnx_path(model: onnx.ModelProto, consts: dict[str, np.ndarray], where: str) -> list[onnx.NodeProto]:
    """The nodes from the graph's input to its first output, in order: each must take one
    non-constant input (a chain); branches to other outputs (a value head) are ignored."""
    graph = model.graph
    inputs = [i.name for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise UserError(f"{where}: an actor takes one input (the observation), this graph takes {len(inputs)}")
    producer = {out: node for node in graph.node for out in node.output}
    path, name = [], graph.output[0].name
    while name != inputs[0]:
        node = producer.get(name)
        if node is None:
            raise UserError(f"{where}: output {graph.output[0].name} does not depend on input {inputs[0]}")
        data = [i for i in node.input if i and i not in consts]
        if len(data) != 1:
            raise UserError(f"{where}: node {node.name or node.op_type} ({node.op_type}) combines {len(data)} "
                            "computed tensors; tinypolicy imports a chain of MatMul/Gemm, Add, activation, "
                            "normalisation and tanh/clip")
        path.append(node)
        name = data[0]
    return path[::-1]


def read_onnx(path: Path, activation: str | None = None) -> Source:
    """An ONNX MLP actor: optional normalisation (Sub/Div/Mul/Add of constants), then Gemm or
    MatMul+Add layers with Relu or Tanh between them, then optionally Tanh or Clip and a
    constant scaling. The first graph output is the action."""
    where = str(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own types for foreign files
        raise UserError(f"cannot read {where} as an ONNX model ({type(exc).__name__})") from None
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consts.update({node.output[0]: _onnx_constant(node) for node in model.graph.node if node.op_type == "Constant"})
    mean: np.ndarray | float = 0.0
    std: np.ndarray | float = 1.0
    layers: list[Layer] = []
    activations: list[str] = []
    squash: str | None = None        # the op after the last linear layer so far
    clip = (None, None)
    scale: np.ndarray | float = 1.0  # constant affine after the squash
    offset: np.ndarray | float = 0.0
    for node in _onnx_path(model, consts, where):
        op, const = node.op_type, [consts[i] for i in node.input[1:] if i in consts]
        operand = [consts[i] for i in node.input if i in consts]
        if op == "Identity":
            continue
        if op in ("Gemm", "MatMul"):
            weight = const[0].astype(np.float64) if const else None
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if weight is None or weight.ndim != 2 or node.input[0] in consts or attrs.get("transA", 0):
                raise UserError(f"{where}: {op} {node.name} is not observation x constant weight")
            weight = weight if attrs.get("transB", 0) else weight.T
            bias = np.zeros(weight.shape[0]) if len(const) < 2 else \
                attrs.get("beta", 1.0) * _per_unit(const[1], weight.shape[0], f"{node.name} bias", where)
            if layers and squash is None:
                raise UserError(f"{where}: two linear layers without an activation between them")
            if squash is not None:
                if squash not in ONNX_ACTIVATIONS or np.any(np.asarray(scale) != 1) or np.any(np.asarray(offset) != 0):
                    raise UserError(f"{where}: {squash} between linear layers; hidden activations must be Relu "
                                    "or Tanh")
                activations.append(squash)
                squash = None
            layers.append((attrs.get("alpha", 1.0) * weight, bias))
        elif op in ONNX_ACTIVATIONS or op == "Clip":
            if not layers:
                raise UserError(f"{where}: {op} on the observation before the first layer is not supported")
            if squash is not None:
                raise UserError(f"{where}: {squash} followed by {op}; not an MLP actor")
            squash = op
            if op == "Clip":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                low = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attrs.get("min")
                high = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else attrs.get("max")
                if low is None or high is None:
                    raise UserError(f"{where}: Clip {node.name} without both bounds")
                clip = (np.asarray(low, np.float64), np.asarray(high, np.float64))
        elif op in ("Add", "Sub", "Mul", "Div"):
            if len(operand) != 1 or node.input[0] in consts and op in ("Sub", "Div"):
                raise UserError(f"{where}: {op} {node.name} is not tensor {op.lower()} constant")
            c = np.asarray(operand[0], np.float64)
            if not layers:  # normalisation: x' = (x - mean) / std
                if op == "Sub":
                    mean = mean + c * std
                elif op == "Add":
                    mean = mean - c * std
                elif op == "Div":
                    std = std * c
                else:
                    std = std / c
            elif squash is None:  # folds into the last layer
                w, b = layers[-1]
                c = _per_unit(c, w.shape[0], f"{node.name} operand", where)
                if op in ("Add", "Sub"):
                    layers[-1] = (w, b + c if op == "Add" else b - c)
                else:
                    f = c if op == "Mul" else 1.0 / c
                    layers[-1] = (w * f[:, None], b * f)
            elif op in ("Add", "Sub"):
                offset = offset + (c if op == "Add" else -c)
            else:
                f = c if op == "Mul" else 1.0 / c
                scale, offset = scale * f, offset * f
        else:
            raise UserError(f"{where}: unsupported ONNX op {op} ({node.name}); tinypolicy imports a chain of "
                            "MatMul/Gemm, Add, Relu/Tanh, normalisation and tanh/clip")
    if not layers:
        raise UserError(f"{where}: no MatMul or Gemm layers")
    if len(set(activations)) > 1:
        raise UserError(f"{where}: mixes hidden activations {sorted(set(activations))}; tinypolicy's actors use one")
    if squash in ONNX_ACTIVATIONS and squash != "Tanh":
        raise UserError(f"{where}: the action comes out of {squash}; an actor ends in a linear layer, Tanh or Clip")
    obs_dim, act_dim = layers[0][0].shape[1], layers[-1][0].shape[0]
    actor = ForeignActor(layers, activation or (ONNX_ACTIVATIONS[activations[0]] if activations else "relu"), "none")
    scale, offset = _per_unit(scale, act_dim, "action scale", where), _per_unit(offset, act_dim, "action offset", where)
    if squash == "Tanh":
        actor.output, actor.post_scale, actor.post_offset = "tanh", scale, offset
    elif squash == "Clip":  # clip(z, lo, hi) * s + o = clip(z * s + o, lo * s + o, hi * s + o) for s > 0
        if np.any(scale <= 0):
            raise UserError(f"{where}: a negative or zero scale after Clip")
        actor.output = "clip"
        actor.clip_low = _per_unit(clip[0], act_dim, "Clip min", where) * scale + offset
        actor.clip_high = _per_unit(clip[1], act_dim, "Clip max", where) * scale + offset
        w, b = layers[-1]
        layers[-1] = (w * scale[:, None], b * scale + offset)
    else:
        actor.notes.append("unsquashed output: clipped to the action bounds, as the env clips its actions")
    if np.any(np.asarray(mean) != 0) or np.any(np.asarray(std) != 1):
        actor.obs_mean = _per_unit(mean, obs_dim, "observation mean", where)
        actor.obs_std = _per_unit(std, obs_dim, "observation scale", where)
        finite = np.all(np.isfinite(actor.obs_mean)) and np.all(np.isfinite(actor.obs_std))
        if not (finite and np.all(actor.obs_std > 0)):
            raise UserError(f"{where}: its observation normalisation is not finite or divides by zero")
    return Source("onnx", None, actor)


# ----------------------------------------------------------------------------- source -> checkpoint

def read_source(path: str | Path, activation: str | None = None) -> Source:
    """The policy in `path`, whatever kind of file it is; `activation` (--activation) overrides
    what the file says or what its kind implies."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"policy file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        return read_onnx(path, activation)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
        if {"data", "policy.pth"} <= names:
            return read_sb3(path, activation)
    return read_state_dict(path, activation)


def read_obs_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(mean, std, clip) from an .npz or .json holding `mean` and `var` (VecNormalize's obs_rms;
    std = sqrt(var + epsilon), epsilon 1e-8 unless given) or `mean` and `std`, and optionally
    `clip_obs` (VecNormalize's clip of the normalised observation, None when absent)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"observation statistics {path} do not exist")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                stats = {k: npz[k] for k in npz.files}
        elif path.suffix.lower() == ".json":
            stats = json.loads(path.read_text())
        elif path.read_bytes()[:1] == b"\x80":
            raise UserError(f"observation statistics {path} are a pickle (VecNormalize.save writes one), which "
                            f"tinypolicy never unpickles; {VEC_NORMALIZE_HINT}")
        else:
            raise UserError(f"observation statistics {path}: expected an .npz or .json file with mean and var")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read observation statistics {path}: {exc}") from None
    if not isinstance(stats, dict) or "mean" not in stats or not ({"var", "std"} & set(stats)):
        raise UserError(f"observation statistics {path} must hold mean and var (or std)")
    try:
        mean = np.asarray(stats["mean"], np.float64)
        std = np.asarray(stats["std"], np.float64) if "std" in stats else \
            np.sqrt(np.asarray(stats["var"], np.float64) + float(stats.get("epsilon", 1e-8)))
    except (TypeError, ValueError):
        raise UserError(f"observation statistics {path}: mean and var must be numbers") from None
    if mean.ndim != 1 or std.shape != mean.shape:
        raise UserError(f"observation statistics {path}: mean and var must be vectors of one length")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise UserError(f"observation statistics {path} must be finite, with positive variances")
    try:
        clip = float(stats["clip_obs"]) if "clip_obs" in stats else None
    except (TypeError, ValueError):
        raise UserError(f"observation statistics {path}: clip_obs must be a number") from None
    return mean, std, clip


def _fit_output(actor: ForeignActor, low: np.ndarray, high: np.ndarray, where: str) -> tuple[list[Layer], str]:
    """The layers and squash ("tanh" or "clip") of our actor that act as `actor` does."""
    centre, half = (high + low) / 2.0, (high - low) / 2.0
    layers = list(actor.layers)
    if actor.output == "tanh":
        scale = half if actor.post_scale is None else actor.post_scale
        offset = centre if actor.post_offset is None else actor.post_offset
        _check_bounds(offset - scale, offset + scale, low, high, f"{where} scales its tanh output")
        return layers, "tanh"
    if actor.clip_low is not None:
        _check_bounds(actor.clip_low, actor.clip_high, low, high, f"{where} clips its actions")
    w, b = layers[-1]
    layers[-1] = (w / half[:, None], (b - centre) / half)
    return layers, "clip"


def _check_bounds(lo: np.ndarray, hi: np.ndarray, low: np.ndarray, high: np.ndarray, what: str) -> None:
    """Refuse action bounds [lo, hi] other than the env's [low, high]."""
    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.allclose(a, b, rtol=1e-6, atol=1e-7))

    def text(a: np.ndarray) -> str:
        return f"[{', '.join(f'{x:g}' for x in a)}]"

    if not (same(lo, low) and same(hi, high)):
        raise UserError(f"{what} to {text(lo)} .. {text(hi)}, not to the env's action bounds {text(low)} .. "
                        f"{text(high)}")


def _copy_layers(module: torch.nn.Module, heads: list[list[Layer]], where: str) -> None:
    """Load `heads` (one list of layers per ensemble member) into `module`'s sparse layers."""
    with torch.no_grad():
        for k, layer in enumerate(sparse_layers(module)):
            for member, head in enumerate(heads):
                w, b = head[k]
                if tuple(layer.weight.shape[1:]) != w.shape:
                    raise UserError(f"{where}: layer {k} has shape {list(w.shape)} where "
                                    f"{list(layer.weight.shape[1:])} fits the env")
                layer.weight[member] = torch.from_numpy(w)
                layer.bias[member] = torch.from_numpy(b)


def _build_actor(actor: ForeignActor, spaces: dict[str, Any], where: str) -> tuple[torch.nn.Module, str, dict]:
    """Our actor acting as `actor` does: the module, its algo ("td3": deterministic, "sac":
    Gaussian) and the architecture the checkpoint records for `make_actor`."""
    low, high = np.asarray(spaces["action_low"], np.float64), np.asarray(spaces["action_high"], np.float64)
    layers, output = _fit_output(actor, low, high, where)
    algo = "td3" if actor.log_std_head is None else "sac"
    architecture = {"activation": actor.activation, "obs_norm": actor.obs_mean is not None}
    if algo == "td3":
        architecture["output"] = output
    else:
        w, b = layers[-1]
        layers[-1] = (np.concatenate([w, actor.log_std_head[0]]), np.concatenate([b, actor.log_std_head[1]]))
    module = make_actor(algo, actor.obs_dim, actor.act_dim, [w.shape[0] for w, _ in layers[:-1]], low, high,
                        **architecture)
    _copy_layers(module, [layers], where)
    if actor.obs_mean is not None:
        module.obs_mean.copy_(torch.from_numpy(actor.obs_mean))
        module.obs_std.copy_(torch.from_numpy(actor.obs_std))
    return module.eval(), algo, architecture


def _critic(heads: list[list[Layer]], obs_dim: int, act_dim: int, hidden: list[int],
            norm: tuple[np.ndarray, np.ndarray, float | None] | None, where: str) -> TwinCritic:
    """Our twin critic from SB3's Q heads (one head, DDPG's, fills both). Observation
    normalisation folds into the first layer's observation columns: the critic is never
    exported, and fine-tuning feeds both networks raw observations."""
    sizes = [w.shape[0] for w, _ in heads[0][:-1]]
    if sizes != hidden:
        raise UserError(f"{where}: the critic's hidden sizes {sizes} differ from the actor's {hidden}; a tinypolicy "
                        "checkpoint has one list of hidden sizes")
    if norm is not None:
        mean, std, _ = norm
        folded = []
        for head in heads:
            w, b = head[0]
            w_obs = w[:, :obs_dim] / std
            folded.append([(np.concatenate([w_obs, w[:, obs_dim:]], axis=1), b - w_obs @ mean), *head[1:]])
        heads = folded
    critic = TwinCritic(obs_dim, act_dim, hidden)
    _copy_layers(critic, heads * (2 // len(heads)), where)
    return critic.eval()


def _refuse_other_output(path: Path, sha256: str) -> None:
    """Re-importing the same source into its folder replaces the checkpoint (flags may have
    changed); a checkpoint of anything else there (a training run, another import) is kept."""
    if not path.exists():
        return
    try:
        existing = load_torch_artefact(path, FORMAT, VERSION, (), "checkpoint")
    except UserError:
        existing = {}
    if (existing.get("source") or {}).get("sha256") != sha256:
        raise UserError(f"{path} exists and is not an import of this policy file; use another --out")


def import_policy(source: str | Path, env_id: str, out: str | Path, cfg: ImportConfig | None = None) -> dict[str, Any]:
    """Import the policy in `source` for `env_id` into `out`/checkpoint.pt (refusing a
    checkpoint of anything else there); returns a summary whose "checkpoint" is that file."""
    cfg = cfg or ImportConfig()
    source, where = Path(source), str(source)
    env = make_env(env_id)
    spaces = env_spaces(env)
    env.close()
    norm = None if cfg.obs_stats is None else read_obs_stats(cfg.obs_stats)
    read = read_source(source, cfg.activation)
    require_dims(env_id, {"obs_dim": read.actor.obs_dim, "act_dim": read.actor.act_dim}, f"{where}: its actor")
    if norm is not None:
        if read.actor.obs_mean is not None:
            raise UserError(f"{where} normalises its observations itself; drop --obs-stats")
        if norm[0].shape != (spaces["obs_dim"],):
            raise UserError(f"observation statistics {cfg.obs_stats} hold {norm[0].size} values; {env_id} has "
                            f"{spaces['obs_dim']} observations")

    if cfg.output == "clip" and read.actor.log_std_head is not None:
        raise UserError(f"{where} is a Gaussian actor with a log-std head (SAC), whose actions are tanh-squashed; "
                        "drop --output clip")

    def adapted(actor: ForeignActor) -> ForeignActor:
        """`actor` with what the flags add to what the file says."""
        actor = replace(actor, output=cfg.output or actor.output)
        if norm is None:
            return actor
        # the actor has no clamp after its normalisation: the same actions wherever VecNormalize's
        # clip is inactive, which a trained policy's own states (within a few std) leave it
        notes = actor.notes if norm[2] is None else actor.notes + [
            (f"VecNormalize clips normalised observations at +-{norm[2]:g}; the imported actor does not (the same "
             f"action on observations within {norm[2]:g} standard deviations of the statistics' mean)")]
        return replace(actor, obs_mean=norm[0], obs_std=norm[1], notes=notes)

    out = prepare_output_dir(out)
    path = out / CHECKPOINT_FILE
    sha256 = sha256_file(source)
    _refuse_other_output(path, sha256)
    foreign = adapted(read.actor)
    actor, algo, architecture = _build_actor(foreign, spaces, where)
    hidden = [w.shape[0] for w, _ in read.actor.layers[:-1]]
    record = {"kind": read.kind, "algo": read.algo, "path": str(source.resolve()), "sha256": sha256,
              "obs_stats": str(Path(cfg.obs_stats).resolve()) if cfg.obs_stats else None,
              "critic": None, "notes": list(foreign.notes)}
    data: dict[str, Any] = {
        "config": config_record(TrainConfig(env_id=env_id, algo=algo, method="dense", actor_sparsity=0.0,
                                            critic_sparsity=0.0, hidden=tuple(hidden))),
        "spaces": spaces, "steps_done": 0, "actor": actor.state_dict(), "actor_arch": architecture,
        "sparsity": {"actor": weight_sparsity(actor)}, "source": record,
    }
    if read.kind == "onnx":
        record["parity"] = _check_onnx(source, actor, env_id, cfg)
    if read.actor_target is not None:
        data["actor_target"] = _build_actor(adapted(read.actor_target), spaces, where)[0].state_dict()
    if read.critic is not None:
        critic = _critic(read.critic, spaces["obs_dim"], spaces["act_dim"], hidden, norm, where)
        target = _critic(read.critic_target or read.critic, spaces["obs_dim"], spaces["act_dim"], hidden, norm, where)
        data.update(critic=critic.state_dict(), critic_target=target.state_dict())
        data["sparsity"]["critic"] = weight_sparsity(critic)
        record["critic"] = "twin" if len(read.critic) == 2 else "one Q head, copied into both"
    save_checkpoint(path, data)
    return {"checkpoint": str(path), "env_id": env_id, "source": read.kind, "algo": read.algo, "hidden": hidden,
            **architecture, "critic": record["critic"], **({"parity": record["parity"]} if "parity" in record else {}),
            "notes": record["notes"]}


def _check_onnx(path: Path, actor: torch.nn.Module, env_id: str, cfg: ImportConfig) -> dict[str, Any]:
    """The imported actor against ONNX Runtime on the states it visits; refused beyond
    ONNX_CHECK_TOLERANCE (a graph read wrongly)."""
    obs = rollout_observations(actor_policy(actor), env_id, cfg.check_steps, cfg.seed)
    session = ort_session(path)
    name, batch = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    output = session.get_outputs()[0].name
    # Robot frameworks often export a fixed batch of one.
    rows = [obs] if batch != 1 else [obs[i:i + 1] for i in range(len(obs))]
    try:
        expected = np.concatenate([session.run([output], {name: r})[0] for r in rows])
    except Exception as exc:  # ONNX Runtime raises its own types for a graph it cannot run
        raise UserError(f"ONNX Runtime cannot run {path} on float32 observations: {str(exc).splitlines()[0]}") from None
    with torch.no_grad():
        got = actor(torch.from_numpy(obs)).numpy()
    error = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    if not error <= ONNX_CHECK_TOLERANCE:
        raise UserError(f"{path}: the imported actor differs from ONNX Runtime by {error:.2e} on visited states; "
                        "the graph is not one tinypolicy reads correctly")
    return {"observations": len(obs), "max_abs_error": error}
