"""A sparse student distilled from a teacher actor by DAgger (Ross et al. 2011).

For a teacher without critics (an imported PPO or ONNX policy) there is nothing to fine-tune
in the env, so its behaviour is imitated instead. Plain behaviour cloning trains only on the
teacher's states, and the student's small errors then lead it to states the teacher never
visits, where it has never been told what to do; DAgger rolls out the student itself and asks
the teacher what it would have done there. Iteration 0 rolls out the teacher; iteration i
the student, except that with probability beta**i the teacher acts at a step. Every state
visited joins one dataset, labelled with the teacher's deterministic action in [-1, 1]; the
student (a TD3-style ReLU/tanh actor at an ER-distributed sparsity) is trained with
minibatch Adam on the mean squared error of its squashed actions, and its topology evolves as
in training (RigL: `MaskedAdam.evolve` on the loss's dense gradient, `drop_fraction`'s
cosine schedule). After each iteration the student is evaluated on episodes kept apart from
the reported ones (`select_seed`); of the iterations after the topology froze, the best of
them is kept, as SB3's EvalCallback keeps a best model, since the return swings between
iterations by more than the goal's margin while the loss barely moves. The kept student
alone is evaluated on the reported episodes (`eval_seed`).

Output folder: checkpoint.pt (an actor-only tinypolicy checkpoint that evaluate and export
take: the kept student; it also holds the run's state, so a killed run resumes after its last
iteration), iterations.csv (one row per iteration, returns on the selection episodes) and
student.json (teacher vs the kept student on the reported episodes).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinypolicy.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, nonfinite_tensors, save_checkpoint
from tinypolicy.config import refuse_other_settings
from tinypolicy.envs import Policy, actor_policy, evaluate_policy, require_dims, rollout
from tinypolicy.models import drop_fraction, make_actor, sparse_layers, sparsify, weight_sparsity
from tinypolicy.ondevice.artefact import prepare_output_dir, sha256_file, write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.settings import StudentConfig
from tinypolicy.pipeline.train import MaskedAdam
from tinypolicy.shares import share_of
from tinypolicy.tables import write_csv

SUMMARY_FILE, ITERATIONS_FILE = "student.json", "iterations.csv"
ITERATION_FIELDS = ["iteration", "beta", "dataset_size", "loss", "student_return", "student_return_std",
                    "elapsed_s"]
# The student is an actor as `train` writes them: ReLU trunk, tanh output (a clipping output
# would give no gradient wherever the teacher's label sits on a bound).
STUDENT_ARCH = {"activation": "relu", "output": "tanh"}


def teacher_actor(ckpt: Checkpoint) -> torch.nn.Module:
    """The checkpoint's actor; refused with one line unless it fits its env."""
    teacher = ckpt.build_actor()
    require_dims(ckpt.env_id, ckpt.data["spaces"], f"the teacher {ckpt.path}")
    return teacher


