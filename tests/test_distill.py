"""HaDES end to end on Hopper-v5 (tiny budgets): outputs, resume, dataset round trip, bad files refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinypolicy.ondevice.dataset import load_dataset, save_dataset
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(env_id="Hopper-v5", size=4, population=4, bc_steps=20, stats_steps=500, final_seeds=2,
            final_episodes=1, max_episode_steps=200)


def tinypolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinypolicy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, distill(DistillConfig(generations=3, mode="r", **TINY), out, progress=False)


@pytest.mark.integration
def test_distill_writes_a_loadable_dataset_and_reports(straight_run):
    out, summary = straight_run
    for name in ("dataset.npz", "dataset.json", "fitness.csv", "fitness.png", "summary.json"):
        assert (out / name).is_file(), name
    dataset = load_dataset(out, env_id="Hopper-v5")
    assert dataset.states.shape == (4, 11) and dataset.actions.shape == (4, 3)
    assert dataset.meta["mode"] == "r" and dataset.meta["env_steps"] == summary["env_steps"] > 0
    assert len(dataset.meta["fitness_history"]["mean"]) == 3
    assert dataset.recipe.steps == 20 and dataset.recipe.hidden == (64, 64)
    assert len(summary["fresh_init_returns"]) == 2
    assert len(summary["last_mean_fresh_init_returns"]) == 2
    # The dataset is the search mean that scored best during the search, not merely the last one.
    with np.load(out / "es_state.npz") as state:
        best_mu, history = state["best_mu"], state["history"]
    assert summary["selected_generation"] == int(history[:, 4].argmax())
    np.testing.assert_array_equal(np.concatenate([dataset.states.ravel(), dataset.actions.ravel()]),
                                  best_mu.astype(np.float32))
    rows = (out / "fitness.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("generation,mean_fitness")


@pytest.mark.integration
def test_resume_continues_exactly_where_it_stopped(tmp_path, straight_run):
    straight_out, _ = straight_run
    distill(DistillConfig(generations=2, mode="r", **TINY), tmp_path, progress=False)
    resumed = distill(DistillConfig(generations=3, mode="r", **TINY), tmp_path, progress=False)
    assert resumed["generations"] == 3
    with np.load(tmp_path / "es_state.npz") as a, np.load(straight_out / "es_state.npz") as b:
        np.testing.assert_array_equal(a["mu"], b["mu"])
        np.testing.assert_array_equal(a["best_mu"], b["best_mu"])
        np.testing.assert_array_equal(a["history"][:, :6], b["history"][:, :6])  # all but timings
    with pytest.raises(UserError, match="other settings"):
        distill(DistillConfig(generations=3, mode="f", **TINY), tmp_path, progress=False)


@pytest.mark.integration
def test_dataset_round_trip(straight_run, tmp_path):
    dataset = load_dataset(straight_run[0] / "dataset.npz")
    save_dataset(dataset, tmp_path)
    again = load_dataset(tmp_path, env_id="Hopper-v5")
    for name in ("states", "actions", "obs_mean", "obs_std", "action_low", "action_high"):
        np.testing.assert_array_equal(getattr(again, name), getattr(dataset, name))
    assert again.recipe == dataset.recipe and again.meta == dataset.meta


def _corrupt(source: Path, target: Path, how: str) -> Path:
    target.mkdir()
    npz, info = (source / "dataset.npz").read_bytes(), json.loads((source / "dataset.json").read_text())
    if how == "truncated":
        npz = npz[: len(npz) // 2]
    elif how == "other env":
        info["env_id"] = "HalfCheetah-v5"
    elif how == "wrong shape":
        with np.load(source / "dataset.npz") as data:
            arrays = dict(data)
        arrays["obs_mean"] = arrays["obs_mean"][:5]
        np.savez(target / "dataset.npz", **arrays)
        info["sha256"] = __import__("hashlib").sha256((target / "dataset.npz").read_bytes()).hexdigest()
        npz = None
    if npz is not None:
        (target / "dataset.npz").write_bytes(npz)
    if how != "missing json":
        (target / "dataset.json").write_text(json.dumps(info))
    return target


@pytest.mark.integration
@pytest.mark.parametrize("how, message", [("truncated", "truncated or modified"),
                                          ("other env", "distilled for HalfCheetah-v5"),
                                          ("wrong shape", "obs_mean has shape"),
                                          ("missing json", "does not exist")])
def test_bad_dataset_files_are_refused(straight_run, tmp_path, how, message):
    bad = _corrupt(straight_run[0], tmp_path / "bad", how)
    result = tinypolicy("generalise", str(bad), "--env", "Hopper-v5", "--quiet")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.integration
def test_generalise_on_a_dataset_for_another_env_is_refused(straight_run):
    result = tinypolicy("generalise", str(straight_run[0]), "--env", "Walker2d-v5", "--quiet")
    assert result.returncode == 2 and "distilled for Hopper-v5" in result.stderr


def test_distill_cli_refuses_bad_settings(tmp_path):
    odd = tinypolicy("distill", "--env", "Hopper-v5", "--population", "5", "--out", str(tmp_path), "--quiet")
    assert odd.returncode == 2 and "even" in odd.stderr
    no_expert = tinypolicy("distill", "--env", "Hopper-v5", "--init", "expert", "--out", str(tmp_path), "--quiet")
    assert no_expert.returncode == 2 and "--expert" in no_expert.stderr
    bad_env = tinypolicy("distill", "--env", "Hopper-v99", "--out", str(tmp_path), "--quiet")
    assert bad_env.returncode == 2 and len(bad_env.stderr.strip().splitlines()) == 1


def test_a_corrupt_checkpoint_is_refused_not_overwritten(tmp_path):
    (tmp_path / "es_state.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(UserError, match="cannot read .*es_state.npz"):
        distill(DistillConfig(generations=1, **TINY), tmp_path, progress=False)
    assert (tmp_path / "es_state.npz").read_bytes().startswith(b"PK\x03\x04 not")
