"""On-device retraining: behaviour cloning from a distilled dataset with NumPy alone.

A robot that receives a distilled dataset (ondevice/dataset.py) retrains its own policy,
at its own size, in about a second, with no PyTorch and no simulator, and writes an ONNX
actor with the export stage's contract (observation in env units in, action in env units
out, normalisation inside).

The trainer follows the dataset's `BCRecipe` exactly (it is the distillation inner loop
written by hand): an MLP mean mu(s) with a learned state-independent log_std, loss
(1/D) sum_i -log N(a_i | mu(s_i), exp(log_std)^2) over the full batch, global gradient
norm clipped, then Adam at a constant learning rate. Orthogonal init (gain sqrt(2) for
hidden layers, 0.01 for the output layer), zero biases, log_std 0. The deployed action is
clip(mu(normalised obs), -1, 1) mapped to the env's bounds; labels beyond [-1, 1] are
regression targets for the unclipped mean (HaDES's bang-bang labels).

`--mask ACTOR.onnx` keeps the sparse topology of an exported actor: the zero pattern of
its weight initializers becomes a fixed mask (the hidden sizes come from the mask), the
masked weights start and stay exactly zero. The mask's own activations and head (the
RLx2 actor is ReLU with a tanh head) are not copied: the hidden activation is the
dataset recipe's unless `--activation` is given, and the head is always the recipe's
linear mean clipped to [-1, 1].

`--init INIT.npz` starts from given parameters instead of the seeded init: a HaDES-F
dataset is distilled for one fixed init (distill writes it as policy_init.npz), and from
a fresh init it usually trains a much worse policy.

A robot installs tinypolicy, or copies the ondevice/ folder alone (it imports nothing else
from the project; needs numpy and onnx, onnxruntime optional for the self-check), and runs
`python -m ondevice.retrain DATASET --out policy.onnx` beside it. On the development side
the same is `tinypolicy retrain ...`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

import numpy as np

from . import __version__
from .artefact import check_output_file
from .dataset import ACTIVATIONS, BCRecipe, Dataset, dataset_files, load_dataset
from .errors import UserError, run_command
from .flags import ArgumentParser, layer_sizes, positive_float, positive_int, random_seed
from .onnx_mlp import policy_onnx, read_policy_onnx, save_onnx

ADAM_BETAS = (0.9, 0.999)
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6); matched for equal curves
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# Deliberate twin: tinypolicy.models.bc trains the same recipe batched in torch (the HaDES inner
# loop) with the same parameter layout; this copy exists because a robot has no torch.
@dataclass
class MLPParams:
    """weights[l] is [out, in] (the ONNX writer's layout); log_std is [act_dim]."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    log_std: np.ndarray

    @property
    def sizes(self) -> list[int]:
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]


class _FlatLayout:
    """All parameters in one contiguous vector, with per-layer views.

    Clipping and Adam then cost a handful of vector operations per step however many
    layers there are, which keeps a 200-step run on a 64-64 net in tens of milliseconds.
    """

    def __init__(self, sizes: list[int], act_dim: int):
        self.shapes = [(o, i) for i, o in pairwise(sizes)]
        self.act_dim = act_dim
        self.size = sum(o * i + o for o, i in self.shapes) + act_dim

    def views(self, flat: np.ndarray) -> MLPParams:
        weights, biases, offset = [], [], 0
        for out_dim, in_dim in self.shapes:
            weights.append(flat[offset:offset + out_dim * in_dim].reshape(out_dim, in_dim))
            offset += out_dim * in_dim
            biases.append(flat[offset:offset + out_dim])
            offset += out_dim
        return MLPParams(weights, biases, flat[offset:offset + self.act_dim])

    def pack(self, params: MLPParams, dtype) -> np.ndarray:
        flat = np.empty(self.size, dtype=dtype)
        target = self.views(flat)
        for dst, src in zip(target.weights + target.biases, params.weights + params.biases):
            dst[...] = src
        target.log_std[...] = params.log_std
        return flat


