"""Algorithm Distillation (Laskin et al., ICLR 2023) on Dark Room and Dark Key-to-Door, CPU-sized.

Four stages, each reading the previous one's artefact:

1. `collect`: split the env's tasks (81 goals; 6480 key/door pairs) into fixed train /
   held-out sets; run tabular Q-learning (the source algorithm) on every training task with
   one or more seeds, keeping every k-th episode of each learning history; also roll out the
   optimal policy on the same tasks (expert data for the ED baseline). One artefact:
   `histories.npz` + `histories.json`, which names the env.
2. `train`: a causal transformer (models/ad_transformer.py) learns to predict the source's
   actions on random across-episode windows of the histories (AD), or of the expert data
   (ED). Checkpoints atomically; re-running resumes.
3. `evaluate`: frozen weights, empty context, held-out tasks: the return per episode of
   AD, ED, the source algorithm, a random and the optimal policy, AD on training tasks, and
   the context ablations (a window shorter than an episode; the context cleared at every
   episode start). Curves as JSON/CSV and a plot.
4. `export`: the step function as ONNX (tinypolicy.export.ad_onnx), its held-out curve
   re-run under ONNX Runtime next to PyTorch.

The envs differ only through their batch simulators (pipeline/darkroom.py, `BATCH_ENVS`);
"goals" in array and flag names means tasks: a goal cell, or a key and a door cell.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from tinypolicy.checkpoint import load_torch_artefact, nonfinite_tensors, save_torch_artefact
from tinypolicy.config import check_settings, from_dict, refuse_other_settings
from tinypolicy.export.ad_onnx import OPSET as ONNX_OPSET
from tinypolicy.export.ad_onnx import export_step_onnx, input_names, ort_step_function, step_latency_ms
from tinypolicy.export.runtimes import ort_session
from tinypolicy.models.ad_transformer import ADConfig, ADTransformer
from tinypolicy.ondevice.artefact import (
    artefact_files,
    check_hash,
    load_arrays,
    prepare_output_dir,
    read_manifest,
    sha256_file,
    write_json,
    write_npz,
    write_text,
)
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.darkroom import (
    BATCH_ENVS,
    NUM_ACTIONS,
    NUM_STATES,
    BatchDarkRoom,
    BatchKeyToDoor,
)
from tinypolicy.pipeline.settings import (
    DARK_ROOM_ID,
    SOURCES,
    ADCollectConfig,
    ADEvalConfig,
    ADExportConfig,
    ADTrainConfig,
    QLearningConfig,
)
from tinypolicy.plots import save_figure, subplots
from tinypolicy.tables import CsvLog, write_csv

HISTORY_FORMAT = "tinypolicy.ad-histories"
CHECKPOINT_FORMAT = "tinypolicy.ad-checkpoint"
VERSION = 1
NO_ACTION = NUM_ACTIONS  # the "previous action" of a history's first token
HISTORY_ARRAYS = ("states", "actions", "rewards", "goals")


# --------------------------------------------------------------------------- collect

def q_learning(env: BatchDarkRoom | BatchKeyToDoor, episodes: int, rng: np.random.Generator,
               cfg: QLearningConfig = QLearningConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Q-learner per task of the batch env, all run together. Returns states, actions and
    rewards, each [N, episodes, episode_steps] (the state is the one the action was taken in)."""
    n = len(env.xy)
    q, rows = np.zeros((n, env.num_learner_states, NUM_ACTIONS)), np.arange(n)
    states = np.zeros((n, episodes, env.episode_steps), dtype=np.uint8)
    actions, rewards = np.zeros_like(states), np.zeros_like(states)
    learner_states = np.zeros((n, env.episode_steps + 1), dtype=np.int64)

    def backup(s: np.ndarray, a: np.ndarray, r: np.ndarray, s_next: np.ndarray) -> None:
        # The episode end is a time limit, not a terminal state: bootstrap through it.
        target = r + cfg.gamma * q[rows, s_next].max(1)
        q[rows, s, a] += cfg.lr * (target - q[rows, s, a])

    for episode in range(episodes):
        epsilon, obs = cfg.epsilon(episode), env.reset()
        learner_states[:, 0] = env.learner_state(obs)
        for t in range(env.episode_steps):
            s = learner_states[:, t]
            greedy = (q[rows, s] + rng.random((n, NUM_ACTIONS)) * 1e-9).argmax(1)
            a = np.where(rng.random(n) < epsilon, rng.integers(0, NUM_ACTIONS, n), greedy)
            obs_next, r = env.step(a)
            learner_states[:, t + 1] = env.learner_state(obs_next)
            backup(s, a, r, learner_states[:, t + 1])
            states[:, episode, t], actions[:, episode, t], rewards[:, episode, t] = obs, a, r
            obs = obs_next
        for _ in range(cfg.replay_sweeps):
            for t in reversed(range(env.episode_steps)):
                backup(learner_states[:, t], actions[:, episode, t], rewards[:, episode, t], learner_states[:, t + 1])
    return states, actions, rewards


