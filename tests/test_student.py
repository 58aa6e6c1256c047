"""DAgger distillation of a teacher actor into a sparse student (pipeline/student.py).

The teacher is hand-built, as `tinypolicy import` writes a PPO policy: an actor-only
checkpoint (no critic) with a tanh trunk, clipped output and observation normalisation.
Pendulum-v1 keeps every run to a second or two: its 200-step episodes end by time limit only,
and its state is the observation, so a test can replay a transition and see which policy's
action produced it.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from tinypolicy.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from tinypolicy.envs import actor_policy, evaluate_policy
from tinypolicy.models import layer_nnz, make_actor, sparse_layers
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.settings import StudentConfig
from tinypolicy.pipeline.student import ITERATIONS_FILE, SUMMARY_FILE, Distiller, distil_student

ENV = "Pendulum-v1"
EPISODE = 200  # Pendulum's time limit
TEACHER_ARCH = {"activation": "tanh", "output": "clip", "obs_norm": True}
CFG = StudentConfig(actor_sparsity=0.9, hidden=(32, 32), iterations=3, env_steps=2 * EPISODE, grad_steps=300,
                    batch_size=64, topology_interval=50, eval_episodes=2, select_episodes=2)


def write_teacher(path: Path) -> Path:
    """A random PPO-like actor saved as an actor-only checkpoint."""
    torch.manual_seed(0)
    env = gym.make(ENV)
    obs, act = env.observation_space, env.action_space
    spaces = {"obs_dim": 3, "act_dim": 1, "obs_low": obs.low.tolist(), "obs_high": obs.high.tolist(),
              "action_low": act.low.tolist(), "action_high": act.high.tolist()}
    teacher = make_actor("td3", 3, 1, [16, 16], act.low, act.high, **TEACHER_ARCH)
    with torch.no_grad():
        teacher.obs_mean.copy_(torch.tensor([0.1, -0.2, 0.5]))
        teacher.obs_std.copy_(torch.tensor([0.7, 0.7, 3.0]))
        teacher.net.layers[-1].weight.mul_(3.0)  # actions reaching the clip bounds
    save_checkpoint(path, {"config": {"env_id": ENV, "algo": "td3", "method": "dense", "hidden": [16, 16]},
                           "spaces": spaces, "actor": teacher.state_dict(), "actor_arch": TEACHER_ARCH,
                           "steps_done": 0})
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture(scope="module")
def run(teacher, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("student")
    return out, distil_student(CFG, teacher, out, progress=False)


def rows(out: Path) -> list[dict]:
    with (out / ITERATIONS_FILE).open() as f:
        return list(csv.DictReader(f))


def masks(actor) -> list[torch.Tensor]:
    return [layer.mask.clone() for layer in sparse_layers(actor)]


def test_student_holds_the_exact_er_nnz_after_its_topology_evolved(run, teacher, tmp_path):
    out, summary = run
    student = load_checkpoint(out).build_actor()  # refuses weights outside the masks
    shapes = [(layer.out_features, layer.in_features) for layer in sparse_layers(student)]
    expected = layer_nnz(shapes, CFG.actor_sparsity)
    assert [int(m.sum()) for m in masks(student)] == expected == summary["layer_nnz"]
    assert summary["nnz"] == sum(expected) == round(0.1 * summary["weights"])
    initial = masks(Distiller(CFG, teacher, tmp_path).student)  # the same seed: the run's initial topology
    assert any(not torch.equal(a, b) for a, b in zip(initial, masks(student))), "RigL never changed the topology"


def test_dataset_grows_and_loss_falls(run):
    out, summary = run
    table = rows(out)
    assert [int(r["iteration"]) for r in table] == [0, 1, 2]
    assert [int(r["dataset_size"]) for r in table] == [400, 800, 1200]
    assert [float(r["beta"]) for r in table] == [1.0, 0.0, 0.0]
    losses = [float(r["loss"]) for r in table]
    assert losses[-1] < losses[0] / 10
    assert summary["env_steps"] == 1200 and summary["grad_steps"] == 900 and summary["iterations"] == 3
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary


def test_checkpoint_loads_and_evaluates_to_the_reported_return(run, teacher):
    out, summary = run
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    assert "critic" not in ckpt.data and ckpt.env_id == ENV and ckpt.steps_done == 1200
    student = ckpt.build_actor()
    reference = load_checkpoint(teacher).build_actor()
    # The student normalises observations with the teacher's statistics but acts as `train`'s actors do.
    assert torch.equal(student.obs_std, reference.obs_std) and student.output == "tanh"
    returns = evaluate_policy(actor_policy(student), ENV, CFG.eval_episodes, CFG.eval_seed)
    assert float(returns.mean()) == summary["student_return"]
    teacher_returns = evaluate_policy(actor_policy(reference), ENV, CFG.eval_episodes, CFG.eval_seed)
    assert float(teacher_returns.mean()) == summary["teacher_return"]
    assert summary["ratio"] is None  # Pendulum's returns are negative: no share of the teacher's


def next_obs(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Pendulum's observation after `action` from the state that `obs` shows."""
    env = gym.make(ENV).unwrapped
    env.reset(seed=0)
    env.state = np.array([np.arctan2(obs[1], obs[0]), obs[2]], dtype=np.float64)
    return env.step(action)[0]


