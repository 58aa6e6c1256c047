"""The shared helpers: atomic writes, output checks, figures, CSV tables and logs, env rollouts."""
from __future__ import annotations

import csv
import errno
import tempfile

import numpy as np
import pytest

from tinypolicy.envs import evaluate_policy, make_env, random_policy_returns, rollout
from tinypolicy.ondevice.artefact import (
    atomic_write,
    check_output_file,
    prepare_output_dir,
    write_npz,
    write_text,
)
from tinypolicy.ondevice.errors import UserError, os_error_line
from tinypolicy.plots import save_figure, subplots
from tinypolicy.shares import percent, share_of
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
    policy = lambda obs: np.clip(-obs[2:3], -2, 2)
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


def test_a_failed_write_names_the_output_and_leaves_no_temporary_file(tmp_path):
    """A full disk fails inside write(), which names no file: the error must name the output."""
    path = tmp_path / "policy.onnx"
    write_text(path, "old")

    def full_disk(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        atomic_write(path, full_disk)
    assert os_error_line(caught.value) == f"{path}: No space left on device"
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["policy.onnx"]


def _read_only(monkeypatch):
    # Root writes into a chmod 555 folder, so the refusal the OS gives is simulated.
    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("case, message", [
    ("a file where the folder goes", "x is a file, not a folder"),
    ("a file where a parent folder goes", "x is a file, not a folder"),
    ("a read-only folder", "Permission denied"),
])
def test_an_output_folder_that_cannot_be_written_is_refused_on_one_line(case, message, tmp_path, monkeypatch):
    (tmp_path / "x").write_text("keep")
    target = {"a file where the folder goes": tmp_path / "x",
              "a file where a parent folder goes": tmp_path / "x" / "run"}.get(case, tmp_path / "ro")
    if case == "a read-only folder":
        _read_only(monkeypatch)
    with pytest.raises(UserError) as caught:
        prepare_output_dir(target, "--out")
    assert message in str(caught.value) and str(target) in str(caught.value) and "\n" not in str(caught.value)
    assert (tmp_path / "x").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ro", "x"] if case == "a read-only folder" else ["x"])


def test_an_output_folder_is_created_and_left_without_a_probe(tmp_path):
    assert prepare_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())
    prepare_output_dir(tmp_path / "a" / "b")  # an existing folder is fine


@pytest.mark.parametrize("case, message", [
    ("an existing folder", "is a folder; give a file name"),
    ("an input", "is also an input of this command"),
    ("an input, by another spelling", "is also an input of this command"),
    ("under a file", "in.npz is a file, not a folder"),
])
def test_an_output_file_that_is_a_folder_or_an_input_is_refused(case, message, tmp_path):
    (tmp_path / "in.npz").write_bytes(b"input")
    out = {"an existing folder": tmp_path, "an input": tmp_path / "in.npz",
           "an input, by another spelling": tmp_path / "sub" / ".." / "in.npz",
           "under a file": tmp_path / "in.npz" / "out.onnx"}[case]
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match=message):
        check_output_file(out, "--out", (tmp_path / "in.npz", None))
    assert (tmp_path / "in.npz").read_bytes() == b"input"
    assert check_output_file(tmp_path / "new" / "out.onnx", "--out", (tmp_path / "in.npz",)).parent.is_dir()


def test_a_share_needs_a_positive_finite_reference():
    assert share_of(50.0, 200.0) == 0.25 and percent(share_of(50.0, 200.0)) == "25%"
    for reference in (0.0, -200.0, float("inf"), float("nan"), None):  # Pendulum's experts score below zero
        assert share_of(50.0, reference) is None
    assert percent(None) == "n/a"
