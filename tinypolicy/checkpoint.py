"""The training checkpoint: the typed artefact between training and every later stage.

One file, loadable with `torch.load(weights_only=True)`: the actor and critics (masks are
module buffers), their targets, the env's spaces, the run config, the number of env steps
done, and the optimiser and RNG state needed to resume. An actor-only checkpoint (an
imported PPO or ONNX policy, a distilled student) has no critics; its `actor_arch` records
the `make_actor` architecture arguments of an actor that is not a plain ReLU/tanh one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinypolicy.models import TwinCritic, make_actor, sparse_layers
from tinypolicy.models.networks import ACTIVATIONS, SQUASHES
from tinypolicy.ondevice.artefact import atomic_write
from tinypolicy.ondevice.errors import UserError

FORMAT = "tinypolicy.checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "config", "spaces", "actor", "steps_done")
CHECKPOINT_FILE = "checkpoint.pt"  # its name in a run folder (`train --out`, `ad train --out`)
# Per algo, the `make_actor` architecture arguments a checkpoint may record and the values models/
# builds for each: a file naming others is refused with one line, not half-built. A SAC actor's
# output is always tanh (its log-probability assumes it).
ACTOR_ARCHITECTURES = {
    "td3": {"activation": tuple(ACTIVATIONS), "output": tuple(SQUASHES), "obs_norm": (False, True)},
    "sac": {"activation": tuple(ACTIVATIONS), "obs_norm": (False, True)},
}


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """The names of `module`'s floating-point parameters and buffers that hold NaN or inf."""
    return [name for name, t in module.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@dataclass
class Checkpoint:
    path: Path
    data: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def env_id(self) -> str:
        return self.config["env_id"]

    @property
    def steps_done(self) -> int:
        return int(self.data["steps_done"])

    @property
    def actor_arch(self) -> dict[str, Any]:
        """The `make_actor` architecture arguments the checkpoint records (none for a plain
        ReLU/tanh actor), refused unless models/ builds them (ACTOR_ARCHITECTURES)."""
        algo, arch = self.config["algo"], self.data.get("actor_arch", {})
        if algo not in ACTOR_ARCHITECTURES:
            raise UserError(f"{self.path}: unknown algo {algo!r}; tinypolicy builds {', '.join(ACTOR_ARCHITECTURES)}")
        supported = ACTOR_ARCHITECTURES[algo]
        if not isinstance(arch, dict):
            raise UserError(f"{self.path}: actor_arch must be a table, got {arch!r}")
        for key, value in arch.items():
            if key not in supported:
                raise UserError(f"{self.path}: unknown {algo} actor setting {key!r} in actor_arch "
                                f"(known: {', '.join(supported)})")
            # type too: 1 equals True, yet is no switch
            if not any(type(value) is type(choice) and value == choice for choice in supported[key]):
                raise UserError(f"{self.path}: actor {key} {value!r} is not one tinypolicy builds; "
                                f"choose one of {', '.join(map(str, supported[key]))}")
        return dict(arch)

    def build_actor(self) -> torch.nn.Module:
        """The trained actor in eval mode, with its masks; refused if any weight is NaN or
        infinite (a diverged run), so no later stage reports NaN returns or exports NaNs."""
        spaces = self.data["spaces"]
        actor = make_actor(self.config["algo"], spaces["obs_dim"], spaces["act_dim"],
                           list(self.config["hidden"]), spaces["action_low"], spaces["action_high"],
                           **self.actor_arch)
        return self._checked(actor, "actor")

    def build_critic(self) -> torch.nn.Module:
        """The trained twin critic (online weights) in eval mode, with its masks; refused as
        `build_actor` refuses an actor."""
        if "critic" not in self.data:
            raise UserError(f"{self.path} holds an actor only (no critic)")
        spaces = self.data["spaces"]
        critic = TwinCritic(spaces["obs_dim"], spaces["act_dim"], list(self.config["hidden"]))
        return self._checked(critic, "critic")

    def _checked(self, module: torch.nn.Module, key: str) -> torch.nn.Module:
        """`module` with the weights stored under `key`, refused with one line if they do not
        fit it, are NaN or infinite, or are nonzero outside their masks."""
        try:
            module.load_state_dict(self.data[key])
        except RuntimeError as exc:  # its first line only names the module; the next, the first mismatch
            detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
            raise UserError(f"{self.path}: {key} weights do not fit the recorded architecture ({detail})") from None
        bad = nonfinite_tensors(module)
        if bad:
            raise UserError(f"{self.path}: {key} {bad[0]} has NaN or infinite weights (a diverged run)")
        for layer in sparse_layers(module):
            if bool((layer.weight.detach() * (1 - layer.mask)).abs().max() > 0):
                raise UserError(f"{self.path}: {key} weights are nonzero outside their mask")
        return module.eval()


def save_torch_artefact(path: Path, fmt: str, version: int, data: dict[str, Any]) -> None:
    """`torch.save` with a format and version, atomically: a crash mid-write leaves the
    previous file intact."""
    atomic_write(path, lambda tmp: torch.save({"format": fmt, "version": version, **data}, tmp))


def checkpoint_file(path: str | Path) -> Path:
    """`path`, or its CHECKPOINT_FILE when it is a run folder."""
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def load_torch_artefact(path: str | Path, fmt: str, version: int, required: tuple[str, ...],
                        what: str) -> dict[str, Any]:
    """A file written by `save_torch_artefact` (or the run folder holding it, `checkpoint_file`),
    loaded with `weights_only=True`; refused with one line if it is missing, truncated,
    foreign, of another version or incomplete."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UserError(f"cannot read {what} {path}: not a valid tinypolicy {what} ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{path} is not a tinypolicy {what}")
    if data.get("version") != version:
        raise UserError(f"{path} has {what} version {data.get('version')}, expected {version}")
    missing = [k for k in required if k not in data]
    if missing:
        raise UserError(f"{path} is missing {', '.join(missing)}")
    return data


def save_checkpoint(path: Path, data: dict[str, Any]) -> None:
    save_torch_artefact(path, FORMAT, VERSION, data)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A training checkpoint, given its file or its run folder."""
    path = checkpoint_file(path)
    return Checkpoint(path, load_torch_artefact(path, FORMAT, VERSION, REQUIRED, "checkpoint"))