def test_later_iterations_gather_student_states_labelled_by_the_teacher(teacher, tmp_path):
    # Few gradient steps: the student still acts unlike the teacher, so their transitions differ.
    run = Distiller(replace(CFG, grad_steps=5), teacher, tmp_path)
    run.run_iteration()
    student = copy.deepcopy(run.student)
    first = len(run.obs)
    run.run_iteration()
    visited = run.obs[first:].numpy()
    reference = load_checkpoint(teacher).build_actor()
    torch.testing.assert_close(run.labels, reference.squashed(run.obs), rtol=0, atol=1e-6)

    def follows(policy) -> np.ndarray:
        """Whether each transition inside an episode is the one `policy`'s action makes."""
        steps = [t for t in range(len(visited) - 1) if (t + 1) % EPISODE]
        return np.array([np.allclose(next_obs(visited[t], actor_policy(policy)(visited[t])), visited[t + 1],
                                     rtol=0, atol=2e-5) for t in steps])

    assert follows(student).all()
    assert follows(reference).mean() < 0.5


def test_keeps_the_best_student_on_the_selection_episodes_once_the_topology_froze(teacher, tmp_path):
    # The topology freezes after 30% of the 900 gradient steps: during iteration 0. Seed 5's
    # students return most after iteration 0, so keeping the last one would fail.
    summary = distil_student(replace(CFG, topology_end=0.3, seed=5), teacher, tmp_path, progress=False)
    selection = [float(r["student_return"]) for r in rows(tmp_path)]
    assert summary["kept_iteration"] == int(np.argmax(selection)) != len(selection) - 1
    assert summary["kept_selection_return"] == max(selection)
    kept = load_checkpoint(tmp_path).build_actor()
    assert float(evaluate_policy(actor_policy(kept), ENV, CFG.select_episodes, CFG.select_seed).mean()) \
        == max(selection)


def test_resumes_a_killed_run_exactly(run, teacher, tmp_path):
    out, summary = run
    killed = Distiller(CFG, teacher, tmp_path)
    killed.teacher_returns = [summary["teacher_return"]] * CFG.eval_episodes
    killed.run_iteration()
    killed.save()
    resumed = distil_student(CFG, teacher, tmp_path, progress=False)
    assert resumed["student_return"] == summary["student_return"]
    interrupted, whole = load_checkpoint(tmp_path).build_actor(), load_checkpoint(out).build_actor()
    for a, b in zip(interrupted.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in rows(tmp_path)] == [r["loss"] for r in rows(out)]


def test_resuming_with_other_settings_is_refused(run, teacher):
    out, _ = run
    with pytest.raises(UserError, match=r"other settings \(lr: 0.001 -> 0.002\)"):
        distil_student(replace(CFG, lr=2e-3), teacher, out, progress=False)


@pytest.mark.parametrize("bad", [{"actor_sparsity": 1.0}, {"actor_sparsity": -0.1}, {"beta": 1.5}, {"iterations": 0}])
def test_bad_settings_are_refused_in_one_line(bad):
    with pytest.raises(UserError) as err:
        replace(CFG, **bad)
    assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_a_teacher_that_is_no_checkpoint_is_refused_in_one_line(content, tmp_path):
    path = tmp_path / "teacher.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        distil_student(CFG, path, tmp_path / "out", progress=False)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.integration
def test_evaluate_and_export_commands_take_the_student(run, tmp_path):
    out, _ = run
    for args in (["evaluate", str(out), "--episodes", "1"],
                 ["export", str(out), "--out", str(tmp_path / "export"), "--parity-samples", "500", "--episodes", "1",
                  "--quiet"]):
        # One torch thread: on this shared machine evaluate's default two spin for 7x the CPU time.
        done = subprocess.run([sys.executable, "-m", "tinypolicy", *args], capture_output=True, text=True, timeout=600,
                              env=os.environ | {"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "export" / "export.json").read_text())
