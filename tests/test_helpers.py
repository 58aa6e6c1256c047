"""The shared helpers: atomic writes, figures, CSV tables and logs, env rollouts."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from tinypolicy.envs import evaluate_policy, make_env, random_policy_returns, rollout
from tinypolicy.ondevice.artefact import atomic_write, write_npz, write_text
from tinypolicy.plots import save_figure, subplots
from tinypolicy.tables import CsvLog, write_csv

ENV = "Pendulum-v1"  # 200-step episodes, no MuJoCo: cheap to roll out


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_npz_writes_exactly_the_named_file(tmp_path):
    write_npz(tmp_path / "state.npz", {"x": np.arange(3)}, compressed=True)
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]
    with np.load(tmp_path / "state.npz") as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))


def test_save_figure_writes_a_png_and_no_temporary_file(tmp_path):
    fig, axes = subplots(1, 2, figsize=(4, 2), squeeze=False)
    axes[0, 0].plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "plot.png", dpi=50)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_write_csv_takes_sequences_and_mappings(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(path, ["a", "b"], [[1, "0.500"], {"b": 2.5, "extra": "ignored"}])
    with path.open(newline="") as f:
        assert list(csv.reader(f)) == [["a", "b"], ["1", "0.500"], ["", "2.5"]]


def test_csv_log_drops_rows_past_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CsvLog(path, ["step", "loss"])
    for step in (10, 20, 30):
        log.write({"step": step, "loss": step / 100})
    CsvLog(path, ["step", "loss"], resume_step=20).write([25, "0.25"])
    with path.open(newline="") as f:
        assert [(r["step"], r["loss"]) for r in csv.DictReader(f)] == [("10", "0.1"), ("20", "0.2"), ("25", "0.25")]
    CsvLog(path, ["step", "loss"])  # a fresh run starts a fresh log
    assert path.read_text().splitlines() == ["step,loss"]


def _reference_returns(policy, episodes, seed):
    """The hand-written loop `evaluate_policy` replaced."""
    env, returns = make_env(ENV), []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.asarray(returns)


def test_rollout_reproduces_the_hand_written_loops():
    policy = lambda obs: np.clip(-obs[2:3], -2, 2)  # noqa: E731
    np.testing.assert_array_equal(evaluate_policy(policy, ENV, 2, seed=5), _reference_returns(policy, 2, 5))
    space = make_env(ENV, seed=5).action_space  # random actions: the space seeded as rollout seeds its own
    np.testing.assert_array_equal(random_policy_returns(ENV, 2, 5), _reference_returns(lambda obs: space.sample(), 2, 5))
    # A step budget crosses episode boundaries, episode k reset with seed + k.
    steps = list(rollout(ENV, policy, 5, steps=250))
    assert len(steps) == 250 and [k for k, s in enumerate(steps) if s.done] == [199]
    np.testing.assert_array_equal(steps[200].obs, make_env(ENV).reset(seed=6)[0])
    assert steps[199].episode_return == _reference_returns(policy, 1, 5)[0]
    with pytest.raises(ValueError):
        next(rollout(ENV, policy, 0))
