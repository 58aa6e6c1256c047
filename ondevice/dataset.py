"""The distilled dataset: the typed artefact between distillation and (on-device) retraining.

A dataset is D synthetic state-action pairs plus everything needed to retrain a policy from
them without the simulator: the fixed observation normalisation, the action bounds and
the behaviour-cloning recipe the distillation inner loop used.

On disk, in one directory:
- `dataset.npz` (loads with `np.load(allow_pickle=False)`): `states` [D, obs_dim] in
  normalised observation space, `actions` [D, act_dim] in the policy's action space
  (the env's bounds mapped to [-1, 1]; labels may lie outside it), `obs_mean` and
  `obs_std` [obs_dim], `action_low` and `action_high` [act_dim]; all float32.
- `dataset.json`: format, version, env id, D, dims, the BC recipe, the SHA-256 of
  `dataset.npz`, and free-form provenance (`meta`: mode, fitness history, env steps...).

This module imports only NumPy and the standard library: the on-device retraining path
(no PyTorch, no simulator) reads datasets through it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artefact import artefact_files, check_hash, load_arrays, read_manifest, sha256_file, write_json, write_npz
from .errors import UserError

FORMAT = "tinypolicy.dataset"
VERSION = 1
ARRAYS = ("states", "actions", "obs_mean", "obs_std", "action_low", "action_high")
ACTIVATIONS = ("tanh", "relu", "elu")  # elu: alpha 1, as torch and ONNX default


@dataclass(frozen=True)
class BCRecipe:
    """How a policy is trained on the dataset (the distillation inner loop, HaDES sec. 2).

    Loss: mean over pairs of -log N(a | mu(s), exp(log_std)^2) with a learned,
    state-independent log_std (initialised to 0); full batch; the global gradient norm
    is clipped to `grad_clip`, then Adam (beta1 0.9, beta2 0.999, `adam_eps`) at a constant
    `lr`. Init: orthogonal weights (gain sqrt(2) for hidden layers, 0.01 for the output
    layer), zero biases. At deployment the action is clip(mu(s), -1, 1) in policy units.
    """

    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    steps: int = 200
    lr: float = 5e-3
    adam_eps: float = 1e-5
    grad_clip: float = 0.5

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise UserError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not self.hidden or min(self.hidden) <= 0:
            raise UserError(f"hidden sizes must be positive, got {self.hidden}")
        # A dataset.json is edited by hand, too: nan passes `<= 0` and would train a NaN policy.
        if self.steps <= 0 or not all(math.isfinite(x) and x > 0 for x in (self.lr, self.adam_eps, self.grad_clip)):
            raise UserError("BC steps, learning rate, Adam eps and gradient clip must be positive and finite")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BCRecipe:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "hidden" in known:
            known["hidden"] = tuple(int(h) for h in known["hidden"])
        return cls(**known)


@dataclass
class Dataset:
    env_id: str
    states: np.ndarray
    actions: np.ndarray
    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_low: np.ndarray
    action_high: np.ndarray
    recipe: BCRecipe = field(default_factory=BCRecipe)
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # of dataset.npz, set by save_dataset and load_dataset

    def __post_init__(self):
        for name in ARRAYS:
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        _validate_arrays({name: getattr(self, name) for name in ARRAYS}, f"dataset for {self.env_id}")

    @property
    def size(self) -> int:
        return self.states.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.states.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def normalise(self, obs: np.ndarray) -> np.ndarray:
        """Env-unit observations -> the dataset's normalised observation space."""
        return (np.asarray(obs, dtype=np.float32) - self.obs_mean) / self.obs_std

    def to_env_units(self, action: np.ndarray) -> np.ndarray:
        """Policy-unit actions (clipped to [-1, 1]) -> env units."""
        scale = (self.action_high - self.action_low) / 2.0
        return np.clip(action, -1.0, 1.0) * scale + (self.action_high + self.action_low) / 2.0


def _validate_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    states, actions = arrays["states"], arrays["actions"]
    if states.ndim != 2 or actions.ndim != 2 or states.shape[0] != actions.shape[0] or states.shape[0] == 0:
        raise UserError(f"{where}: states and actions must be [D, obs_dim] and [D, act_dim] with the "
                        f"same D > 0, got {states.shape} and {actions.shape}")
    obs_dim, act_dim = states.shape[1], actions.shape[1]
    for name, dim in (("obs_mean", obs_dim), ("obs_std", obs_dim), ("action_low", act_dim), ("action_high", act_dim)):
        if arrays[name].shape != (dim,):
            raise UserError(f"{where}: {name} has shape {arrays[name].shape}, expected ({dim},)")
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise UserError(f"{where}: {name} contains NaN or infinite values")
    if np.any(arrays["obs_std"] <= 0):
        raise UserError(f"{where}: obs_std must be positive")
    if np.any(arrays["action_high"] <= arrays["action_low"]):
        raise UserError(f"{where}: action_high must exceed action_low")


def save_dataset(dataset: Dataset, directory: str | Path) -> Path:
    """Write dataset.npz and dataset.json into `directory` (each atomically); returns the npz path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    npz = directory / "dataset.npz"
    write_npz(npz, {name: getattr(dataset, name) for name in ARRAYS})
    dataset.sha256 = sha256_file(npz)
    info = {"format": FORMAT, "version": VERSION, "env_id": dataset.env_id, "size": dataset.size,
            "obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim, "sha256": dataset.sha256,
            "recipe": asdict(dataset.recipe), "meta": dataset.meta}
    write_json(directory / "dataset.json", info)
    return npz


def dataset_files(path: str | Path) -> tuple[Path, Path]:
    """dataset.npz and dataset.json, given their folder or either file; any other path is refused."""
    return artefact_files(path, "dataset", "dataset")


def load_dataset(path: str | Path, env_id: str | None = None) -> Dataset:
    """Read and validate a dataset (its directory, dataset.npz or dataset.json).

    Refuses, with a `UserError`, a missing, truncated or tampered file, wrong shapes,
    NaNs, or a dataset for another env than `env_id` (when given).
    """
    npz, info_path = dataset_files(path)
    info = read_manifest(info_path, FORMAT, VERSION, "dataset description")
    digest = check_hash(npz, info.get("sha256"), info_path.name)
    arrays = load_arrays(npz, ARRAYS, "dataset")
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise UserError(f"{npz}: {name} has dtype {array.dtype}, expected float32")
    if env_id is not None and info.get("env_id") != env_id:
        raise UserError(f"{npz} was distilled for {info.get('env_id')}, not {env_id}")
    try:
        recipe = BCRecipe.from_dict(info.get("recipe", {}))
    except (TypeError, ValueError, UserError) as exc:
        raise UserError(f"{info_path}: invalid BC recipe ({exc})") from None
    dataset = Dataset(env_id=str(info.get("env_id")), recipe=recipe, meta=info.get("meta", {}),
                      sha256=digest, **arrays)
    if (dataset.size, dataset.obs_dim, dataset.act_dim) != (info.get("size"), info.get("obs_dim"), info.get("act_dim")):
        raise UserError(f"{npz}: shapes do not match {info_path.name}")
    return dataset