def _orthogonal(rng: np.random.Generator, out_dim: int, in_dim: int, gain: float) -> np.ndarray:
    """A (semi-)orthogonal [out, in] matrix, as torch.nn.init.orthogonal_ draws it."""
    flat = rng.standard_normal((max(out_dim, in_dim), min(out_dim, in_dim)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    return gain * (q if out_dim >= in_dim else q.T)


def init_params(sizes: list[int], seed: int, masks: list[np.ndarray] | None = None) -> MLPParams:
    """The recipe's init. With masks, weights outside a mask are zero and the kept ones are
    scaled by 1/sqrt(layer density), as models.sparse does, so that each unit's
    pre-activation scale matches the dense init's despite its fewer inputs."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for layer, (in_dim, out_dim) in enumerate(pairwise(sizes)):
        gain = 0.01 if layer == len(sizes) - 2 else math.sqrt(2.0)
        weight = _orthogonal(rng, out_dim, in_dim, gain)
        if masks is not None:
            weight = weight * masks[layer] / math.sqrt(max(masks[layer].mean(), 1e-12))
        weights.append(weight.astype(np.float32))
        biases.append(np.zeros(out_dim, dtype=np.float32))
    return MLPParams(weights, biases, np.zeros(sizes[-1], dtype=np.float32))


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0.0, x, np.expm1(np.minimum(x, 0.0)))  # alpha 1; the minimum keeps expm1 from overflowing


def _elu_slope(h: np.ndarray) -> np.ndarray:
    return np.where(h > 0.0, 1.0, h + 1.0)  # exp(x) = h + 1 below zero


# Hidden activation (dataset.ACTIVATIONS) -> (the activation, which may overwrite its input;
# its slope d act / d x from the activation's output h, all the backward pass keeps).
_ACTIVATIONS = {
    "tanh": (lambda x: np.tanh(x, out=x), lambda h: 1.0 - h * h),
    "relu": (lambda x: np.maximum(x, 0.0, out=x), lambda h: h > 0),
    "elu": (_elu, _elu_slope),
}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown hidden activation {name!r}; known: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def activate(name: str, x: np.ndarray) -> np.ndarray:
    """Hidden activation `name` of the pre-activations `x` (a fresh array: it may be overwritten)."""
    return _activation(name)[0](x)


def _activation_slope(name: str, h: np.ndarray) -> np.ndarray:
    """d act / d x, from the activation's output h."""
    return _activation(name)[1](h)


def policy_mean(params: MLPParams, activation: str, states: np.ndarray) -> np.ndarray:
    """mu(s) in policy units, unclipped, for normalised states [N, obs_dim]."""
    h = states
    *hidden, last = range(len(params.weights))
    for layer in hidden:
        h = activate(activation, h @ params.weights[layer].T + params.biases[layer])
    return h @ params.weights[last].T + params.biases[last]


def loss_and_grad(params: MLPParams, activation: str, states: np.ndarray, actions: np.ndarray,
                  grads: MLPParams | None = None) -> float:
    """The recipe's Gaussian NLL (mean over pairs, summed over action dims). With `grads`
    (same layout as `params`) its gradient is written there."""
    inputs = [states]
    h = states
    for weight, bias in zip(params.weights[:-1], params.biases[:-1]):
        h = activate(activation, h @ weight.T + bias)
        inputs.append(h)
    mu = h @ params.weights[-1].T + params.biases[-1]

    inv_var = np.exp(-2.0 * params.log_std)
    error = actions - mu
    mean_sq = (error * error).mean(axis=0)
    loss = float(0.5 * (mean_sq * inv_var).sum() + params.log_std.sum() + HALF_LOG_2PI * len(inv_var))
    if grads is None:
        return loss

    grads.log_std[...] = 1.0 - mean_sq * inv_var
    delta = error * (-inv_var / states.shape[0])  # dL/dmu
    for layer in range(len(params.weights) - 1, -1, -1):
        np.matmul(delta.T, inputs[layer], out=grads.weights[layer])
        delta.sum(axis=0, out=grads.biases[layer])
        if layer:
            delta = delta @ params.weights[layer]
            h = inputs[layer]
            delta *= _activation_slope(activation, h)
    return loss


def train_bc(states: np.ndarray, actions: np.ndarray, recipe: BCRecipe, init: MLPParams,
             masks: list[np.ndarray] | None = None, dtype=np.float32) -> tuple[MLPParams, np.ndarray]:
    """Full-batch BC for `recipe.steps` steps from `init`.

    Returns the trained parameters (fresh arrays) and the loss before each step, the curve
    the torch inner loop (the HaDES trainer) reports for the same init.
    """
    layout = _FlatLayout(init.sizes, init.log_std.shape[0])
    flat = layout.pack(init, dtype)
    grad = np.zeros_like(flat)
    params, grads = layout.views(flat), layout.views(grad)
    grad_mask = None
    if masks is not None:
        mask_params = MLPParams([m.astype(dtype) for m in masks], [np.ones_like(b) for b in init.biases],
                                np.ones_like(init.log_std))
        grad_mask = layout.pack(mask_params, dtype)
        flat *= grad_mask
    states, actions = states.astype(dtype, copy=False), actions.astype(dtype, copy=False)

    beta1, beta2 = ADAM_BETAS
    exp_avg, exp_avg_sq = np.zeros_like(flat), np.zeros_like(flat)
    step_dir, denom = np.empty_like(flat), np.empty_like(flat)
    losses = np.empty(recipe.steps)
    for step in range(1, recipe.steps + 1):
        losses[step - 1] = loss_and_grad(params, recipe.activation, states, actions, grads)
        if grad_mask is not None:
            grad *= grad_mask
        norm = math.sqrt(float(np.dot(grad, grad)))
        clip = recipe.grad_clip / (norm + CLIP_EPS)
        if clip < 1.0:
            grad *= clip
        # Adam exactly as torch.optim.Adam computes it (bias corrections folded into the step).
        exp_avg *= beta1
        exp_avg += (1.0 - beta1) * grad
        exp_avg_sq *= beta2
        np.multiply(grad, grad, out=step_dir)
        exp_avg_sq += (1.0 - beta2) * step_dir
        np.sqrt(exp_avg_sq, out=denom)
        denom /= math.sqrt(1.0 - beta2 ** step)
        denom += recipe.adam_eps
        np.divide(exp_avg, denom, out=step_dir)
        step_dir *= recipe.lr / (1.0 - beta1 ** step)
        flat -= step_dir
    trained = layout.views(flat.copy())
    return trained, losses


def read_mask(path: str | Path, env_id: str, obs_dim: int, act_dim: int) -> list[np.ndarray]:
    """The fixed topology (weight != 0, [out, in] per layer) of an exported actor for `env_id`
    with these observation and action dims (a dataset's, or the env's during distillation)."""
    weights, _, metadata = read_policy_onnx(path)
    if "env_id" not in metadata:
        raise UserError(f"mask {path} has no env_id metadata: not an actor exported by tinypolicy")
    if metadata["env_id"] != env_id:
        raise UserError(f"mask {path} is an actor for {metadata['env_id']}, not {env_id}")
    dims = weights[0].shape[1], weights[-1].shape[0]
    if dims != (obs_dim, act_dim):
        raise UserError(f"mask {path} maps {dims[0]} observations to {dims[1]} actions, not {obs_dim} to {act_dim}")
    return [w != 0 for w in weights]


def read_init(path: str | Path, dataset: Dataset) -> MLPParams:
    """Initial parameters from an .npz of w0, b0, w1, b1, ..., log_std (weights [out, in]),
    as HaDES-F ships the fixed init its dataset was distilled for (policy_init.npz)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"init file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read init {path}: not an .npz of arrays ({type(exc).__name__})") from None
    layers = sum(1 for name in arrays if name.startswith("w"))
    expected = {f"{kind}{k}" for k in range(layers) for kind in "wb"} | {"log_std"}
    if layers == 0 or set(arrays) != expected:
        raise UserError(f"{path} must hold w0, b0, ..., w{{L-1}}, b{{L-1}} and log_std, got {', '.join(sorted(arrays))}")
    weights = [arrays[f"w{k}"].astype(np.float32) for k in range(layers)]
    biases = [arrays[f"b{k}"].astype(np.float32) for k in range(layers)]
    log_std = arrays["log_std"].astype(np.float32)
    for k, (w, b) in enumerate(zip(weights, biases)):
        if w.ndim != 2 or b.shape != (w.shape[0],) or (k and w.shape[1] != weights[k - 1].shape[0]):
            raise UserError(f"{path}: layer {k} has weight {w.shape} and bias {b.shape}, which do not chain")
    if (weights[0].shape[1], weights[-1].shape[0]) != (dataset.obs_dim, dataset.act_dim) \
            or log_std.shape != (dataset.act_dim,):
        raise UserError(f"{path} maps {weights[0].shape[1]} observations to {weights[-1].shape[0]} actions, "
                        f"the dataset has {dataset.obs_dim} and {dataset.act_dim}")
    if not all(np.all(np.isfinite(a)) for a in [*weights, *biases, log_std]):
        raise UserError(f"{path} contains NaN or infinite values")
    return MLPParams(weights, biases, log_std)


def _fixed_hidden(hidden, source_hidden: tuple[int, ...], flag: str) -> tuple[int, ...]:
    if hidden is not None and tuple(hidden) != source_hidden:
        raise UserError(f"--hidden {','.join(map(str, hidden))} differs from the {flag} file's hidden sizes "
                        f"{','.join(map(str, source_hidden))}; leave --hidden out with {flag}")
    return source_hidden


def _onnx_check(model, params: MLPParams, recipe: BCRecipe, dataset: Dataset) -> float | None:
    """Max |ONNX Runtime - NumPy| over the dataset's states, in env units (None without ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    obs = dataset.states * dataset.obs_std + dataset.obs_mean
    (onnx_actions,) = session.run(None, {"obs": obs.astype(np.float32)})
    numpy_actions = dataset.to_env_units(policy_mean(params, recipe.activation, dataset.normalise(obs)))
    return float(np.abs(onnx_actions - numpy_actions).max())


def retrain(dataset_path: str | Path, out_path: str | Path, hidden: tuple[int, ...] | None = None,
            activation: str | None = None, steps: int | None = None, lr: float | None = None,
            mask_path: str | Path | None = None, init_path: str | Path | None = None, seed: int = 0) -> dict:
    """Train a policy on a distilled dataset and write it as an ONNX actor; returns a summary.

    Unset options keep the dataset recipe's values; with `mask_path` or `init_path` the hidden
    sizes are that file's (a different `hidden` is refused); `init_path` replaces the seeded
    init (and `seed` is then unused). Raises `UserError` for a dataset or mask that
    does not fit, an `out_path` that is a folder or one of the inputs (before training), and
    if the ONNX file's outputs differ from the NumPy forward pass.
    """
    started = time.perf_counter()
    dataset = load_dataset(dataset_path)
    check_output_file(out_path, "output", (*dataset_files(dataset_path), mask_path, init_path))
    overrides = {"hidden": hidden, "activation": activation, "steps": steps, "lr": lr}
    recipe = replace(dataset.recipe, **{k: v for k, v in overrides.items() if v is not None})
    if mask_path is not None and init_path is not None:
        raise UserError("--mask and --init cannot be combined: the init would have to fit the mask")
    masks, init = None, None
    if mask_path is not None:
        masks = read_mask(mask_path, dataset.env_id, dataset.obs_dim, dataset.act_dim)
        recipe = replace(recipe, hidden=_fixed_hidden(hidden, tuple(m.shape[0] for m in masks[:-1]), "--mask"))
    if init_path is not None:
        init = read_init(init_path, dataset)
        recipe = replace(recipe, hidden=_fixed_hidden(hidden, tuple(init.sizes[1:-1]), "--init"))
    if init is None:
        init = init_params([dataset.obs_dim, *recipe.hidden, dataset.act_dim], seed, masks)
    train_started, cpu_started = time.perf_counter(), time.process_time()
    params, losses = train_bc(dataset.states, dataset.actions, recipe, init, masks)
    train_seconds, train_cpu_seconds = time.perf_counter() - train_started, time.process_time() - cpu_started
    final_loss = loss_and_grad(params, recipe.activation, dataset.states, dataset.actions)
    if not math.isfinite(final_loss):
        raise UserError(f"training diverged (loss {final_loss}); try a smaller --lr than {recipe.lr}")

    layer_nnz = [int(np.count_nonzero(w)) for w in params.weights]
    nnz = sum(layer_nnz)
    sparsity = 1.0 - nnz / sum(w.size for w in params.weights)
    # The export bundle's metadata keys where they mean the same; the dataset's hash stands
    # where an exported actor has its checkpoint's.
    metadata = {
        "env_id": dataset.env_id, "stage": "retrain", "obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim,
        "action_low": json.dumps(dataset.action_low.tolist()), "action_high": json.dumps(dataset.action_high.tolist()),
        "obs_mean": json.dumps(dataset.obs_mean.tolist()), "obs_std": json.dumps(dataset.obs_std.tolist()),
        "hidden": ",".join(map(str, recipe.hidden)), "hidden_activation": recipe.activation, "output": "clip",
        "sparsity": f"{sparsity:.6f}", "nnz": nnz, "layer_nnz": json.dumps(layer_nnz),
        "layer_sparsity": json.dumps([round(1.0 - n / w.size, 6) for n, w in zip(layer_nnz, params.weights)]),
        "dataset_sha256": dataset.sha256, "dataset_size": dataset.size,
        "bc_recipe": json.dumps({"steps": recipe.steps, "lr": recipe.lr, "adam_eps": recipe.adam_eps,
                                 "grad_clip": recipe.grad_clip}),
        "seed": seed, "final_loss": f"{final_loss:.6g}", "tinypolicy_version": __version__,
    }
    if init_path is not None:
        metadata["init_sha256"] = hashlib.sha256(Path(init_path).read_bytes()).hexdigest()
    if mask_path is not None:
        metadata["mask_sha256"] = hashlib.sha256(Path(mask_path).read_bytes()).hexdigest()
    model = policy_onnx(params.weights, params.biases, recipe.activation, "clip", dataset.obs_mean,
                        dataset.obs_std, dataset.action_low, dataset.action_high, metadata)
    max_diff = _onnx_check(model, params, recipe, dataset)
    if max_diff is not None and max_diff > 1e-4 * float(np.max(dataset.action_high - dataset.action_low)):
        raise UserError(f"ONNX Runtime's actions differ from the NumPy policy by {max_diff:.3g}; {out_path} not written")
    out_path = save_onnx(model, out_path)
    return {
        "out": str(out_path), "env_id": dataset.env_id, "dataset_sha256": dataset.sha256,
        "dataset_size": dataset.size, "hidden": list(recipe.hidden), "activation": recipe.activation,
        "steps": recipe.steps, "lr": recipe.lr, "seed": seed, "mask": None if mask_path is None else str(mask_path),
        "init": None if init_path is None else str(init_path),
        "sparsity": sparsity, "nnz": nnz,
        "initial_loss": float(losses[0]), "final_loss": final_loss, "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "total_seconds": time.perf_counter() - started, "onnx_max_abs_diff": max_diff,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The retrain options, shared by `tinypolicy retrain` and `python -m ondevice.retrain` on a robot."""
    parser.add_argument("dataset", type=Path, metavar="DATASET", help="a dataset directory (or its dataset.npz)")
    parser.add_argument("--out", required=True, type=Path, metavar="POLICY.onnx",
                        help="the ONNX file to write (none of the input files)")
    parser.add_argument("--hidden", type=layer_sizes, default=None, metavar="W,W",
                        help="hidden sizes (default: the dataset recipe's; with --mask: the mask's)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=None,
                        help="hidden activation (default: the dataset recipe's, also with --mask)")
    parser.add_argument("--steps", type=positive_int, default=None, metavar="N", help="full-batch Adam steps (default: recipe)")
    parser.add_argument("--lr", type=positive_float, default=None, metavar="X", help="Adam learning rate (default: recipe)")
    parser.add_argument("--mask", type=Path, default=None, metavar="ACTOR.onnx",
                        help="keep the sparse topology of this exported actor (same env and dims)")
    parser.add_argument("--init", type=Path, default=None, metavar="INIT.npz",
                        help="start from these parameters (w0, b0, ..., log_std), e.g. the policy_init.npz a "
                             "HaDES-F dataset was distilled for; hidden sizes from the file")
    parser.add_argument("--seed", type=random_seed, default=0, metavar="K", help="init seed (without --init)")


def run(args: argparse.Namespace) -> int:
    summary = retrain(args.dataset, args.out, hidden=args.hidden, activation=args.activation, steps=args.steps,
                      lr=args.lr, mask_path=args.mask, init_path=args.init, seed=args.seed)
    print(f"retrained {'-'.join(map(str, summary['hidden']))} {summary['activation']} policy "
          f"(sparsity {summary['sparsity']:.3f}) on {summary['dataset_size']} pairs: {summary['steps']} steps "
          f"in {summary['train_seconds']:.3f} s, loss {summary['initial_loss']:.4f} -> {summary['final_loss']:.4f}; "
          f"wrote {summary['out']}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m ondevice.retrain",
                            description="Retrain a policy from a distilled dataset (NumPy + onnx only).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command("retrain", lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
