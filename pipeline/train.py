"""Sparse TD3 and SAC from scratch: RLx2 and its baselines in one implementation.

The six methods differ only in five switches (see METHODS): whether the networks are
sparse from the start, or dense and then gradually magnitude-pruned (GMP, Zhu & Gupta
2017), how the topology evolves (not at all, SET's random growth or RigL's gradient
growth), whether the TD target switches to n-step after a delay, and whether the replay
buffer's capacity follows the policy-distance rule. Everything else is shared.

Every schedule length of the paper's 3M-step runs is scaled by total_steps / 3M (see
`Schedule`), so a short run evolves its topology as the paper's long one does.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tinypolicy.checkpoint import CHECKPOINT_FILE, load_checkpoint, nonfinite_tensors, save_checkpoint
from tinypolicy.config import refuse_other_settings
from tinypolicy.envs import actor_policy, env_spaces, evaluate_policy, make_env, require_dims
from tinypolicy.models import (
    GaussianActor,
    TwinCritic,
    apply_masks,
    drop_fraction,
    gmp_sparsity,
    make_actor,
    prune_to,
    rigl_update,
    sparse_layers,
    sparsify,
    weight_sparsity,
)
from tinypolicy.ondevice.artefact import prepare_output_dir, write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.replay import Batch, ReplayBuffer
from tinypolicy.pipeline.settings import HIDDEN_DTYPES, METHODS, TrainConfig
from tinypolicy.tables import CsvLog

PAPER_STEPS = 3_000_000
# --precision -> compute dtype of the hidden layers (None: float32)
PRECISIONS = {name: getattr(torch, dtype) if dtype else None for name, dtype in HIDDEN_DTYPES.items()}
PAPER_LEARNING_STARTS = 25_000
PAPER_BUFFER_MIN = {"td3": 100_000, "sac": 200_000}  # the dynamic buffer's floor at 3M steps


@dataclass(frozen=True)
class Schedule:
    """Interval lengths in env steps (topology intervals in updates of that network)."""
    learning_starts: int
    topology_end: int        # critic updates after which the topology is frozen
    topology_interval: int   # updates of a network between two of its topology updates
    nstep_start: int
    buffer_check: int
    buffer_min: int
    prune_start: int         # GMP: env steps where pruning starts, reaches the target, and between two prunings
    prune_end: int
    prune_interval: int

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> Schedule:
        # The warm-up and the replay floor count transitions the critic needs, so they keep the
        # paper's values instead of shrinking with the run: scaled to a 300k run (2,500 and 10,000)
        # they held HalfCheetah's dense TD3 and RLx2 near 1,400 (docs/BENCHMARKS.md, section 3).
        # Short runs cap them, at a tenth and a third of the run (the warm-up at 1,000 or half the run).
        starts = cfg.learning_starts if cfg.learning_starts is not None else \
            min(PAPER_LEARNING_STARTS, max(1_000, cfg.total_steps // 10), cfg.total_steps // 2)
        end = max(1, cfg.total_steps - starts)
        interval = cfg.topology_interval or max(1, round(10_000 * end / (PAPER_STEPS - PAPER_LEARNING_STARTS)))
        return cls(
            learning_starts=starts,
            topology_end=end,
            topology_interval=interval,
            nstep_start=cfg.nstep_start if cfg.nstep_start is not None else round(0.1 * cfg.total_steps),
            buffer_check=interval,
            buffer_min=cfg.buffer_min if cfg.buffer_min is not None else
            min(PAPER_BUFFER_MIN[cfg.algo], max(cfg.batch_size, cfg.total_steps // 3)),
            prune_start=round(cfg.prune_start * cfg.total_steps),
            prune_end=round(cfg.prune_end * cfg.total_steps),
            prune_interval=cfg.prune_interval or max(1, round(cfg.total_steps / 1_000)),
        )


def with_schedule(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the schedule values it leaves to the defaults written out, so that a checkpoint
    and run.json say what the run used, and a run saved under other defaults is refused on
    resume rather than continued under these."""
    s = Schedule.for_config(cfg)
    return replace(cfg, learning_starts=s.learning_starts, topology_interval=s.topology_interval,
                   nstep_start=s.nstep_start, buffer_min=s.buffer_min, prune_interval=s.prune_interval)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512 BF16 or AMX). Without
    it oneDNN emulates them: a 2x256x256x256 batched matmul took 51 ms instead of 0.6 ms in
    float32 on an AVX2-only EPYC."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(precision: str) -> None:
    """Refuse a compute precision this CPU would run far slower than float32."""
    if precision == "bf16" and not native_bf16():
        raise UserError(f"--precision bf16 needs a CPU with native bfloat16 matrix multiply (AVX-512 BF16 or "
                        f"AMX); this one ({torch.backends.cpu.get_cpu_capability()}) would train ~80x slower; "
                        "use --precision fp32")