class Distiller:
    """The student, its optimiser, the aggregated dataset and the run's counters."""

    def __init__(self, cfg: StudentConfig, teacher_path: Path, out: Path):
        self.cfg, self.out = cfg, out
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        ckpt = load_checkpoint(teacher_path)
        self.teacher_path, self.teacher, self.env_id = ckpt.path.resolve(), teacher_actor(ckpt), ckpt.env_id
        self.spaces = ckpt.data["spaces"]
        self.hidden = list(cfg.hidden or ckpt.config["hidden"])
        obs_norm = bool(self.teacher.obs_norm)
        self.arch = STUDENT_ARCH | {"obs_norm": obs_norm}
        self.student = make_actor("td3", self.spaces["obs_dim"], self.spaces["act_dim"], self.hidden,
                                  self.spaces["action_low"], self.spaces["action_high"], **self.arch)
        sparsify(self.student, cfg.actor_sparsity, self.student.orthogonal_init, self.generator)
        if obs_norm:
            # The teacher's statistics: the student's inputs on the scale the teacher's layers learnt on.
            self.student.obs_mean.copy_(self.teacher.obs_mean)
            self.student.obs_std.copy_(self.teacher.obs_std)
        self.optimizer = MaskedAdam(self.student, cfg.lr)
        self.config = asdict(cfg) | {"env_id": self.env_id, "algo": "td3", "method": "dagger", "hidden": self.hidden,
                                     "teacher_sha256": sha256_file(ckpt.path)}
        self.obs = torch.zeros(0, self.spaces["obs_dim"])
        self.labels = torch.zeros(0, self.spaces["act_dim"])
        self.iteration = self.grad_steps = 0
        self.kept: torch.nn.Module | None = None  # the best student since the topology froze
        self.kept_iteration, self.kept_return = -1, -np.inf
        self.history: list[dict] = []
        self.teacher_returns: list[float] = []
        self.wall_time = 0.0

    # ------------------------------------------------------------------ data
    def rollout_policy(self, beta: float) -> Policy:
        """At each step the teacher acts with probability `beta`, else the student."""
        teacher, student = actor_policy(self.teacher), actor_policy(self.student)
        if beta >= 1.0:
            return teacher
        if beta <= 0.0:
            return student
        return lambda obs: teacher(obs) if self.rng.random() < beta else student(obs)

    def collect(self, beta: float) -> None:
        """Roll out `env_steps` steps and add their states, labelled by the teacher."""
        seed = int(self.rng.integers(2**31))
        steps = rollout(self.env_id, self.rollout_policy(beta), seed, steps=self.cfg.env_steps)
        obs = torch.as_tensor(np.asarray([step.obs for step in steps]), dtype=torch.float32)
        with torch.no_grad():
            labels = self.teacher.squashed(obs)
        self.obs = torch.cat([self.obs, obs])
        self.labels = torch.cat([self.labels, labels])

    # ------------------------------------------------------------------ learning
    def topology_fraction(self) -> float:
        """The RigL drop fraction if the current gradient step updates the topology, else 0."""
        cfg = self.cfg
        if self.grad_steps == 0 or self.grad_steps % cfg.topology_interval:
            return 0.0
        return drop_fraction(self.grad_steps, self.topology_steps(), cfg.drop_fraction)

    def topology_steps(self) -> int:
        """The gradient step after which the topology stays fixed."""
        return round(self.cfg.topology_end * self.cfg.iterations * self.cfg.grad_steps)

    def fit(self) -> float:
        """`grad_steps` minibatch steps on the whole dataset; returns their mean loss."""
        total = torch.zeros(())
        for _ in range(self.cfg.grad_steps):
            idx = torch.randint(len(self.obs), (self.cfg.batch_size,), generator=self.generator)
            loss = (self.student.squashed(self.obs[idx]) - self.labels[idx]).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            total += loss.detach()
            fraction = self.topology_fraction()
            # As in training, a topology update replaces that step's optimiser step.
            if fraction > 0:
                self.optimizer.evolve(fraction, "gradient", self.generator)
            else:
                self.optimizer.step()
            self.grad_steps += 1
        bad = nonfinite_tensors(self.student)
        if bad:
            raise UserError(f"the student diverged in iteration {self.iteration} ({bad[0]} is not finite); "
                            f"lower --lr (now {self.cfg.lr:g})")
        return float(total) / self.cfg.grad_steps

    def evaluate(self, actor: torch.nn.Module) -> np.ndarray:
        """Returns on the reported episodes."""
        return evaluate_policy(actor_policy(actor), self.env_id, self.cfg.eval_episodes, self.cfg.eval_seed)

    def selection_returns(self) -> np.ndarray:
        """The current student's returns on the episodes that choose which student to keep."""
        return evaluate_policy(actor_policy(self.student), self.env_id, self.cfg.select_episodes,
                               self.cfg.select_seed)

    def run_iteration(self) -> dict:
        start = time.perf_counter()
        beta = self.cfg.beta ** self.iteration  # 1 at iteration 0: the teacher's own states first
        self.collect(beta)
        loss = self.fit()
        returns = self.selection_returns()
        if self.grad_steps >= self.topology_steps() and returns.mean() > self.kept_return:
            self.kept = copy.deepcopy(self.student)
            self.kept_iteration, self.kept_return = self.iteration, float(returns.mean())
        self.wall_time += time.perf_counter() - start
        self.iteration += 1
        row = {"iteration": self.iteration - 1, "beta": beta, "dataset_size": len(self.obs), "loss": loss,
               "student_return": float(returns.mean()), "student_return_std": float(returns.std()),
               "elapsed_s": self.wall_time}
        self.history.append(row)
        return row

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        actor = self.kept or self.student  # what evaluate and export take: the kept student once there is one
        return {
            "config": self.config,
            "spaces": self.spaces,
            "steps_done": len(self.obs),
            "actor": actor.state_dict(),
            "actor_arch": self.arch,
            "sparsity": {"actor": weight_sparsity(actor)},
            "teacher": {"path": str(self.teacher_path), "sha256": self.config["teacher_sha256"],
                        "returns": self.teacher_returns},
            "student_state": {
                "iteration": self.iteration, "grad_steps": self.grad_steps, "wall_time": self.wall_time,
                "student": self.student.state_dict(), "kept_iteration": self.kept_iteration,
                "kept_return": self.kept_return,
                "history": self.history, "obs": self.obs, "labels": self.labels,
                "optimizer": self.optimizer.state_dict(),
                "numpy_rng": json.dumps(self.rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(), "generator": self.generator.get_state(),
            },
        }

    def save(self) -> None:
        save_checkpoint(self.out / CHECKPOINT_FILE, self.state())
        write_csv(self.out / ITERATIONS_FILE, ITERATION_FIELDS, self.history)

    def restore(self) -> None:
        ckpt = load_checkpoint(self.out / CHECKPOINT_FILE)
        if "student_state" not in ckpt.data:
            raise UserError(f"{ckpt.path} was not written by a student distillation; use another --out")
        refuse_other_settings(ckpt.config, self.config, self.out)
        d, s = ckpt.data, ckpt.data["student_state"]
        self.student.load_state_dict(s["student"])
        if s["kept_iteration"] >= 0:
            self.kept = copy.deepcopy(self.student)
            self.kept.load_state_dict(d["actor"])
            self.kept_iteration, self.kept_return = s["kept_iteration"], s["kept_return"]
        self.optimizer.load_state_dict(s["optimizer"])
        self.teacher_returns = list(d["teacher"]["returns"])
        self.iteration, self.grad_steps, self.wall_time = s["iteration"], s["grad_steps"], s["wall_time"]
        self.history = list(s["history"])
        self.obs, self.labels = s["obs"], s["labels"]
        self.rng.bit_generator.state = json.loads(s["numpy_rng"])
        torch.set_rng_state(s["torch_rng"])
        self.generator.set_state(s["generator"])

    def summary(self) -> dict:
        """Teacher vs the kept student, both on the reported episodes."""
        start = time.perf_counter()
        returns = self.evaluate(self.kept)
        self.wall_time += time.perf_counter() - start
        teacher, layers = float(np.mean(self.teacher_returns)), sparse_layers(self.kept)
        return {
            "env_id": self.env_id, "teacher": str(self.teacher_path), "teacher_sha256": self.config["teacher_sha256"],
            "episodes": self.cfg.eval_episodes, "eval_seed": self.cfg.eval_seed,
            "teacher_return": teacher, "teacher_return_std": float(np.std(self.teacher_returns)),
            "student_return": float(returns.mean()), "student_return_std": float(returns.std()),
            "ratio": share_of(float(returns.mean()), teacher),
            "kept_iteration": self.kept_iteration, "kept_selection_return": self.kept_return,
            "select_episodes": self.cfg.select_episodes, "select_seed": self.cfg.select_seed,
            "sparsity": weight_sparsity(self.kept),
            "nnz": sum(int(l.mask.sum()) for l in layers), "weights": sum(l.mask.numel() for l in layers),
            "layer_nnz": [int(l.mask.sum()) for l in layers], "hidden": self.hidden,
            "iterations": self.iteration, "env_steps": len(self.obs), "grad_steps": self.grad_steps,
            "wall_time_s": self.wall_time, "checkpoint": str(self.out / CHECKPOINT_FILE),
        }


def distil_student(cfg: StudentConfig, teacher: Path, out: Path, progress: bool = True) -> dict:
    """Distil the actor of the checkpoint `teacher` into a sparse student in the folder `out`
    (resuming a run there after its last finished iteration); returns student.json's summary."""
    out = prepare_output_dir(out)
    run = Distiller(cfg, teacher, out)
    if (out / CHECKPOINT_FILE).exists():
        run.restore()
    else:
        start = time.perf_counter()
        run.teacher_returns = run.evaluate(run.teacher).tolist()
        run.wall_time += time.perf_counter() - start
    bar = tqdm(total=cfg.iterations, initial=run.iteration, disable=not progress, unit="iter",
               desc=f"student {cfg.actor_sparsity:g} {run.env_id}", dynamic_ncols=True)
    try:
        while run.iteration < cfg.iterations:
            row = run.run_iteration()
            run.save()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", ret=f"{row['student_return']:.0f}",
                            teacher=f"{np.mean(run.teacher_returns):.0f}", refresh=False)
    finally:
        bar.close()
    summary = run.summary()
    write_json(out / SUMMARY_FILE, summary)
    return summary
