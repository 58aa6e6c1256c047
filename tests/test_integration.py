"""End-to-end training on real MuJoCo envs, through the Python API and the CLI."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.pipeline.train import TrainConfig, train

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def tinypolicy(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinypolicy", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_rlx2_td3_solves_inverted_pendulum(tmp_path):
    """RLx2-TD3 with a 90%-sparse actor reaches a mean return of at least 900."""
    cfg = TrainConfig(env_id="InvertedPendulum-v5", algo="td3", method="rlx2", actor_sparsity=0.9,
                      critic_sparsity=0.8, total_steps=25_000, hidden=(64, 64), lr=1e-3,
                      eval_interval=5_000, eval_episodes=5, seed=0)
    summary = train(cfg, tmp_path, progress=False)
    assert summary["mean_return"] >= 900, summary
    assert summary["actor_sparsity"] == pytest.approx(0.9, abs=1e-3)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    actor = ckpt.build_actor()
    for layer in actor.net.layers:
        assert torch.all(layer.weight[layer.mask == 0] == 0)


def test_cli_train_artefacts_and_resume_after_kill(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--env", "Hopper-v5", "--method", "rlx2", "--actor-sparsity", "0.98",
            "--critic-sparsity", "0.95", "--steps", "3000", "--hidden", "64,64", "--eval-interval", "1000",
            "--eval-episodes", "2", "--checkpoint-interval", "1000", "--seed", "3", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "tinypolicy", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(out / "checkpoint.pt").steps_done
    assert 0 < killed_at < 3000

    result = tinypolicy(*args, "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 3000

    data = torch.load(out / "checkpoint.pt", weights_only=True)
    assert data["steps_done"] == 3000
    assert data["spaces"]["obs_dim"] == 11 and data["spaces"]["act_dim"] == 3
    assert {"actor", "critic", "critic_target", "actor_target", "config"} <= set(data)
    masks = [v for k, v in data["actor"].items() if k.endswith("mask")]
    kept = sum(float(m.sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    assert kept == round(0.02 * total)

    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1000, 2000, 3000]
    assert {"eval_return", "actor_sparsity", "buffer_size", "steps_per_s"} <= set(rows[0])
    assert float(rows[-1]["actor_sparsity"]) == pytest.approx(0.98, abs=1e-3)
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == 2 and len(summary["returns"]) == 2
    assert any((out / "tensorboard").iterdir())

    evaluated = tinypolicy("evaluate", str(out / "checkpoint.pt"), "--episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    assert set(json.loads(evaluated.stdout)) >= {"mean_return", "std_return"}


def test_resume_refuses_other_settings(tmp_path):
    base = ["train", "--env", "Pendulum-v1", "--steps", "1200", "--hidden", "32,32", "--eval-interval", "600",
            "--eval-episodes", "1", "--quiet", "--out", str(tmp_path)]
    assert tinypolicy(*base).returncode == 0
    other = tinypolicy(*base[:-2], "--seed", "7", "--out", str(tmp_path))
    assert other.returncode == 2
    assert "other settings" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--env", "NoSuchEnv-v0", "--out", "x"], "unknown or unavailable environment"),
    (["train", "--env", "CartPole-v1", "--out", "x"], "Discrete action space"),
    (["train", "--env", "Hopper-v5", "--actor-sparsity", "1.0", "--out", "x"], "--actor-sparsity: must be in [0, 1)"),
    (["train", "--env", "Hopper-v5", "--critic-sparsity", "-0.1", "--out", "x"],
     "--critic-sparsity: must be in [0, 1)"),
    (["train", "--env", "Hopper-v5", "--actor-sparsity", "nan", "--out", "x"], "--actor-sparsity: must be in [0, 1)"),
    (["evaluate", "missing.pt"], "does not exist"),
])
def test_cli_bad_input_one_line_error(tmp_path, args, message):
    result = tinypolicy(*[str(tmp_path / a) if a in ("x", "missing.pt") else a for a in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_cli_refuses_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    result = tinypolicy("evaluate", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot read checkpoint" in result.stderr


def test_cli_refuses_foreign_torch_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    result = tinypolicy("evaluate", str(path))
    assert result.returncode == 2 and "not a tinypolicy checkpoint" in result.stderr


def test_sac_rlx2_end_to_end_keeps_exact_sparsity(tmp_path):
    """SAC with RLx2's switches (soft n-step from step 600, topology updates, dynamic
    buffer) runs end to end and every mask is exact at the end."""
    cfg = TrainConfig(env_id="Pendulum-v1", algo="sac", method="rlx2", actor_sparsity=0.9, critic_sparsity=0.8,
                      total_steps=2_000, hidden=(32, 32), learning_starts=500, nstep_start=600,
                      topology_interval=200, eval_interval=1_000, eval_episodes=2, seed=0)
    summary = train(cfg, tmp_path, progress=False)
    assert np.isfinite(summary["returns"]).all()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    for net in (ckpt.build_actor(), ckpt.build_critic()):
        for layer in net.net.layers:
            assert torch.all(layer.weight[layer.mask == 0] == 0)
    assert summary["actor_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert summary["critic_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert "log_alpha" in ckpt.data["train_state"]


def test_returns_collects_finished_runs_and_their_settings(tmp_path):
    """`benchmarks.returns collect` copies the raw files of finished tinypolicy and SB3 runs
    (with the settings the report groups them by) and skips or refuses unfinished ones."""
    import json

    from benchmarks.returns import main as returns_main
    from benchmarks.sb3_reference import main as sb3_reference

    pytest.importorskip("rliable")
    pytest.importorskip("stable_baselines3")
    cfg = TrainConfig(env_id="InvertedPendulum-v5", method="prune", actor_sparsity=0.9, critic_sparsity=0.8,
                      total_steps=1_200, hidden=(32, 32), eval_interval=600, eval_episodes=1, seed=3)
    train(cfg, tmp_path / "prune-s3", progress=False)
    assert sb3_reference(["--env", "InvertedPendulum-v5", "--steps", "1200", "--eval-interval", "600",
                          "--eval-episodes", "1", "--out", str(tmp_path / "sb3-s0")]) == 0
    (tmp_path / "unfinished").mkdir()
    into = tmp_path / "collected"
    assert returns_main(["collect", str(tmp_path / "prune-s3"), str(tmp_path / "sb3-s0"),
                         str(tmp_path / "unfinished"), "--into", str(into)]) == 0
    assert sorted(p.name for p in into.iterdir()) == ["prune-s3", "sb3-s0"]
    record = json.loads((into / "prune-s3" / "run.json").read_text())
    assert (record["implementation"], record["method"], record["seed"]) == ("tinypolicy", "prune", 3)
    assert json.loads((into / "sb3-s0" / "run.json").read_text())["implementation"] == "stable-baselines3"
    assert (tmp_path / "sb3-s0" / "model.zip").stat().st_size > 10_000  # the teacher `tinypolicy import` reads
    sb3_eval = json.loads((tmp_path / "sb3-s0" / "eval.json").read_text())  # its speed, for the returns table
    assert sb3_eval["train_time_s"] > 0 and sb3_eval["steps_per_s"] == pytest.approx(1200 / sb3_eval["train_time_s"])
    assert (into / "prune-s3" / "metrics.csv").read_bytes() == (tmp_path / "prune-s3" / "metrics.csv").read_bytes()
    assert returns_main(["report", str(into), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "returns.md").read_text()
    assert "| InvertedPendulum-v5 | TD3 | prune 90/80 | 3 | 1,200 |" in table
    assert "| InvertedPendulum-v5 | TD3 | sb3 | 0 | 1,200 |" in table