class MaskedAdam:
    """Adam over parameters whose sparse weights stay exactly zero outside their masks.

    Gradients are masked before the step, so Adam's moments stay zero at masked
    positions and the update there is exactly 0 / (0 + eps) = 0: the weights keep their
    zeros without being re-masked. Topology updates reset the moments of every position
    whose membership changed (the official code never does).

    `step` runs the kernel that `torch.optim.Adam(fused=True)` runs, without its Python
    wrapper, which costs about 0.2 ms per call here: more than the kernel itself for
    these networks, on every one of the 1.5-2 optimiser steps per env step. The state
    lives in a `torch.optim.Adam`, so checkpoints keep its format.
    """

    def __init__(self, net: nn.Module | list[torch.Tensor], lr: float):
        """`net`: a network (its sparse layers are masked) or a list of plain tensors."""
        modular = isinstance(net, nn.Module)
        self.params = list(net.parameters()) if modular else list(net)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, fused=True)
        self.layers = sparse_layers(net) if modular else []
        self._find_sparse_layers()
        self._state: tuple[list, list, list] | None = None

    def _find_sparse_layers(self) -> None:
        # Masking a dense layer's gradient costs a multiply per weight and changes nothing.
        self.sparse_layers = [l for l in self.layers if not bool(l.mask.all())]

    @torch.no_grad()
    def step(self) -> None:
        if self.sparse_layers:
            torch._foreach_mul_([l.weight.grad for l in self.sparse_layers], [l.mask for l in self.sparse_layers])
        if self._state is None:
            self._state = self._state_lists()
        steps, exp_avgs, exp_avg_sqs = self._state
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(self.params, [p.grad for p in self.params], exp_avgs, exp_avg_sqs, [], steps,
                           lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                           eps=group["eps"], amsgrad=False, maximize=False)
        # The fused kernel writes the weights without bumping their version counters, which is
        # what the layers' bf16 weight cache keys on (torch.optim.Adam bumps them in its wrapper).
        torch.autograd.graph.increment_version(self.params)

    def _state_lists(self) -> tuple[list, list, list]:
        """The step counters and moments, created as torch.optim.Adam(fused=True) creates them."""
        state = self.optimizer.state
        for p in self.params:
            if p not in state:
                state[p] = {"step": torch.zeros((), dtype=torch.float32),
                            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return tuple([state[p][key] for p in self.params] for key in ("step", "exp_avg", "exp_avg_sq"))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def evolve(self, fraction: float, grow: str, generator: torch.Generator) -> None:
        """One drop-and-grow update of every sparse layer, from the gradients in .grad."""
        for layer in self.sparse_layers:
            dense_grad = layer.weight.grad if grow == "gradient" else None
            self._reset_moments(layer, rigl_update(layer, dense_grad, fraction, generator))

    def prune(self, sparsity: float) -> None:
        """Magnitude-prune every layer to its ER share of `sparsity`; pruned weights stay zero."""
        for layer, removed in zip(self.layers, prune_to(self.layers, sparsity)):
            self._reset_moments(layer, removed)
        self._find_sparse_layers()

    def _reset_moments(self, layer, positions: torch.Tensor) -> None:
        state = self.optimizer.state.get(layer.weight)
        if state:
            state["exp_avg"][positions] = 0.0
            state["exp_avg_sq"][positions] = 0.0

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Load the moments; the network's masks must be loaded first."""
        self.optimizer.load_state_dict(state)
        self._state = None  # the loaded tensors replace the old ones
        self._find_sparse_layers()


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging. Target weights outside the mask stay exactly zero (0 + tau * (0 - 0)),
    given that they start masked and are re-masked at every topology update."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


def config_record(cfg: TrainConfig) -> dict:
    """The config as a checkpoint stores it (hidden sizes as a list)."""
    return asdict(cfg) | {"hidden": list(cfg.hidden)}


class Trainer:
    """Holds the networks, optimisers, buffer and counters of one run."""

    def __init__(self, cfg: TrainConfig, out: Path):
        cfg.validate()
        check_precision(cfg.precision)
        cfg = with_schedule(cfg)
        self.cfg, self.out, self.method = cfg, out, METHODS[cfg.method]
        self.schedule = Schedule.for_config(cfg)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)

        self.env = make_env(cfg.env_id, seed=cfg.seed)
        act_space = self.env.action_space
        self.spaces = env_spaces(self.env)
        self.obs_dim, self.act_dim = self.spaces["obs_dim"], self.spaces["act_dim"]
        hidden = list(cfg.hidden)
        # an imported actor's activation, output squashing or observation normaliser
        init, self.actor_arch = None, {}
        if cfg.init_from and (out / CHECKPOINT_FILE).exists():
            # A fine-tune resumes from its own checkpoint, which supersedes the one it started from
            # (that file may have been moved or removed since).
            self.actor_arch = load_checkpoint(out / CHECKPOINT_FILE).actor_arch
        elif cfg.init_from:
            init = load_checkpoint(cfg.init_from)
            self.actor_arch = self._check_initial(init)
        self.actor = make_actor(cfg.algo, self.obs_dim, self.act_dim, hidden, act_space.low, act_space.high,
                                **self.actor_arch)
        self.critic = TwinCritic(self.obs_dim, self.act_dim, hidden)
        orthogonal = cfg.algo == "sac"
        actor_sparsity = cfg.actor_sparsity if self.method.sparse else 0.0
        critic_sparsity = cfg.critic_sparsity if self.method.sparse else 0.0
        sparsify(self.actor, actor_sparsity, orthogonal, self.generator)
        sparsify(self.critic, critic_sparsity, orthogonal, self.generator)
        if init:
            self._start_from(init, actor_sparsity, critic_sparsity)
        self.actor.net.hidden_dtype = self.critic.net.hidden_dtype = PRECISIONS[cfg.precision]
        # SAC bootstraps with the online actor; only TD3 keeps an actor target.
        self.actor_target = self._frozen_copy(self.actor) if cfg.algo == "td3" else None
        self.critic_target = self._frozen_copy(self.critic)
        self.actor_opt = MaskedAdam(self.actor, cfg.lr)
        self.critic_opt = MaskedAdam(self.critic, cfg.lr)
        if cfg.algo == "sac":
            # alpha_0 = 1 from scratch; fine-tuning keeps a tinypolicy run's learnt temperature
            start = init.data.get("train_state", {}).get("log_alpha", torch.zeros(1)) if init else torch.zeros(1)
            self.log_alpha = start.detach().clone().requires_grad_(True)
            self.alpha_opt = MaskedAdam([self.log_alpha], cfg.lr)
            self.target_entropy = -float(self.act_dim)

        self.buffer = ReplayBuffer(self.obs_dim, self.act_dim, min(cfg.buffer_capacity, cfg.total_steps))
        self.step = 0
        self.critic_updates = 0
        self.actor_updates = 0
        self.train_time = 0.0

    def _check_initial(self, init) -> dict:
        """The architecture of the checkpoint `init_from` names, refused unless this run can
        continue training it (critics, algorithm, widths and env dims all matching)."""
        cfg, spaces = self.cfg, init.data["spaces"]
        if "critic" not in init.data:
            raise UserError(f"{init.path} holds an actor only; fine-tuning needs its critics (`tinypolicy compress "
                            "--from` distils such a policy into a sparse student instead)")
        require_dims(cfg.env_id, spaces, str(init.path))
        theirs = {"algo": init.config["algo"], "hidden": list(init.config["hidden"])}
        ours = {"algo": cfg.algo, "hidden": list(cfg.hidden)}
        if theirs != ours:
            raise UserError(f"{init.path} holds a {theirs['algo']} policy with hidden sizes {theirs['hidden']}; "
                            f"pass --algo {theirs['algo']} --hidden {' '.join(map(str, theirs['hidden']))} to "
                            "fine-tune it")
        return init.actor_arch

    @torch.no_grad()
    def _start_from(self, init, actor_sparsity: float, critic_sparsity: float) -> None:
        """Fine-tuning: the checkpoint's weights (and masks) replace the fresh ones; a sparse
        method keeps the largest-magnitude weights as its first topology."""
        # built by the checkpoint, which refuses weights that do not fit, NaN weights and weights outside their masks
        self.actor.load_state_dict(init.build_actor().state_dict())
        self.critic.load_state_dict(init.build_critic().state_dict())
        prune_to(sparse_layers(self.actor), actor_sparsity)
        prune_to(sparse_layers(self.critic), critic_sparsity)

    @staticmethod
    def _frozen_copy(net: nn.Module) -> nn.Module:
        """A target network: a copy of the weights without gradients that shares the
        online network's mask tensors, so topology updates apply to both at once."""
        clone = copy.deepcopy(net)
        for p in clone.parameters():
            p.requires_grad_(False)
        for target_layer, online_layer in zip(sparse_layers(clone), sparse_layers(net)):
            target_layer.mask = online_layer.mask
        return clone

    # ---------------------------------------------------------------- acting
    @torch.no_grad()
    def explore(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(action to execute, noise-free policy action), both squashed to [-1, 1]."""
        if self.step < self.schedule.learning_starts and not self.cfg.init_from:  # a trained policy explores itself
            action = self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)
            return action, action
        obs_t = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
        if isinstance(self.actor, GaussianActor):
            mean, log_std = self.actor.distribution(obs_t)
            sample = torch.tanh(mean + log_std.exp() * torch.randn_like(mean))
            return sample[0].numpy(), torch.tanh(mean)[0].numpy()
        policy = self.actor.squashed(obs_t)[0].numpy()
        noise = self.rng.normal(0.0, self.cfg.exploration_noise, self.act_dim)
        return np.clip(policy + noise, -1.0, 1.0).astype(np.float32), policy

    def to_env_units(self, squashed: np.ndarray) -> np.ndarray:
        return squashed * self.actor.action_scale.numpy() + self.actor.action_bias.numpy()

    def reset_env(self) -> None:
        self.obs, _ = self.env.reset(seed=self.cfg.seed + self.step)
        self.episode_return, self.last_episode_return = 0.0, float("nan")

    def env_step(self) -> None:
        """One env step, its transition stored, then one update (after warm-up) and the
        dynamic-capacity check when due. `reset_env` must have been called once."""
        action, policy_action = self.explore(self.obs)
        next_obs, reward, terminated, truncated, _ = self.env.step(self.to_env_units(action))
        self.buffer.add(self.obs, action, policy_action, reward, next_obs, terminated, truncated)
        self.episode_return += float(reward)
        self.obs = next_obs
        if terminated or truncated:
            self.obs, _ = self.env.reset()
            self.last_episode_return, self.episode_return = self.episode_return, 0.0
        self.step += 1
        if self.step > self.schedule.learning_starts:
            self.train_step()
        if self.method.dynamic_buffer and self.step % self.schedule.buffer_check == 0:
            self.buffer.shrink_if_stale(self.policy_distance(), self.cfg.buffer_threshold, self.schedule.buffer_min)
        if self.prune_due():
            self.prune()

    def prune_due(self) -> bool:
        s = self.schedule
        if not (self.method.prune and s.prune_start < self.step <= s.prune_end):
            return False
        return (self.step - s.prune_start) % s.prune_interval == 0 or self.step == s.prune_end

    def prune(self) -> None:
        """One GMP step: both networks to their scheduled sparsity (targets share the masks)."""
        s = self.schedule
        for opt, target, final in ((self.actor_opt, self.actor_target, self.cfg.actor_sparsity),
                                   (self.critic_opt, self.critic_target, self.cfg.critic_sparsity)):
            opt.prune(gmp_sparsity(self.step, s.prune_start, s.prune_end, final))
            if target is not None:
                apply_masks(target)

    # ---------------------------------------------------------------- learning
    def n_step(self) -> int:
        multi = self.method.multi_step and self.step >= self.schedule.nstep_start
        return self.cfg.n_step if multi else 1

    def td_target(self, b: Batch) -> torch.Tensor:
        cfg = self.cfg
        with torch.no_grad():
            if cfg.algo == "td3":
                noise = (torch.randn_like(b.actions) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
                next_action = (self.actor_target.squashed(b.bootstrap_obs) + noise).clamp(-1.0, 1.0)
                value = self.critic_target(b.bootstrap_obs, next_action).min(0).values
                return b.returns + b.discount * value
            alpha = self.log_alpha.exp()
            # Soft n-step adds an entropy bonus at every intermediate state: one actor pass samples there too.
            batch = b.bootstrap_obs.shape[0]
            actions, log_probs = self.actor.sample(torch.cat([b.bootstrap_obs, b.inter_obs.flatten(0, 1)]))
            value = self.critic_target(b.bootstrap_obs, actions[:batch]).min(0).values - alpha * log_probs[:batch]
            target = b.returns + b.discount * value
            if b.inter_obs.shape[0]:
                target -= alpha * (b.inter_weight * log_probs[batch:].view_as(b.inter_weight)).sum(0)
            return target

    def topology_due(self, updates: int, horizon: int) -> float | None:
        """The drop fraction if this update (the `updates`-th of a network that makes
        `horizon` updates before the topology freezes) is a topology update, else None."""
        if self.method.grow is None or updates == 0 or updates % self.schedule.topology_interval:
            return None
        fraction = drop_fraction(updates, horizon, self.cfg.drop_fraction)
        return fraction if fraction > 0 else None

    def update_critic(self, b: Batch) -> None:
        target = self.td_target(b)
        loss = (self.critic(b.obs, b.actions) - target).pow(2).mean(1).sum()
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_updates += 1
        fraction = self.topology_due(self.critic_updates, self.schedule.topology_end)
        if fraction is not None:
            self.critic_opt.evolve(fraction, self.method.grow, self.generator)
            apply_masks(self.critic_target)
        else:
            self.critic_opt.step()


    def update_actor(self, b: Batch) -> None:
        if self.cfg.algo == "td3":
            loss = -self.critic.q1_frozen(b.obs, self.actor.squashed(b.obs)).mean()
            horizon = self.schedule.topology_end // self.cfg.policy_freq
        else:
            action, log_prob = self.actor.sample(b.obs)
            alpha = self.log_alpha.exp().detach()
            loss = (alpha * log_prob - self.critic(b.obs, action, frozen=True).min(0).values).mean()
            # The temperature loss -(log_alpha * (log_prob + target_entropy)).mean() has this gradient.
            self.log_alpha.grad = -(log_prob.detach() + self.target_entropy).mean().reshape(1)
            self.alpha_opt.step()
            horizon = self.schedule.topology_end
        self.actor_opt.zero_grad()
        loss.backward()
        self.actor_updates += 1
        fraction = self.topology_due(self.actor_updates, horizon)
        if fraction is not None:
            self.actor_opt.evolve(fraction, self.method.grow, self.generator)
            if self.actor_target is not None:
                apply_masks(self.actor_target)
        else:
            self.actor_opt.step()

    def train_step(self) -> None:
        b = self.buffer.sample(self.cfg.batch_size, self.n_step(), self.cfg.gamma, self.rng)
        self.update_critic(b)
        if self.cfg.algo == "sac":
            self.update_actor(b)
            soft_update(self.critic_target, self.critic, self.cfg.tau)
        elif self.critic_updates % self.cfg.policy_freq == 0:
            self.update_actor(b)
            soft_update(self.actor_target, self.actor, self.cfg.tau)
            soft_update(self.critic_target, self.critic, self.cfg.tau)

    @torch.no_grad()
    def policy_distance(self) -> float:
        """Half the mean squared gap, in [-1, 1] action units, between the current policy
        and the policy that collected the oldest stored transitions."""
        obs, stored = self.buffer.oldest(self.cfg.policy_distance_samples)
        current = self.actor.squashed(torch.from_numpy(obs)).numpy()
        return 0.5 * float(np.mean((current - stored) ** 2))

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, episodes: int) -> np.ndarray:
        return evaluate_policy(actor_policy(self.actor), self.cfg.env_id, episodes, seed=self.cfg.seed + 100)

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict:
        data = {
            "config": config_record(self.cfg),
            "spaces": self.spaces,
            "steps_done": self.step,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "sparsity": {"actor": weight_sparsity(self.actor), "critic": weight_sparsity(self.critic)},
            "train_state": {
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(),
                "critic_updates": self.critic_updates,
                "actor_updates": self.actor_updates,
                "train_time": self.train_time,
                "numpy_rng": json.dumps(self.rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "generator": self.generator.get_state(),
            },
        }
        if self.actor_target is not None:
            data["actor_target"] = self.actor_target.state_dict()
        if self.actor_arch:
            data["actor_arch"] = self.actor_arch
        if self.cfg.algo == "sac":
            data["train_state"]["log_alpha"] = self.log_alpha.detach().clone()
            data["train_state"]["alpha_opt"] = self.alpha_opt.state_dict()
        return data

    def check_finite(self) -> None:
        """Refuse to go on once a weight is NaN or infinite, leaving the last checkpoint as it is.

        Cheap enough for every evaluation and checkpoint (a pass over the weights), not for
        every step: a diverged run is caught within one interval."""
        nets = {"actor": self.actor, "critic": self.critic}
        bad = [f"{net} {name}" for net, module in nets.items() for name in nonfinite_tensors(module)]
        if self.cfg.algo == "sac" and not bool(torch.isfinite(self.log_alpha).all()):
            bad.append("log_alpha")
        if bad:
            kept = f"; {self.out / CHECKPOINT_FILE} keeps the last good state" \
                if (self.out / CHECKPOINT_FILE).exists() else ""
            raise UserError(f"training diverged at step {self.step} ({bad[0]} is not finite); lower --lr "
                            f"(now {self.cfg.lr:g}) and use another --out{kept}")

    def save(self) -> None:
        self.buffer.save(self.out / "replay.npz")
        save_checkpoint(self.out / CHECKPOINT_FILE, self.state())

    def restore(self) -> None:
        ckpt = load_checkpoint(self.out / CHECKPOINT_FILE)
        # Settings added after a run was saved take their defaults, as that run used them.
        saved = config_record(TrainConfig(env_id=self.cfg.env_id)) | dict(ckpt.config)
        # Which checkpoint a fine-tune started from mattered only at its start (compress compares
        # it by content); whether it started from one still does: it explores its warm-up itself.
        refuse_other_settings(saved | {"init_from": bool(saved["init_from"])},
                              config_record(self.cfg) | {"init_from": bool(self.cfg.init_from)}, self.out)
        needed = ["train_state", "critic_target"] + ["actor_target"] * (self.actor_target is not None)
        missing = [key for key in needed if key not in ckpt.data]
        if missing:
            raise UserError(f"{ckpt.path} has no {', '.join(missing)} to resume training from (it was not written "
                            "by `tinypolicy train`); use another --out")
        d, ts = ckpt.data, ckpt.data["train_state"]
        self.actor.load_state_dict(d["actor"])
        self.critic.load_state_dict(d["critic"])
        if self.actor_target is not None:
            self.actor_target.load_state_dict(d["actor_target"])
        self.critic_target.load_state_dict(d["critic_target"])
        self.actor_opt.load_state_dict(ts["actor_opt"])
        self.critic_opt.load_state_dict(ts["critic_opt"])
        self.step, self.critic_updates, self.actor_updates = ckpt.steps_done, ts["critic_updates"], ts["actor_updates"]
        self.train_time = ts["train_time"]
        self.rng.bit_generator.state = json.loads(ts["numpy_rng"])
        torch.set_rng_state(ts["torch_rng"])
        self.generator.set_state(ts["generator"])
        if self.cfg.algo == "sac":
            with torch.no_grad():
                self.log_alpha.copy_(ts["log_alpha"])
            self.alpha_opt.load_state_dict(ts["alpha_opt"])
        self.buffer = ReplayBuffer.load(self.out / "replay.npz", self.obs_dim, self.act_dim, self.buffer.capacity)


METRIC_FIELDS = ["step", "eval_return", "eval_return_std", "train_return", "actor_sparsity",
                 "critic_sparsity", "buffer_size", "steps_per_s", "elapsed_s"]


class MetricsLog:
    """metrics.csv plus TensorBoard; on resume, rows past the checkpoint are discarded."""

    def __init__(self, out: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.csv = CsvLog(out / "metrics.csv", METRIC_FIELDS, resume_step)
        self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step or None)

    def write(self, row: dict) -> None:
        self.csv.write(row)
        for key, value in row.items():
            if key != "step" and value != "":
                self.tb.add_scalar(key, value, row["step"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def train(cfg: TrainConfig, out: str | Path, progress: bool = True) -> dict:
    """Train (or resume) a run in `out`; returns the final evaluation summary."""
    out = prepare_output_dir(out)
    trainer = Trainer(cfg, out)
    if (out / CHECKPOINT_FILE).exists():
        trainer.restore()
    log = MetricsLog(out, trainer.step)
    trainer.reset_env()
    eval_return = float("nan")
    bar = tqdm(total=cfg.total_steps, initial=trainer.step, disable=not progress, unit="step",
               desc=f"{cfg.method}-{cfg.algo} {cfg.env_id}", dynamic_ncols=True, mininterval=1.0)
    window_start, window_steps = time.perf_counter(), 0
    try:
        while trainer.step < cfg.total_steps:
            trainer.env_step()
            window_steps += 1
            bar.update(1)

            at_eval = trainer.step % cfg.eval_interval == 0 or trainer.step == cfg.total_steps
            at_checkpoint = trainer.step % cfg.checkpoint_interval == 0 or trainer.step == cfg.total_steps
            if at_eval or at_checkpoint:
                trainer.check_finite()  # a diverged run stops before it evaluates or saves NaNs
                elapsed = time.perf_counter() - window_start
                trainer.train_time += elapsed
                steps_per_s = window_steps / elapsed
                if at_eval:
                    returns = trainer.evaluate(cfg.eval_episodes)
                    eval_return = float(returns.mean())
                    log.write({
                        "step": trainer.step, "eval_return": eval_return, "eval_return_std": float(returns.std()),
                        "train_return": trainer.last_episode_return, "actor_sparsity": weight_sparsity(trainer.actor),
                        "critic_sparsity": weight_sparsity(trainer.critic), "buffer_size": len(trainer.buffer),
                        "steps_per_s": steps_per_s, "elapsed_s": trainer.train_time,
                    })
                if at_checkpoint:
                    trainer.save()
                bar.set_postfix(sps=f"{steps_per_s:.0f}", ret=f"{eval_return:.0f}",
                                sparsity=f"{weight_sparsity(trainer.actor):.3f}", refresh=False)
                window_start, window_steps = time.perf_counter(), 0
    finally:
        bar.close()
        log.close()
        trainer.env.close()

    returns = trainer.evaluate(cfg.eval_episodes)
    summary = {
        "env_id": cfg.env_id, "algo": cfg.algo, "method": cfg.method, "seed": cfg.seed,
        "steps": trainer.step, "episodes": cfg.eval_episodes,
        "mean_return": float(returns.mean()), "std_return": float(returns.std()),
        "returns": returns.tolist(),
        "actor_sparsity": weight_sparsity(trainer.actor), "critic_sparsity": weight_sparsity(trainer.critic),
        "train_time_s": trainer.train_time,
        "steps_per_s": trainer.step / trainer.train_time if trainer.train_time else None,
    }
    write_json(out / "eval.json", summary)
    return summary
