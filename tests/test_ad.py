"""Algorithm Distillation: Dark Room and Key-to-Door dynamics, history collection, causal masking,
evaluation, ONNX parity, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from tinypolicy.models.ad_transformer import ADTransformer, _dropped
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline import ad
from tinypolicy.pipeline.cli import main as cli_main
from tinypolicy.pipeline.darkroom import (
    CENTRE,
    NUM_ACTIONS,
    BatchDarkRoom,
    BatchKeyToDoor,
    DarkKeyToDoorEnv,
    DarkRoomEnv,
    all_cells,
    cell_index,
    key_door_pairs,
    optimal_return,
)
from tinypolicy.pipeline.settings import AD_ENV_DEFAULTS, KEY_TO_DOOR_ID

ROOT = Path(__file__).resolve().parents[1]
LEFT, RIGHT, UP, DOWN, STAY = range(5)


# ---------------------------------------------------------------- environments

def test_dark_room_moves_walls_reward_and_truncation():
    env = gym.make("tinypolicy/DarkRoom-v0")
    obs, _ = env.reset(options={"goal": (6, 4)})
    assert obs == cell_index(np.array(CENTRE)) == 40
    obs, reward, terminated, truncated, _ = env.step(RIGHT)
    assert (obs, reward, terminated, truncated) == (49, 0.0, False, False)
    obs, reward, *_ = env.step(RIGHT)
    assert (obs, reward) == (58, 1.0)                      # reached the goal at (6, 4)
    rewards = [env.step(STAY)[1] for _ in range(3)]
    assert rewards == [1.0, 1.0, 1.0]                      # paid on every step spent there
    obs, reward, *_ = env.step(UP)
    assert (obs, reward) == (57, 0.0)
    for _ in range(14):
        obs, reward, terminated, truncated, _ = env.step(LEFT)
    assert obs == cell_index(np.array([0, 3])) and not terminated and truncated   # wall, then 20 steps
    with pytest.raises(ValueError):
        env.unwrapped.step(7)


def test_dark_room_optimal_return_and_batch_env_agree_with_gym_env():
    rng = np.random.default_rng(0)
    goals = all_cells()
    # Greedy walk to each goal, then stay: the best possible return.
    batch, returns = BatchDarkRoom(goals), np.zeros(len(goals))
    batch.reset()
    for _ in range(20):
        returns += batch.step(ad.optimal_actions(batch.xy, batch.goals, rng))[1]
    np.testing.assert_array_equal(returns, optimal_return(goals))
    assert optimal_return(goals).mean() == pytest.approx(16.54, abs=0.01)   # the paper's ~16.6
    # Random action sequences: the Gymnasium env and the batched one see the same observations and rewards.
    picks = goals[rng.choice(len(goals), 5, replace=False)]
    actions = rng.integers(0, NUM_ACTIONS, (5, 20))
    batch = BatchDarkRoom(picks)
    batch_obs = [batch.reset()]
    batch_rewards = []
    for t in range(20):
        obs, reward = batch.step(actions[:, t])
        batch_obs.append(obs)
        batch_rewards.append(reward)
    for i, goal in enumerate(picks):
        env = DarkRoomEnv(goal=goal)
        assert env.reset()[0] == batch_obs[0][i]
        for t in range(20):
            obs, reward, *_ = env.step(int(actions[i, t]))
            assert (obs, reward) == (batch_obs[t + 1][i], batch_rewards[t][i])


def test_key_to_door_pays_key_then_door_once_each():
    env = DarkKeyToDoorEnv()
    env.reset(options={"key": (4, 2), "door": (4, 6)})
    path = [DOWN, DOWN, UP, UP, UP, UP, DOWN, UP, DOWN, DOWN, DOWN, DOWN, DOWN, DOWN, UP, UP]
    rewards = [env.step(a)[1] for a in path]
    # The door (4, 6) is passed before the key: nothing. Then the key once, then the door once.
    assert rewards[1] == 0.0 and rewards[5] == 1.0 and rewards[7] == 0.0 and rewards[11] == 1.0
    assert rewards[15] == 0.0                              # back on the open door
    assert sum(rewards) == 2.0
    for _ in range(50 - len(path) - 1):
        *_, truncated, _ = env.step(STAY)
        assert not truncated
    assert env.step(STAY)[3]                                # 50-step episodes
    obs, info = gym.make("tinypolicy/DarkKeyToDoor-v0").reset(seed=3)
    assert obs == 40 and not np.array_equal(info["key"], info["door"])


def test_batch_key_to_door_agrees_with_gym_env_and_the_expert_earns_two_everywhere():
    rng = np.random.default_rng(0)
    pairs = key_door_pairs()
    assert pairs.shape == (81 * 80, 4) and not np.all(pairs[:, :2] == pairs[:, 2:], axis=1).any()
    # The expert (walk to the key, then to the door) earns exactly 2 on every task.
    batch, returns = BatchKeyToDoor(pairs), np.zeros(len(pairs))
    batch.reset()
    for _ in range(50):
        returns += batch.step(ad.optimal_actions(batch.xy, batch.target(), rng))[1]
    np.testing.assert_array_equal(returns, BatchKeyToDoor.optimal_return(pairs))
    assert set(returns) == {2.0}
    # Random walks, chosen to wander over the key and the door, in both envs: same observations and rewards.
    picks = np.array([[4, 5, 4, 3], [3, 4, 5, 4], [4, 4, 4, 3], [0, 0, 8, 8]])
    actions = rng.integers(0, NUM_ACTIONS, (len(picks), 50))
    batch = BatchKeyToDoor(picks)
    batch_obs, batch_rewards = [batch.reset()], []
    for t in range(50):
        obs, reward = batch.step(actions[:, t])
        batch_obs.append(obs)
        batch_rewards.append(reward)
    batch_rewards = np.array(batch_rewards)
    assert batch_rewards[:, :3].sum() > 0                 # the near tasks pay something
    assert batch_rewards.sum(0).max() <= 2
    for i, task in enumerate(picks):
        env = DarkKeyToDoorEnv(key=task[:2], door=task[2:])
        assert env.reset()[0] == batch_obs[0][i]
        for t in range(50):
            obs, reward, *_ = env.step(int(actions[i, t]))
            assert (obs, reward) == (batch_obs[t + 1][i], batch_rewards[t][i])
    # The Q-learner's state adds "holds the key" to the cell: the cell alone is not Markov here.
    batch = BatchKeyToDoor([[4, 3, 4, 5]])
    obs = batch.reset()
    assert batch.learner_state(obs) == 40
    obs, reward = batch.step(np.array([UP]))
    assert reward == 1.0 and batch.learner_state(obs) == 39 + 81


# ---------------------------------------------------------------- history collection

SOURCE = ad.QLearningConfig(decay_episodes=60)  # not the default: evaluation must follow the histories' source


@pytest.fixture(scope="module")
def histories_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ad") / "data"
    ad.collect(out, test_goals=16, seeds_per_goal=2, episodes=120, keep_every=4, seed=0, q_cfg=SOURCE)
    return out


def test_collect_histories_split_shapes_dynamics_and_improvement(histories_dir):
    h = ad.load_histories(histories_dir)
    assert len(h.train_goals) == 65 and len(h.test_goals) == 16
    held_out = {tuple(g) for g in h.test_goals}
    assert not held_out & {tuple(g) for g in h.train_goals}
    data = h.source("learning")
    assert data["states"].shape == (130, 30 * 20)         # 65 goals x 2 seeds, every 4th of 120 episodes
    assert not held_out & {tuple(g) for g in data["goals"]}
    # Replaying the recorded actions reproduces the recorded states and rewards.
    steps = data["states"].reshape(130, 30, 20)
    actions = data["actions"].reshape(130, 30, 20)
    rewards = data["rewards"].reshape(130, 30, 20)
    env = BatchDarkRoom(data["goals"])
    for episode in (0, 17, 29):
        obs = env.reset()
        for t in range(20):
            np.testing.assert_array_equal(obs, steps[:, episode, t])
            obs, reward = env.step(actions[:, episode, t])
            np.testing.assert_array_equal(reward, rewards[:, episode, t])
    returns = rewards.sum(-1).mean(0)
    assert returns[:3].mean() < 2.0 and returns[-3:].mean() > 12.0      # the source learns within a history
    expert = h.source("expert")
    expert_returns = expert["rewards"].reshape(130, 30, 20).sum(-1)
    np.testing.assert_array_equal(expert_returns, np.repeat(optimal_return(expert["goals"])[:, None], 30, 1))


def test_collect_keeps_existing_histories_and_refuses_tampered_ones(histories_dir, tmp_path):
    assert ad.collect(histories_dir, test_goals=16, seeds_per_goal=2, episodes=120, keep_every=4,
                      q_cfg=SOURCE)["status"] == "exists"
    copy = tmp_path / "data"
    copy.mkdir()
    (copy / "histories.json").write_bytes((histories_dir / "histories.json").read_bytes())
    (copy / "histories.npz").write_bytes((histories_dir / "histories.npz").read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or modified"):
        ad.load_histories(copy)


def test_collect_refuses_to_replace_histories_collected_with_other_settings(histories_dir):
    before = {path.name: path.read_bytes() for path in histories_dir.iterdir()}
    with pytest.raises(UserError, match=r"other settings \(seeds_per_goal: 2 -> 3\)"):
        ad.collect(histories_dir, test_goals=16, seeds_per_goal=3, episodes=120, keep_every=4, q_cfg=SOURCE)
    assert {path.name: path.read_bytes() for path in histories_dir.iterdir()} == before


# ---------------------------------------------------------------- the transformer

def test_causal_mask_no_future_leakage():
    torch.manual_seed(0)
    model = ADTransformer(ad.model_config(ad.ADTrainConfig(window=24, dim=32, layers=2, heads=4, ff_dim=64))).eval()
    states = torch.randint(0, 81, (2, 24))
    actions = torch.randint(0, 6, (2, 24))
    rewards = torch.randint(0, 2, (2, 24)).float()
    base = model(states, actions, rewards)
    cut = 10
    states2, actions2, rewards2 = states.clone(), actions.clone(), rewards.clone()
    states2[:, cut:] = torch.randint(0, 81, (2, 24 - cut))
    actions2[:, cut:] = (actions[:, cut:] + 1) % 6
    rewards2[:, cut:] = 1 - rewards[:, cut:]
    changed = model(states2, actions2, rewards2)
    torch.testing.assert_close(changed[:, :cut], base[:, :cut], rtol=0, atol=1e-6)
    assert (changed[:, cut:] - base[:, cut:]).abs().max() > 1e-3       # the future does matter later on
    # A shorter window gives the same logits as the prefix of a longer one.
    torch.testing.assert_close(model(states[:, :cut], actions[:, :cut], rewards[:, :cut]), base[:, :cut],
                               rtol=0, atol=1e-5)
    # The gradient of an early logit with respect to later inputs is exactly zero.
    rewards_in = rewards.clone().requires_grad_(True)
    logits = model(states, actions, rewards_in)
    logits[:, cut - 1].sum().backward()
    assert rewards_in.grad[:, cut:].abs().max() == 0 and rewards_in.grad[:, :cut].abs().max() > 0


def test_training_windows_and_loss_decrease(histories_dir, tmp_path, monkeypatch):
    cfg = ad.ADTrainConfig(steps=30, batch=16, window=40, dim=32, layers=1, heads=2, ff_dim=64, warmup=5,
                         checkpoint_every=10)
    summary = ad.train(histories_dir, tmp_path / "run", cfg, progress=False)
    assert summary["steps"] == 30
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert len(losses) == 3 and losses[-1] < losses[0] < 1.7
    # Resuming a finished run does no more steps; a longer --steps (on more threads) extends it; another config is
    # refused.
    assert ad.train(histories_dir, tmp_path / "run", cfg, progress=False)["steps"] == 30
    longer = ad.train(histories_dir, tmp_path / "run", replace(cfg, steps=40, threads=2), progress=False)
    assert longer["steps"] == 40 and longer["resumed_from"] == [{"step": 30, "steps_before": 30}]
    assert torch.get_num_threads() == 2
    with pytest.raises(UserError, match=r"other settings \(lr: 0.001 -> 0.0003\)"):
        ad.train(histories_dir, tmp_path / "run", replace(cfg, steps=40, lr=3e-4), progress=False)
    # The checkpoint names the Q-learner behind its histories; evaluation runs that one as "source".
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert ad.load_ad_checkpoint(checkpoint)["source_q_learning"] == asdict(SOURCE)
    used = []
    real_q_learning = ad.q_learning
    monkeypatch.setattr(ad, "q_learning", lambda *a: used.append(a[3]) or real_q_learning(*a))
    ad.evaluate(checkpoint, tmp_path / "eval", ad.ADEvalConfig(episodes=2, seeds=1, short_episodes=1), progress=False)
    assert used == [SOURCE] and torch.get_num_threads() == 1  # evaluate's own --threads
    # Tokens: (s_t, a_{t-1}, r_{t-1}, R_t) with "no action" first, target a_t.
    data = ad.load_histories(histories_dir).source("learning")
    _, prev_actions, _, _, targets = ad.history_tokens(data["states"], data["actions"], data["rewards"],
                                                       BatchDarkRoom.episode_steps)
    assert prev_actions[0, 0] == ad.NO_ACTION and torch.equal(prev_actions[:, 1:], targets[:, :-1])


def test_episode_returns_restart_every_episode_in_histories_and_rollouts():
    """R_t, the return earlier in t's episode, by hand on two 3-step episodes; a rollout hands
    the step function the same quantity (checked against the rewards it was handed)."""
    rewards = np.array([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0]])
    _, _, _, episode_returns, _ = ad.history_tokens(np.zeros((1, 6), int), np.zeros((1, 6), int), rewards, 3)
    assert episode_returns.tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]]
    seen = []

    def walk_right(states, prev_actions, prev_rewards, episode_returns):
        seen.append((prev_rewards[0].copy(), episode_returns[0].copy()))
        return np.eye(NUM_ACTIONS)[[RIGHT]] * 50.0

    # The key one step right of the centre, the door two: walking right takes both.
    returns = ad.in_context_returns(walk_right, BatchKeyToDoor(np.array([[5, 4, 6, 4]])), 2, 200, seed=0)
    assert returns.tolist() == [[2.0, 2.0]]
    steps = BatchKeyToDoor.episode_steps
    for k in (1, 2, 3, steps, steps + 1, steps + 2, steps + 3):
        prev_rewards, episode_returns = seen[k]
        start = k - k % steps
        assert episode_returns[-1] == prev_rewards[start + 1:k + 1].sum() == min(k % steps, 2)


def test_an_update_that_diverges_at_a_checkpoint_is_not_saved(histories_dir, tmp_path, monkeypatch):
    """The loss is checked every step; an update after the last finite loss is caught before the
    checkpoint it would have been saved in. The step-10 checkpoint stays as it was."""
    cfg = ad.ADTrainConfig(steps=20, batch=8, window=40, dim=16, layers=1, heads=2, ff_dim=32, checkpoint_every=10)
    ad.train(histories_dir, tmp_path, replace(cfg, steps=10), progress=False)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    real_clip, calls = torch.nn.utils.clip_grad_norm_, []

    def clip_then_poison(parameters, max_norm):
        parameters = list(parameters)
        calls.append(real_clip(parameters, max_norm))
        if len(calls) == 10:  # step 20's update: its loss was finite, its weights will not be
            for p in parameters:
                p.grad.fill_(float("nan"))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_poison)
    with pytest.raises(UserError, match=r"^training diverged at step 20 \(.* is not finite\); lower --lr$"):
        ad.train(histories_dir, tmp_path, cfg, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


@pytest.mark.parametrize("given, problem", [("typo", "does not exist"), ("histories.txt", "is a file of another name")])
def test_a_wrong_histories_path_is_refused_naming_it(given, problem, histories_dir, tmp_path):
    (tmp_path / "histories.txt").write_text("")
    path = (histories_dir if given == "typo" else tmp_path) / given
    with pytest.raises(UserError) as caught:
        ad.load_histories(path)
    assert str(caught.value) == (f"AD histories {path} {problem}; expected a folder holding histories.npz and "
                                 "histories.json, or one of those files; run `tinypolicy ad collect` first")


# ---------------------------------------------------------------- ONNX

def test_onnx_step_function_matches_torch(tmp_path):
    from tinypolicy.export.ad_onnx import export_step_onnx, ort_step_function
    from tinypolicy.export.runtimes import ort_session

    torch.manual_seed(1)
    for episode_return in ("no", "yes"):
        cfg = ad.ADTrainConfig(window=40, dim=32, layers=2, heads=4, ff_dim=64, episode_return=episode_return)
        model = ADTransformer(ad.model_config(cfg)).eval()
        session = ort_session(export_step_onnx(model, tmp_path / f"ad-{episode_return}.onnx"))
        assert [i.name for i in session.get_inputs()][-2] == ("episode_returns" if episode_return == "yes"
                                                              else "prev_rewards")
        rng = np.random.default_rng(0)
        step = ad.torch_step_function(model)
        for n in (1, 7, 40):
            tokens = (rng.integers(0, 81, (3, n)), rng.integers(0, 6, (3, n)),
                      rng.integers(0, 2, (3, n)).astype(np.float32), rng.integers(0, 3, (3, n)).astype(np.float32))
            np.testing.assert_allclose(ort_step_function(session, 40, ad.NO_ACTION)(*tokens), step(*tokens),
                                       atol=1e-5)
        # The same in-context rollout under both runtimes (sliding window, several episodes).
        goals = all_cells()[[3, 50]]
        torch_curve = ad.in_context_returns(step, BatchDarkRoom(goals), 4, 40, seed=5)
        onnx_curve = ad.in_context_returns(ort_step_function(session, 40, ad.NO_ACTION), BatchDarkRoom(goals), 4,
                                           40, seed=5)
        np.testing.assert_array_equal(torch_curve, onnx_curve)
    # A model with the input uses it, and refuses to run without it.
    tokens = [torch.as_tensor(t) for t in (rng.integers(0, 81, (1, 5)), rng.integers(0, 6, (1, 5)),
                                           np.zeros((1, 5), np.float32))]
    with torch.no_grad():
        model.return_emb.weight.fill_(1.0)
        assert not torch.equal(model(*tokens, torch.zeros(1, 5)), model(*tokens, torch.ones(1, 5)))
    with pytest.raises(ValueError, match="episode_returns must be given"):
        model(*tokens)


# ---------------------------------------------------------------- CLI

def tinypolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinypolicy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.integration
def test_cli_ad_stages_end_to_end(histories_dir, tmp_path):
    run = tmp_path / "ad"
    small = ["--steps", "20", "--batch", "8", "--window", "40", "--dim", "16", "--layers", "1", "--heads", "2",
             "--ff-dim", "32", "--checkpoint-every", "10", "--quiet"]
    result = tinypolicy("ad", "train", "--data", str(histories_dir), "--out", str(run / "ad"), *small)
    assert result.returncode == 0, result.stderr
    result = tinypolicy("ad", "train", "--data", str(histories_dir), "--out", str(run / "ed"), "--source", "expert",
                        *small)
    assert result.returncode == 0, result.stderr
    result = tinypolicy("ad", "evaluate", str(run / "ad" / "checkpoint.pt"), "--ed", str(run / "ed" / "checkpoint.pt"),
                        "--out", str(run / "eval"), "--episodes", "3", "--short-episodes", "2", "--seeds", "1",
                        "--quiet")
    assert result.returncode == 0, result.stderr
    curves = json.loads((run / "eval" / "curves.json").read_text())
    assert set(curves["curves"]) == {"ad", "ed", "ad_train_goals", "ad_window_10", "ad_reset_each_episode",
                                     "source", "random", "optimal"}
    assert (run / "eval" / "curves.png").stat().st_size > 10_000
    result = tinypolicy("ad", "export", str(run / "ad" / "checkpoint.pt"), "--out", str(run / "export"),
                        "--episodes", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "export" / "export.json").read_text())
    assert summary["max_abs_logit_diff"] < 1e-4 and summary["torch_mean_return"] == summary["onnx_mean_return"]
    # A corrupt checkpoint is a one-line error with status 2.
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    result = tinypolicy("ad", "evaluate", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "cannot read AD checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_last_only_forward_equals_full_forward():
    torch.manual_seed(2)
    model = ADTransformer(ad.model_config(ad.ADTrainConfig(window=30, dim=32, layers=3, heads=4, ff_dim=64))).eval()
    states, actions = torch.randint(0, 81, (4, 30)), torch.randint(0, 6, (4, 30))
    rewards = torch.randint(0, 2, (4, 30)).float()
    for n in (1, 12, 30):
        full = model(states[:, :n], actions[:, :n], rewards[:, :n])[:, -1]
        last = model(states[:, :n], actions[:, :n], rewards[:, :n], last_only=True)[:, -1]
        torch.testing.assert_close(last, full, rtol=0, atol=1e-5)


def test_fused_attention_equals_the_written_out_one_that_the_export_traces(monkeypatch):
    torch.manual_seed(3)
    model = ADTransformer(ad.model_config(ad.ADTrainConfig(window=40, dim=32, layers=2, heads=4, ff_dim=64))).eval()
    states, actions = torch.randint(0, 81, (3, 40)), torch.randint(0, 6, (3, 40))
    rewards = torch.randint(0, 2, (3, 40)).float()
    fused = [model(states, actions, rewards), model(states, actions, rewards, last_only=True)]
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    written_out = [model(states, actions, rewards), model(states, actions, rewards, last_only=True)]
    for a, b in zip(fused, written_out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_attention_dropout_drops_its_fraction_and_keeps_the_expected_value():
    torch.manual_seed(4)
    dropped, scale = _dropped(torch.Size([1000, 1000]), 0.3)
    assert dropped.dtype == torch.bool and abs(dropped.float().mean().item() - 77 / 256) < 0.002
    assert abs(scale * (1 - dropped.float().mean().item()) - 1) < 0.005
    model = ADTransformer(ad.model_config(ad.ADTrainConfig(window=16, dim=32, layers=1, heads=4, ff_dim=64)))
    tokens = torch.randint(0, 81, (2, 16)), torch.randint(0, 6, (2, 16)), torch.zeros(2, 16)
    assert not torch.equal(model.train()(*tokens), model.train()(*tokens))   # a new mask each call
    torch.testing.assert_close(model.eval()(*tokens), model.eval()(*tokens), rtol=0, atol=0)


def test_cli_collect_records_the_source_schedule(tmp_path):
    result = tinypolicy("ad", "collect", "--out", str(tmp_path), "--seeds-per-goal", "1", "--episodes", "8",
                        "--keep-every", "4", "--epsilon-decay", "5")
    assert result.returncode == 0, result.stderr
    assert ad.load_histories(tmp_path).meta["q_learning"]["decay_episodes"] == 5


def test_cli_ad_bad_input_is_one_line_error(histories_dir, tmp_path):
    result = tinypolicy("ad", "train", "--data", str(histories_dir), "--out", str(tmp_path / "x"),
                        "--dim", "30", "--heads", "4")
    assert result.returncode == 2 and "not divisible" in result.stderr and "Traceback" not in result.stderr
    result = tinypolicy("ad", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "ad collect" in result.stderr


# ---------------------------------------------------------------- Key-to-Door end to end

K2D_SOURCE = ad.QLearningConfig(decay_episodes=6, replay_sweeps=1)


@pytest.fixture(scope="module")
def k2d_dir(tmp_path_factory):
    """A tiny Key-to-Door collection: 5 held-out pairs, one learner on each of the other 6475."""
    out = tmp_path_factory.mktemp("k2d") / "data"
    ad.collect(out, env_id=KEY_TO_DOOR_ID, test_goals=5, seeds_per_goal=1, episodes=12, keep_every=3, seed=0,
               q_cfg=K2D_SOURCE)
    return out


def test_collect_key_to_door_split_shapes_and_dynamics(k2d_dir):
    h = ad.load_histories(k2d_dir)
    assert h.env_id == KEY_TO_DOOR_ID and h.meta["episode_steps"] == 50
    assert h.train_goals.shape == (6475, 4) and h.test_goals.shape == (5, 4)
    held_out = {tuple(t) for t in h.test_goals}
    data = h.source("learning")
    assert not held_out & {tuple(t) for t in h.train_goals} and not held_out & {tuple(t) for t in data["goals"]}
    assert data["states"].shape == (6475, 4 * 50)          # episodes 0, 3, 6 and 9 of 12
    # Replaying the recorded actions reproduces the recorded states and rewards, at most 2 per episode.
    steps, actions, rewards = (data[k].reshape(6475, 4, 50) for k in ("states", "actions", "rewards"))
    env = BatchKeyToDoor(data["goals"])
    for episode in range(4):
        obs = env.reset()
        for t in range(50):
            np.testing.assert_array_equal(obs, steps[:, episode, t])
            obs, reward = env.step(actions[:, episode, t])
            np.testing.assert_array_equal(reward, rewards[:, episode, t])
    returns = rewards.sum(-1)
    assert returns.max() == 2 and returns[:, -1].mean() > returns[:, 0].mean()   # the source learns
    expert = h.source("expert")["rewards"].reshape(6475, 4, 50).sum(-1)
    assert (expert == 2).all()


def test_sampling_temperature_sharpens_the_model_distribution():
    logits = np.log(np.tile([0.1, 0.2, 0.7], (20_000, 1)))
    uniforms = np.random.default_rng(0).random(20_000)

    def frequencies(temperature: float) -> np.ndarray:
        return np.bincount(ad.sample_actions(logits, uniforms, temperature), minlength=3) / len(uniforms)

    np.testing.assert_allclose(frequencies(1.0), [0.1, 0.2, 0.7], atol=0.01)
    np.testing.assert_allclose(frequencies(0.5), np.array([0.01, 0.04, 0.49]) / 0.54, atol=0.01)  # p**2, renormalised
    assert (frequencies(0.0) == [0, 0, 1]).all()


def test_backward_replay_turns_a_discovery_into_the_next_episode():
    """With one-step backups a reward reaches only the step before it; replaying the episode
    backwards carries it to the start, so the greedy learner returns to the key and door at once."""
    pairs = np.repeat(key_door_pairs()[::97], 10, axis=0)  # 67 pairs, 10 learners each
    returns = {}
    for sweeps in (0, 1):
        cfg = ad.QLearningConfig(decay_episodes=10, replay_sweeps=sweeps)
        rewards = ad.q_learning(BatchKeyToDoor(pairs), 16, np.random.default_rng(0), cfg)[2]
        returns[sweeps] = rewards.sum(-1)[:, 10:].mean()   # greedy episodes
    assert returns[1] > 1.3 and returns[0] < 1.0, returns  # measured: 1.50 and 0.76


def test_evaluate_key_to_door_shapes(k2d_dir, tmp_path):
    cfg = ad.ADTrainConfig(steps=2, batch=4, window=60, dim=16, layers=1, heads=2, ff_dim=32, checkpoint_every=2)
    ad.train(k2d_dir, tmp_path / "ad", cfg, progress=False)
    checkpoint = tmp_path / "ad" / "checkpoint.pt"
    summary = ad.evaluate(checkpoint, tmp_path / "eval", ad.ADEvalConfig(episodes=3, seeds=2, short_episodes=2),
                          progress=False, env_id=KEY_TO_DOOR_ID)
    assert summary["env"] == KEY_TO_DOOR_ID and len(summary["test_goals"]) == 5
    lengths = {name: len(curve) for name, curve in summary["curves"].items()}
    assert lengths == {"ad": 3, "ad_train_goals": 2, "ad_window_10": 2, "ad_reset_each_episode": 2, "source": 3,
                       "random": 3, "optimal": 3}
    assert summary["curves"]["optimal"] == [2.0] * 3
    assert all(0 <= v <= 2 for curve in summary["curves"].values() for v in curve)
    per_task = summary["ad_last_50_per_goal"]
    assert len(per_task) == 5 and all(len(t["goal"]) == 4 and len(t["per_seed"]) == 2 for t in per_task)
    key, door = np.array(per_task[0]["goal"][:2]), np.array(per_task[0]["goal"][2:])
    assert per_task[0]["distance"] == np.abs(key - np.array(CENTRE)).sum() + np.abs(door - key).sum()
    with pytest.raises(UserError, match="collected on tinypolicy/DarkKeyToDoor-v0, not on --env tinypolicy/DarkRoom"):
        ad.export(checkpoint, tmp_path / "export", episodes=1, progress=False, env_id="tinypolicy/DarkRoom-v0")


def test_cli_takes_key_to_door_defaults_under_the_flags_given(k2d_dir, tmp_path, capsys):
    """`ad train` without --window trains on Key-to-Door's window (from the histories' env);
    a flag given wins over the env's default; a wrong --env is one line and status 2."""
    k2d_window = AD_ENV_DEFAULTS[KEY_TO_DOOR_ID]["train"]["window"]
    assert k2d_window != ad.ADTrainConfig.window
    small = ["--steps", "1", "--batch", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--ff-dim", "32",
             "--quiet"]
    assert cli_main(["ad", "train", "--data", str(k2d_dir), "--out", str(tmp_path / "a"), *small]) == 0
    trained = ad.load_ad_checkpoint(tmp_path / "a" / "checkpoint.pt")["model_config"]
    assert trained["window"] == k2d_window and trained["episode_return_input"]
    assert cli_main(["ad", "train", "--data", str(k2d_dir), "--out", str(tmp_path / "b"), "--window", "30",
                     *small]) == 0
    assert ad.load_ad_checkpoint(tmp_path / "b" / "checkpoint.pt")["model_config"]["window"] == 30
    capsys.readouterr()
    assert cli_main(["ad", "train", "--data", str(k2d_dir), "--out", str(tmp_path / "c"),
                     "--env", "tinypolicy/DarkRoom-v0", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not on --env tinypolicy/DarkRoom-v0" in err and not (tmp_path / "c").exists()


def test_cli_evaluates_and_exports_key_to_door_at_its_temperature(k2d_dir, tmp_path, capsys):
    """`ad evaluate` and `ad export` sample at the checkpoint env's temperature unless
    --temperature is given (evaluate), and record the one they used."""
    k2d_temperature = AD_ENV_DEFAULTS[KEY_TO_DOOR_ID]["evaluate"]["temperature"]
    assert k2d_temperature != ad.ADEvalConfig.temperature
    cfg = ad.ADTrainConfig(steps=1, batch=2, window=60, dim=16, layers=1, heads=2, ff_dim=32, episode_return="yes")
    ad.train(k2d_dir, tmp_path / "ad", cfg, progress=False)
    checkpoint = str(tmp_path / "ad" / "checkpoint.pt")
    short = ["--episodes", "1", "--seeds", "1", "--short-episodes", "1", "--quiet"]
    for out, flags, expected in (("default", [], k2d_temperature), ("given", ["--temperature", "1"], 1.0)):
        assert cli_main(["ad", "evaluate", checkpoint, "--out", str(tmp_path / out), *short, *flags]) == 0
        assert json.loads((tmp_path / out / "curves.json").read_text())["temperature"] == expected
    assert cli_main(["ad", "export", checkpoint, "--out", str(tmp_path / "export"), "--episodes", "1", "--quiet"]) == 0
    assert json.loads((tmp_path / "export" / "export.json").read_text())["temperature"] == k2d_temperature
    capsys.readouterr()


def test_temperature_benchmark_resumes_and_refuses_other_settings(k2d_dir, tmp_path, capsys):
    """benchmarks.ad_temperature: curves on training tasks per temperature, resumable, with
    another run's file refused."""
    from benchmarks import ad_temperature

    cfg = ad.ADTrainConfig(steps=1, batch=2, window=60, dim=16, layers=1, heads=2, ff_dim=32, episode_return="yes")
    ad.train(k2d_dir, tmp_path / "ad", cfg, progress=False)
    checkpoint, out = str(tmp_path / "ad" / "checkpoint.pt"), tmp_path / "t.json"
    common = [checkpoint, "--pairs", "3", "--episodes", "2", "--out", str(out)]
    assert ad_temperature.main(["run", *common, "--temperatures", "1,0"]) == 0
    first = json.loads(out.read_text())
    assert set(first["curves"]) == {"1", "0"} and all(len(c) == 2 for c in first["curves"].values())
    assert first["tasks"] == 3 and first["env"] == KEY_TO_DOOR_ID
    assert ad_temperature.main(["run", *common, "--temperatures", "0.5,1"]) == 0
    second = json.loads(out.read_text())
    assert set(second["curves"]) == {"1", "0", "0.5"} and second["seconds"]["1"] == first["seconds"]["1"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        ad_temperature.main(["run", checkpoint, "--pairs", "4", "--episodes", "2", "--out", str(out),
                             "--temperatures", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "tasks: 3 -> 4" in err
    assert json.loads(out.read_text()) == second
    assert ad_temperature.main(["table", str(out)]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows == ["temperature", "1", "0.5", "0"]