def optimal_actions(xy: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random shortest-path move towards each target cell (no-op on it)."""
    dx, dy = (targets - xy).T
    options = np.stack([dx < 0, dx > 0, dy < 0, dy > 0, (dx == 0) & (dy == 0)], 1)
    scores = options * (1.0 + rng.random(options.shape))
    return scores.argmax(1)


def expert_histories(env: BatchDarkRoom | BatchKeyToDoor, episodes: int, rng: np.random.Generator):
    """The optimal policy's episodes per task, [N, episodes, episode_steps] like `q_learning`."""
    states = np.zeros((len(env.xy), episodes, env.episode_steps), dtype=np.uint8)
    actions, rewards = np.zeros_like(states), np.zeros_like(states)
    for episode in range(episodes):
        s = env.reset()
        for t in range(env.episode_steps):
            a = optimal_actions(env.xy, env.target(), rng)
            s_next, r = env.step(a)
            states[:, episode, t], actions[:, episode, t], rewards[:, episode, t] = s, a, r
            s = s_next
    return states, actions, rewards


def split_tasks(env_cls: type[BatchDarkRoom | BatchKeyToDoor], num_test: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random train / held-out split of the env's tasks (the 81 goals; the 6480 key/door pairs)."""
    tasks = env_cls.all_tasks()
    if not 0 < num_test < len(tasks):
        raise UserError(f"--test-goals must be in [1, {len(tasks) - 1}], got {num_test}")
    order = np.random.default_rng(seed).permutation(len(tasks))
    return tasks[np.sort(order[num_test:])], tasks[np.sort(order[:num_test])]


def grid_env(env_id: str) -> type[BatchDarkRoom | BatchKeyToDoor]:
    """The batch env class of an AD env id."""
    if env_id not in BATCH_ENVS:
        raise UserError(f"AD runs on {' or '.join(BATCH_ENVS)}, not {env_id}")
    return BATCH_ENVS[env_id]


@dataclass
class Histories:
    """Learning histories (source "learning") and expert data ("expert") on the training
    tasks, and the split. Per source: states, actions, rewards [H, L] uint8 (L = kept
    episodes x episode steps, one stream per history) and goals [H, D], the task of each
    history (D = 2: a goal cell; 4: key and door cells)."""

    arrays: dict[str, np.ndarray]          # "{source}_{name}" and train_goals, test_goals
    meta: dict
    sha256: str = ""                       # of histories.npz, set by save and load

    @property
    def train_goals(self) -> np.ndarray:
        return self.arrays["train_goals"]

    @property
    def test_goals(self) -> np.ndarray:
        return self.arrays["test_goals"]

    @property
    def env_id(self) -> str:
        return self.meta["env"]

    def source(self, name: str) -> dict[str, np.ndarray]:
        return {k: self.arrays[f"{name}_{k}"] for k in HISTORY_ARRAYS}


def collect(out_dir: Path, env_id: str = DARK_ROOM_ID, test_goals: int = ADCollectConfig.test_goals,
            seeds_per_goal: int = ADCollectConfig.seeds_per_goal, episodes: int = ADCollectConfig.episodes,
            keep_every: int = ADCollectConfig.keep_every, seed: int = ADCollectConfig.seed,
            q_cfg: QLearningConfig = QLearningConfig()) -> dict:
    """Write histories.npz/.json into out_dir; returns a summary. Histories already there with
    the same parameters are kept (so checkpoints trained on them stay valid); with other
    parameters they are refused, never replaced."""
    if keep_every <= 0 or episodes < keep_every or seeds_per_goal <= 0:
        raise UserError("need --episodes >= --keep-every >= 1 and --seeds-per-goal >= 1")
    env_cls = grid_env(env_id)
    prepare_output_dir(out_dir)
    params = {"env": env_id, "seed": seed, "seeds_per_goal": seeds_per_goal, "source_episodes": episodes,
              "keep_every": keep_every, "q_learning": asdict(q_cfg)}
    if (Path(out_dir) / "histories.json").is_file():
        existing = load_histories(out_dir)
        saved = {k: existing.meta.get(k) for k in params} | {"test_goals": len(existing.test_goals)}
        if isinstance(saved["q_learning"], dict):  # histories from before a setting existed used its default
            saved["q_learning"] = asdict(QLearningConfig()) | saved["q_learning"]
        refuse_other_settings(saved, params | {"test_goals": test_goals}, out_dir,
                              hint="use another --out (AD checkpoints trained on these histories need them)")
        return _collect_summary(existing, status="exists")
    train_goals, held_out = split_tasks(env_cls, test_goals, seed)
    goals = np.repeat(train_goals, seeds_per_goal, axis=0)
    rng = np.random.default_rng(seed + 1)
    start = time.time()
    s, a, r = q_learning(env_cls(goals), episodes, rng, q_cfg)
    returns = r.sum(-1, dtype=np.float64)
    kept = slice(0, episodes, keep_every)
    arrays = {"train_goals": train_goals, "test_goals": held_out}
    arrays.update(_flat("learning", s[:, kept], a[:, kept], r[:, kept], goals))
    arrays.update(_flat("expert", *expert_histories(env_cls(goals), episodes // keep_every, rng), goals))
    meta = {"episode_steps": env_cls.episode_steps, **params,
            "collect_seconds": round(time.time() - start, 2),
            "source_return_first_last": [float(returns[:, 0].mean()), float(returns[:, -1].mean())]}
    histories = Histories(arrays, meta)
    save_histories(histories, out_dir)
    return _collect_summary(histories, status="written")


def _collect_summary(histories: Histories, status: str) -> dict:
    states = histories.arrays["learning_states"]
    return {"status": status, "histories": len(states), "transitions_per_history": int(states.shape[1]),
            "train_goals": len(histories.train_goals), "test_goals": len(histories.test_goals), **histories.meta}


def _flat(source: str, states, actions, rewards, goals) -> dict[str, np.ndarray]:
    n = len(goals)
    return {f"{source}_states": states.reshape(n, -1), f"{source}_actions": actions.reshape(n, -1),
            f"{source}_rewards": rewards.reshape(n, -1), f"{source}_goals": goals.astype(np.int64)}


def save_histories(histories: Histories, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / "histories.npz"
    write_npz(npz, histories.arrays, compressed=True)
    histories.sha256 = sha256_file(npz)
    info = {"format": HISTORY_FORMAT, "version": VERSION, "sha256": histories.sha256, "meta": histories.meta}
    write_json(out_dir / "histories.json", info)
    return npz


def load_histories(path: Path) -> Histories:
    """Read and validate histories (a directory or its histories.npz)."""
    npz, info_path = artefact_files(path, "histories", "AD histories", "; run `tinypolicy ad collect` first")
    info = read_manifest(info_path, HISTORY_FORMAT, VERSION, "AD history description")
    digest = check_hash(npz, info.get("sha256"), info_path.name)
    names = ["train_goals", "test_goals"] + [f"{s}_{k}" for s in SOURCES for k in HISTORY_ARRAYS]
    arrays = load_arrays(npz, names, "histories")
    meta = info.get("meta", {})
    task_size = grid_env(meta.get("env", "")).all_tasks().shape[1]
    for source in SOURCES:
        s, a, r = (arrays[f"{source}_{k}"] for k in ("states", "actions", "rewards"))
        if (s.ndim != 2 or s.shape != a.shape or s.shape != r.shape
                or arrays[f"{source}_goals"].shape != (len(s), task_size)):
            raise UserError(f"{npz}: {source} arrays have inconsistent shapes")
        if s.max() >= NUM_STATES or a.max() >= NUM_ACTIONS or r.max() > 1:
            raise UserError(f"{npz}: {source} holds states, actions or rewards out of range")
    train, test = {tuple(g) for g in arrays["train_goals"]}, {tuple(g) for g in arrays["test_goals"]}
    if train & test or not {tuple(g) for g in arrays["learning_goals"]} <= train:
        raise UserError(f"{npz}: held-out goals appear in the training data")
    return Histories(arrays, meta, digest)


def check_env(actual: str, expected: str | None, where: Path) -> str:
    """`actual`, the env an artefact was collected on, unless `--env` named another."""
    if expected is not None and expected != actual:
        raise UserError(f"{where} was collected on {actual}, not on --env {expected}")
    return actual


def histories_env(path: Path, expected: str | None = None) -> str:
    """The env of the histories at `path`, read from their description alone (so that the CLI
    can pick the env's training defaults before loading the arrays)."""
    _, info_path = artefact_files(path, "histories", "AD histories", "; run `tinypolicy ad collect` first")
    env_id = read_manifest(info_path, HISTORY_FORMAT, VERSION, "AD history description").get("meta", {}).get("env", "")
    return check_env(grid_env(env_id).env_id, expected, path)


# --------------------------------------------------------------------------- train

METRIC_COLUMNS = ("step", "loss", "accuracy", "lr", "train_seconds")


def model_config(cfg: ADTrainConfig) -> ADConfig:
    """The transformer `cfg` describes, on Dark Room's states and actions."""
    try:
        return ADConfig(NUM_STATES, NUM_ACTIONS, cfg.window, cfg.dim, cfg.layers, cfg.heads, cfg.ff_dim, cfg.dropout,
                        cfg.attn_dropout, episode_return_input=cfg.episode_return == "yes")
    except ValueError as exc:
        raise UserError(str(exc)) from None


def history_tokens(states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, episode_steps: int):
    """Token t of a stream = (s_t, a_{t-1}, r_{t-1}, R_t) with R_t the return earlier in t's
    episode (episodes of `episode_steps`); target a_t. Inputs [H, L] -> torch [H, L]:
    states, prev_actions, prev_rewards, episode_returns, targets."""
    prev_actions = np.concatenate([np.full((len(actions), 1), NO_ACTION), actions[:, :-1]], 1)
    prev_rewards = np.concatenate([np.zeros((len(rewards), 1)), rewards[:, :-1]], 1)
    per_episode = rewards.reshape(len(rewards), -1, episode_steps)
    episode_returns = (np.cumsum(per_episode, -1) - per_episode).reshape(rewards.shape)
    return (torch.as_tensor(states, dtype=torch.long), torch.as_tensor(prev_actions, dtype=torch.long),
            torch.as_tensor(prev_rewards, dtype=torch.float32), torch.as_tensor(episode_returns, dtype=torch.float32),
            torch.as_tensor(actions, dtype=torch.long))


def sample_windows(tokens, batch: int, window: int, generator: torch.Generator):
    """`batch` random windows of `window` consecutive transitions (spanning episodes)."""
    count, length = tokens[0].shape
    rows = torch.randint(0, count, (batch, 1), generator=generator)
    cols = torch.randint(0, length - window + 1, (batch, 1), generator=generator) + torch.arange(window)
    return [t[rows, cols] for t in tokens]


def save_ad_checkpoint(path: Path, data: dict) -> None:
    save_torch_artefact(path, CHECKPOINT_FORMAT, VERSION, data)


def load_ad_checkpoint(path: Path) -> dict:
    return load_torch_artefact(path, CHECKPOINT_FORMAT, VERSION,
                               ("model_config", "model", "train_config", "step", "histories_sha256",
                                "source_q_learning"), "AD checkpoint")


def build_model(checkpoint: dict) -> ADTransformer:
    """The trained transformer from a loaded checkpoint, in eval mode."""
    model = ADTransformer(from_dict(ADConfig, checkpoint["model_config"], "AD checkpoint model_config"))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint weights do not fit its model config ({str(exc).splitlines()[0]})") from None
    return model.eval()


def train(data_dir: Path, out_dir: Path, cfg: ADTrainConfig, progress: bool = True) -> dict:
    """Train AD (cfg.source "learning") or ED ("expert"); resumes from out_dir/checkpoint.pt."""
    check_settings(cfg, "ad train")
    torch.set_num_threads(cfg.threads)
    histories = load_histories(data_dir)
    data = histories.source(cfg.source)
    if data["states"].shape[1] < cfg.window:
        raise UserError(f"histories hold {data['states'].shape[1]} transitions, fewer than --window {cfg.window}")
    out_dir = prepare_output_dir(out_dir)
    ckpt_path, sha = out_dir / "checkpoint.pt", histories.sha256
    torch.manual_seed(cfg.seed)
    model = ADTransformer(model_config(cfg))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, seconds, resumed_from = 0, 0.0, []
    if ckpt_path.exists():
        ckpt = load_ad_checkpoint(ckpt_path)
        # runs saved before tokens could carry episode returns trained without them
        refuse_other_settings({"episode_return": "no"} | ckpt["train_config"]
                              | {"histories_sha256": ckpt["histories_sha256"]},
                              asdict(cfg) | {"histories_sha256": sha}, ckpt_path, ignore=cfg.RESUMABLE,
                              hint="use a new --out")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, seconds = int(ckpt["step"]), float(ckpt["train_seconds"])
        resumed_from = list(ckpt.get("resumed_from", []))
        if ckpt["train_config"]["steps"] != cfg.steps:
            resumed_from.append({"step": step, "steps_before": ckpt["train_config"]["steps"]})

    def checkpoint() -> None:
        bad = nonfinite_tensors(model)
        if bad:  # an update after the last finite loss; the last good checkpoint stays
            raise UserError(f"training diverged at step {step} ({bad[0]} is not finite); lower --lr")
        save_ad_checkpoint(ckpt_path, {
            "model_config": model_config(cfg).to_dict(), "model": model.state_dict(), "train_config": asdict(cfg),
            "step": step, "train_seconds": seconds, "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "histories_sha256": sha,
            "resumed_from": resumed_from, "source_q_learning": histories.meta.get("q_learning", {}),
            "env_id": histories.env_id,
            "test_goals": torch.as_tensor(histories.test_goals), "train_goals": torch.as_tensor(histories.train_goals)})

    tokens = history_tokens(data["states"], data["actions"], data["rewards"], grid_env(histories.env_id).episode_steps)
    metrics = CsvLog(out_dir / "metrics.csv", METRIC_COLUMNS, resume_step=step)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, unit="step", desc=f"ad train ({cfg.source})")
    losses, hits = [], []
    while step < cfg.steps:
        started = time.time()
        states, prev_actions, prev_rewards, episode_returns, targets = sample_windows(tokens, cfg.batch, cfg.window,
                                                                                     generator)
        logits = model(states, prev_actions, prev_rewards, episode_returns)
        loss = F.cross_entropy(logits.reshape(-1, NUM_ACTIONS), targets.reshape(-1))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise UserError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
        losses.append(loss.item())
        hits.append((logits.argmax(-1) == targets).float().mean().item())
        step += 1
        seconds += time.time() - started
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            metrics.write([step, f"{np.mean(losses):.5f}", f"{np.mean(hits):.4f}", f"{cfg.lr_at(step - 1):.3g}",
                           f"{seconds:.1f}"])
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", acc=f"{np.mean(hits):.3f}")
            losses, hits = [], []
            checkpoint()
    bar.close()
    summary = {"source": cfg.source, "steps": step, "train_seconds": round(seconds, 1), "resumed_from": resumed_from,
               "parameters": sum(p.numel() for p in model.parameters()), "checkpoint": str(ckpt_path)}
    write_json(out_dir / "train.json", summary)
    return summary


# --------------------------------------------------------------------------- evaluate

# A step function: tokens (states, prev_actions, prev_rewards, episode_returns) [B, n], n <= window
# -> logits [B, A] of the last token; a model without the episode-return input ignores that one.
# Torch evaluates it batched; `export` passes an ONNX Runtime one too.
StepFunction = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def torch_step_function(model: ADTransformer) -> StepFunction:
    @torch.inference_mode()
    def step(states, prev_actions, prev_rewards, episode_returns):
        logits = model(torch.as_tensor(states, dtype=torch.long), torch.as_tensor(prev_actions, dtype=torch.long),
                       torch.as_tensor(prev_rewards, dtype=torch.float32),
                       torch.as_tensor(episode_returns, dtype=torch.float32), last_only=True)
        return logits[:, -1].numpy()

    return step


def sample_actions(logits: np.ndarray, uniforms: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Inverse-CDF sampling from softmax(logits / temperature) with given uniforms, so two
    backends with the same uniforms take the same actions unless their probabilities differ at
    the draw; temperature 0 takes the argmax."""
    if temperature == 0:
        return logits.argmax(1)
    logits = logits / temperature
    p = np.exp(logits - logits.max(1, keepdims=True))
    cdf = np.cumsum(p / p.sum(1, keepdims=True), 1)
    return np.minimum((cdf < uniforms[:, None]).sum(1), logits.shape[1] - 1)


def in_context_returns(step_fn: StepFunction, env: BatchDarkRoom | BatchKeyToDoor, episodes: int, window: int,
                       seed: int, reset_each_episode: bool = False, temperature: float = 1.0,
                       progress: bool = False, desc: str = "in-context") -> np.ndarray:
    """Roll the frozen model out from an empty context on each of the batch env's N tasks:
    returns [N, episodes].

    The context holds the last `window` transitions (across episodes), or only the current
    episode's when `reset_each_episode`."""
    rng, episode_steps = np.random.default_rng(seed), env.episode_steps
    n, steps = len(env.xy), episodes * episode_steps
    states = np.zeros((n, steps), dtype=np.int64)
    prev_actions = np.full((n, steps), NO_ACTION, dtype=np.int64)
    prev_rewards = np.zeros((n, steps), dtype=np.float32)
    episode_returns = np.zeros((n, steps), dtype=np.float32)   # the return earlier in each step's episode
    returns = np.zeros((n, episodes))
    for k in tqdm(range(steps), disable=not progress, desc=desc, unit="step", mininterval=2):
        episode, t = divmod(k, episode_steps)
        if t == 0:
            states[:, k] = env.reset()
        start = max(0, k + 1 - window, episode * episode_steps if reset_each_episode else 0)
        logits = step_fn(states[:, start:k + 1], prev_actions[:, start:k + 1], prev_rewards[:, start:k + 1],
                         episode_returns[:, start:k + 1])
        uniforms = rng.random(n)
        actions = sample_actions(logits, uniforms, temperature)
        s_next, rewards = env.step(actions)
        returns[:, episode] += rewards
        if k + 1 < steps:
            states[:, k + 1], prev_actions[:, k + 1], prev_rewards[:, k + 1] = s_next, actions, rewards
            if t + 1 < episode_steps:
                episode_returns[:, k + 1] = returns[:, episode]
    return returns


def random_returns(env: BatchDarkRoom | BatchKeyToDoor, episodes: int, seed: int) -> np.ndarray:
    rng, n = np.random.default_rng(seed), len(env.xy)
    returns = np.zeros((n, episodes))
    for episode in range(episodes):
        env.reset()
        for _ in range(env.episode_steps):
            returns[:, episode] += env.step(rng.integers(0, NUM_ACTIONS, n))[1]
    return returns


def checkpoint_env(checkpoint: dict, expected: str | None, where: Path) -> type[BatchDarkRoom | BatchKeyToDoor]:
    """The batch env class a loaded AD checkpoint was trained on. Checkpoints written before
    Key-to-Door existed name no env: they are Dark Room's."""
    return grid_env(check_env(checkpoint.get("env_id", DARK_ROOM_ID), expected, where))


def checkpoint_env_id(path: Path, expected: str | None = None) -> str:
    """The env the AD checkpoint at `path` was trained on (so that the CLI can pick the env's
    evaluation defaults)."""
    return checkpoint_env(load_ad_checkpoint(path), expected, path).env_id


def evaluate(ad_checkpoint: Path, out_dir: Path, cfg: ADEvalConfig, ed_checkpoint: Path | None = None,
             progress: bool = True, env_id: str | None = None) -> dict:
    """Every curve of the AD benchmark; writes curves.json, curves.csv, curves.png and
    context_ablation.png. `env_id`, when given, must be the checkpoint's env."""
    torch.set_num_threads(cfg.threads)
    ckpt = load_ad_checkpoint(ad_checkpoint)
    env_cls = checkpoint_env(ckpt, env_id, ad_checkpoint)
    model = build_model(ckpt)
    ed_model = None
    if ed_checkpoint is not None:  # checked before the AD curve's minutes, not after
        ed = load_ad_checkpoint(ed_checkpoint)
        if ed["histories_sha256"] != ckpt["histories_sha256"]:
            raise UserError(f"{ed_checkpoint} was trained on other histories than {ad_checkpoint}")
        ed_model = build_model(ed)
    out_dir = prepare_output_dir(out_dir)
    window = model.cfg.window
    test_goals = ckpt["test_goals"].numpy()
    train_goals = ckpt["train_goals"].numpy()
    test_seeded = np.repeat(test_goals, cfg.seeds, axis=0)
    test_env = env_cls(test_seeded)  # every rollout resets it first, so the curves can share it
    step_fn = torch_step_function(model)
    curves: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}

    def run(name: str, fn: Callable[[], np.ndarray]) -> None:
        started = time.time()
        curves[name] = fn()
        timings[name] = round(time.time() - started, 1)

    run("ad", lambda: in_context_returns(step_fn, test_env, cfg.episodes, window, cfg.seed, temperature=cfg.temperature,
                                         progress=progress, desc="AD held-out"))
    if ed_model is not None:
        run("ed", lambda: in_context_returns(torch_step_function(ed_model), test_env, cfg.short_episodes,
                                             ed_model.cfg.window, cfg.seed, temperature=cfg.temperature,
                                             progress=progress, desc="ED held-out"))
    train_subset = train_goals[np.random.default_rng(cfg.seed).permutation(len(train_goals))[:len(test_goals)]]
    run("ad_train_goals", lambda: in_context_returns(step_fn, env_cls(train_subset), cfg.short_episodes, window,
                                                     cfg.seed, temperature=cfg.temperature, progress=progress,
                                                     desc="AD train goals"))
    run(f"ad_window_{cfg.ablation_window}",
        lambda: in_context_returns(step_fn, test_env, cfg.short_episodes, cfg.ablation_window, cfg.seed,
                                   temperature=cfg.temperature, progress=progress, desc="AD short window"))
    run("ad_reset_each_episode",
        lambda: in_context_returns(step_fn, test_env, cfg.short_episodes, window, cfg.seed, temperature=cfg.temperature,
                                   reset_each_episode=True, progress=progress, desc="AD context reset"))
    # the Q-learner the histories came from
    source_cfg = from_dict(QLearningConfig, ckpt["source_q_learning"], f"{ad_checkpoint} source_q_learning")
    run("source", lambda: q_learning(test_env, cfg.episodes, np.random.default_rng(cfg.seed),
                                     source_cfg)[2].sum(-1, dtype=np.float64))
    run("random", lambda: random_returns(test_env, cfg.episodes, cfg.seed))
    curves["optimal"] = np.repeat(env_cls.optimal_return(test_seeded)[:, None], cfg.episodes, axis=1)

    mean = {name: c.mean(0) for name, c in curves.items()}
    marks = [e for e in TABLE_EPISODES if e <= cfg.episodes]
    summary = {
        "env": env_cls.env_id, "test_goals": test_goals.tolist(), "seeds_per_goal": cfg.seeds, "eval_seed": cfg.seed,
        "temperature": cfg.temperature, "window": window, "train_step": int(ckpt["step"]),
        "train_seconds": float(ckpt["train_seconds"]), "eval_seconds": timings,
        "return_at_episode": {name: {e: round(float(m[e - 1]), 2) for e in marks if e <= len(m)}
                              for name, m in mean.items()},
        "mean_last_50": {name: round(float(m[-50:].mean()), 2) for name, m in mean.items()},
        # "Faster than the source": the mean return over the first 100 episodes (or fewer, if shorter).
        "mean_first_100": {name: round(float(m[:100].mean()), 2) for name, m in mean.items()},
        # Which held-out tasks AD solves: the length of the optimal walk explains most misses.
        "ad_last_50_per_goal": [
            {"goal": goal.tolist(), "distance": int(distance), "per_seed": [round(float(v), 2) for v in per_seed]}
            for goal, distance, per_seed in zip(test_goals, env_cls.path_length(test_goals),
                                                curves["ad"][:, -50:].mean(1).reshape(len(test_goals), cfg.seeds))],
        "curves": {name: [round(float(v), 3) for v in m] for name, m in mean.items()},
    }
    write_json(out_dir / "curves.json", summary)
    write_curves_csv(out_dir / "curves.csv", mean)
    write_text(out_dir / "curves.md", curves_table(summary))
    title = f"{env_cls.title}, {len(test_goals)} held-out {env_cls.task_noun} x {cfg.seeds} seeds"
    ablation = {f"ad_window_{cfg.ablation_window}", "ad_reset_each_episode"}
    plot_curves({k: v for k, v in mean.items() if k not in ablation}, out_dir / "curves.png", title)
    plot_curves({k: v for k, v in mean.items() if k in ablation | {"ad", "optimal", "random"}},
                out_dir / "context_ablation.png", f"Context ablation: {title}")
    return summary


TABLE_EPISODES = (1, 10, 25, 50, 100, 150, 200, 300, 500)


def curves_table(summary: dict) -> str:
    """The docs' table of an evaluation (curves.json's summary) as Markdown: return at the
    marked episodes, mean of the first 100 and of the last 50, and the run's seeds and cost."""
    marks = sorted({int(e) for returns in summary["return_at_episode"].values() for e in returns})
    lines = ["| curve | " + " | ".join(f"ep. {e}" for e in marks) + " | mean 1-100 | mean last 50 |",
             "|---|" + "---:|" * (len(marks) + 2)]
    for name, returns in summary["return_at_episode"].items():
        returns = {int(e): v for e, v in returns.items()}  # str keys once read back from curves.json
        cells = [f"{returns[e]:.2f}" if e in returns else "" for e in marks]
        cells += [f"{summary['mean_first_100'][name]:.2f}", f"{summary['mean_last_50'][name]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"{summary['env']}: {len(summary['test_goals'])} held-out tasks x {summary['seeds_per_goal']} "
              f"evaluation seeds (seed {summary['eval_seed']}); window {summary['window']}; "
              f"{summary['train_step']} training steps in {summary['train_seconds'] / 60:.1f} min; "
              f"evaluation {sum(summary['eval_seconds'].values()) / 60:.1f} min.", ""]
    return "\n".join(lines)


def write_curves_csv(path: Path, curves: dict[str, np.ndarray]) -> None:
    names = list(curves)
    write_csv(path, ["episode", *names],
              ([e + 1, *(f"{curves[n][e]:.3f}" if e < len(curves[n]) else "" for n in names)]
               for e in range(max(len(c) for c in curves.values()))))


def plot_curves(curves: dict[str, np.ndarray], path: Path, title: str, smooth: int = 10) -> None:
    fig, ax = subplots(figsize=(8, 5))
    for name, curve in curves.items():
        k = min(smooth, len(curve))
        smoothed = np.convolve(curve, np.ones(k) / k, mode="valid")
        style = {"optimal": "k--", "random": "k:"}.get(name, "-")
        ax.plot(np.arange(k, len(curve) + 1), smoothed, style, label=name.replace("_", " "), lw=1.5)
    ax.set_xlabel("episode (in context, frozen weights)")
    ax.set_ylabel(f"return per episode ({smooth}-episode mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


# --------------------------------------------------------------------------- export

def export(checkpoint_path: Path, out_dir: Path, episodes: int = ADExportConfig.episodes,
           seed: int = ADExportConfig.seed, temperature: float = ADExportConfig.temperature,
           progress: bool = True, env_id: str | None = None) -> dict:
    """Export ad.onnx into out_dir and compare it with PyTorch on the held-out in-context
    curve (one evaluation seed per held-out task, the same uniforms for both, so the two
    runs act alike wherever their probabilities agree), sampling actions at `temperature` as
    a device would; writes export.json and parity.png. `env_id`, when given, must be the
    checkpoint's env."""
    ckpt = load_ad_checkpoint(checkpoint_path)
    env_cls = checkpoint_env(ckpt, env_id, checkpoint_path)
    model = build_model(ckpt)
    window = model.cfg.window
    out_dir = prepare_output_dir(out_dir)
    onnx_path = export_step_onnx(model, out_dir / "ad.onnx")
    session = ort_session(onnx_path)
    goals = ckpt["test_goals"].numpy()

    torch_fn, ort_fn = torch_step_function(model), ort_step_function(session, window, model.cfg.num_actions)
    gaps, agree, total = [0.0], [0], [0]

    def checked(*tokens):
        ort_logits, torch_logits = ort_fn(*tokens), torch_fn(*tokens)
        gaps[0] = max(gaps[0], float(np.abs(ort_logits - torch_logits).max()))
        agree[0] += int((ort_logits.argmax(1) == torch_logits.argmax(1)).sum())
        total[0] += len(tokens[0])
        return ort_logits

    started = time.time()
    torch_curve = in_context_returns(torch_fn, env_cls(goals), episodes, window, seed, temperature=temperature,
                                     progress=progress, desc="torch")
    torch_seconds = time.time() - started
    started = time.time()
    ort_curve = in_context_returns(checked, env_cls(goals), episodes, window, seed, temperature=temperature,
                                   progress=progress, desc="onnxruntime")
    ort_seconds = time.time() - started

    latency_ms = step_latency_ms(session, window)

    torch_mean, ort_mean = torch_curve.mean(0), ort_curve.mean(0)
    summary = {
        "env": env_cls.env_id, "onnx": str(onnx_path), "opset": ONNX_OPSET, "window": window,
        "inputs": input_names(model.cfg),
        "bytes": onnx_path.stat().st_size,
        "goals": len(goals), "episodes": episodes, "seed": seed, "temperature": temperature,
        "max_abs_logit_diff": gaps[0], "greedy_action_agreement": agree[0] / max(1, total[0]),
        "torch_mean_return": float(torch_mean.mean()), "onnx_mean_return": float(ort_mean.mean()),
        "torch_last_20": float(torch_mean[-20:].mean()), "onnx_last_20": float(ort_mean[-20:].mean()),
        "max_abs_curve_diff": float(np.abs(torch_mean - ort_mean).max()),
        "ort_step_latency_ms_full_window": round(latency_ms, 3),
        "torch_seconds": round(torch_seconds, 1), "onnx_seconds": round(ort_seconds, 1),
        "curves": {"torch": [round(float(v), 3) for v in torch_mean], "onnx": [round(float(v), 3) for v in ort_mean]},
    }
    write_json(out_dir / "export.json", summary)
    plot_curves({"torch": torch_mean, "onnxruntime": ort_mean}, out_dir / "parity.png",
                title=f"AD held-out curve on {env_cls.title}: PyTorch vs ONNX Runtime ({len(goals)} tasks)")
    return summary
