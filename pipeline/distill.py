"""Behaviour distillation (HaDES): evolve D synthetic state-action pairs that train good policies.

Read top to bottom, one generation is:
  1. antithetic perturbations of the search mean mu = [states (D x obs), actions (D x act)];
  2. behaviour cloning of a fresh policy on every perturbed dataset, batched in torch
     (models.bc) over all members of one architecture. HaDES-F: one fixed init for all;
     HaDES-R: a new random init per antithetic pair and generation; architecture-randomised
     (mode a, beyond the paper): per pair also a new architecture drawn from a family (widths,
     depths, activations, and optionally the sparse topology of an exported actor), so the
     dataset is optimised for the policies a robot may train, not for one network;
  3. fitness = the MuJoCo return of each trained policy (one episode, <= 1000 steps), all
     members rolled out together in worker processes (pipeline.rollouts). The two members of
     an antithetic pair share their start state, init and architecture: the gradient is
     built from their difference, which then measures the dataset perturbation rather than
     the luck of a draw (with a few dozen members, unshared draws drown it; the paper's 2048
     members average it out);
  4. Adam (beta1 0.99) on mu with the OpenAI-ES gradient of raw (or centred-rank) fitness.
The search mean itself is trained and rolled out alongside every generation (`mean_episodes`
episodes, not used in the gradient) because a search mean, not the best member, is the
result: the final dataset is the mean with the highest measured return (ES on a few dozen
members drifts; its last mean is often not its best), and the last mean is reported beside it.

Everything is checkpointed each generation in `es_state.npz`; re-running resumes. The
random draws of generation g depend only on (seed, g), so a resumed run is identical to
an uninterrupted one.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinypolicy.checkpoint import checkpoint_file, load_checkpoint
from tinypolicy.config import refuse_other_settings
from tinypolicy.envs import make_env, random_policy_returns, require_dims, rollout
from tinypolicy.models.bc import BCParams, init_params, train_bc
from tinypolicy.ondevice.artefact import atomic_write, prepare_output_dir, write_json, write_npz
from tinypolicy.ondevice.dataset import BCRecipe, Dataset, save_dataset
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.retrain import read_mask
from tinypolicy.pipeline.es import Adam, antithetic_noise, es_gradient, shape_fitness
from tinypolicy.pipeline.rollouts import PopulationEvaluator, population_evaluator
from tinypolicy.pipeline.settings import RANDOM_BASELINE_EPISODES, RETRAINED_EVAL_SEED, DistillConfig
from tinypolicy.plots import save_figure, subplots
from tinypolicy.tables import write_csv

STATE_FILE = "es_state.npz"
FIXED_INIT_OFFSET = 420  # HaDES-F's init seed is 420 + run seed, as in the official code
HISTORY_COLUMNS = ("generation", "mean_fitness", "best_fitness", "worst_fitness", "mean_dataset_return",
                   "env_steps", "seconds", "bc_seconds", "rollout_seconds")
STD_FLOOR = 1e-2  # constant observation dims must not blow up the normalised states


def observation_stats(visited: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed normalisation of a dataset's states: the visited states' mean and std, the std
    floored at STD_FLOOR."""
    return visited.mean(0), np.maximum(visited.std(0), STD_FLOOR)


# ---------------------------------------------------------------------------------------------
# Starting point: fixed observation statistics and the initial search mean

def _random_rollout_states(env_id: str, steps: int, seed: int) -> np.ndarray:
    return np.asarray([step.obs for step in rollout(env_id, None, seed, steps=steps)], dtype=np.float64)


def expert_rollouts(actor, env_id: str, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """States visited by the expert's deterministic policy, its actions in policy units and
    the returns of its finished episodes."""
    squashed_actions = []

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        squashed = actor.squashed(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
        squashed_actions.append(squashed)  # the env gets env units, the dataset policy units
        return actor.to_env_units(torch.as_tensor(squashed)).numpy()

    trajectory = list(rollout(env_id, policy, seed, steps=steps))
    return (np.asarray([step.obs for step in trajectory]), np.asarray(squashed_actions),
            [step.episode_return for step in trajectory if step.done])


def _pinned(source: str | Path, copy: Path, read):
    """`read` of an input file that the run keeps a copy of (the original may be rewritten while
    it goes on, e.g. by a training run still going). A first run copies `source` under a temporary
    name, reads (and so checks) that copy and only then renames it to `copy`: what it checked is
    what it keeps, and a copy that fails the check is removed, never trusted by a rerun. A resumed
    run reads its copy."""
    source = Path(source)
    if copy.exists():
        return read(copy)
    if not source.is_file():
        return read(source)  # nothing to copy: the reader refuses it in its own words
    value = None

    def copy_and_read(pending: Path) -> None:
        nonlocal value
        shutil.copyfile(source, pending)
        try:
            value = read(pending)
        except UserError as exc:  # the copy is byte for byte the file the user named: name that one
            raise UserError(str(exc).replace(str(pending), str(source))) from None

    atomic_write(copy, copy_and_read)
    return value


def _load_expert(cfg: DistillConfig, out: Path):
    """The expert checkpoint and its actor."""
    def read(path: Path):
        ckpt = load_checkpoint(path)
        if ckpt.env_id != cfg.env_id:
            raise UserError(f"expert {cfg.expert} was trained on {ckpt.env_id}, not {cfg.env_id}")
        require_dims(cfg.env_id, ckpt.data["spaces"], f"expert {cfg.expert}")
        actor = ckpt.build_actor()
        if not hasattr(actor, "squashed"):
            raise UserError(f"expert {cfg.expert} has no squashed-action actor")
        return ckpt, actor
    return _pinned(checkpoint_file(cfg.expert), out / "expert.pt", read)


def initial_state(cfg: DistillConfig, out: Path, obs_dim: int, act_dim: int) -> dict:
    """obs_mean, obs_std and the initial mean vector; plus what the expert was, if used."""
    rng = np.random.default_rng([cfg.seed, 7])
    info: dict = {}
    if cfg.init == "zeros":
        visited = _random_rollout_states(cfg.env_id, cfg.stats_steps, seed=cfg.seed * 1000 + 10_000_000)
        mean, std = observation_stats(visited)
        states = np.zeros((cfg.size, obs_dim))  # every state = the mean observation
        actions = np.zeros((cfg.size, act_dim))
    else:
        ckpt, actor = _load_expert(cfg, out)
        visited, labels, returns = expert_rollouts(actor, cfg.env_id, cfg.stats_steps,
                                                    seed=cfg.seed * 1000 + 10_000_000)
        mean, std = observation_stats(visited)
        pick = rng.choice(len(visited), size=cfg.size, replace=len(visited) < cfg.size)
        states, actions = (visited[pick] - mean) / std, labels[pick]
        info = {"expert_steps_done": ckpt.steps_done, "expert_rollout_returns": [round(r, 2) for r in returns],
                # what retrained returns are a share of; the deterministic expert's finished episodes
                "expert_return": round(float(np.mean(returns)), 2) if returns else None,
                "expert_config": {k: ckpt.config.get(k) for k in ("algo", "method", "actor_sparsity", "hidden")}}
    mu = np.concatenate([states.ravel(), actions.ravel()])
    return {"obs_mean": mean, "obs_std": std, "mu": mu, "info": info}


# ---------------------------------------------------------------------------------------------
# One generation

def split_candidates(x: np.ndarray, size: int, obs_dim: int, act_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """[P, D*obs + D*act] -> states [P, D, obs], actions [P, D, act]."""
    cut = size * obs_dim
    return x[:, :cut].reshape(-1, size, obs_dim), x[:, cut:].reshape(-1, size, act_dim)


@dataclass(frozen=True)
class Architecture:
    """A student policy a dataset must train: hidden sizes and activation; `masked`: with the
    sparse topology of an exported actor (whose hidden sizes these then are)."""
    hidden: tuple[int, ...]
    activation: str
    masked: bool = False

    @property
    def label(self) -> str:
        return f"{'mask ' if self.masked else ''}{'-'.join(map(str, self.hidden))} {self.activation}"


Family = tuple[list[Architecture], list[Architecture]]  # (dense, masked)


def architecture_family(cfg: DistillConfig, masks: list[np.ndarray] | None) -> Family:
    """(dense, masked) architectures candidates train: the recipe's alone but in mode a."""
    if cfg.mode != "a":
        return [Architecture(cfg.hidden, cfg.activation)], []
    dense = [Architecture((width,) * depth, activation) for width in cfg.arch_widths for depth in cfg.arch_depths
             for activation in cfg.arch_activations]
    masked = [] if masks is None else [Architecture(tuple(m.shape[0] for m in masks[:-1]), activation, True)
                                       for activation in cfg.arch_activations]
    return dense, masked


def sample_architectures(cfg: DistillConfig, family: Family, count: int, generation: int) -> list[Architecture]:
    """`count` draws: the masked topology (any activation) with probability `cfg.mask_share` when
    there is one, else a uniform draw from the dense ones. Depends only on (seed, generation)."""
    dense, masked = family
    rng = np.random.default_rng([cfg.seed, generation, 1])
    use_mask = rng.random(count) < (cfg.mask_share if masked else 0.0)
    dense_pick, mask_pick = rng.integers(len(dense), size=count), rng.integers(max(len(masked), 1), size=count)
    return [masked[m] if use else dense[d] for use, d, m in zip(use_mask, dense_pick, mask_pick)]


def hades_f_init(cfg: DistillConfig, obs_dim: int, act_dim: int) -> BCParams:
    """HaDES-F's one init (shipped as policy_init.npz)."""
    return init_params(1, obs_dim, act_dim, cfg.hidden, FIXED_INIT_OFFSET + cfg.seed)


@dataclass
class StudentGroup:
    """The members of a generation with one network shape, trained as one batch."""
    hidden: tuple[int, ...]
    masked: bool
    members: np.ndarray            # candidate indices
    activations: tuple[str, ...]   # one per member
    init: BCParams                 # one per member


def student_groups(cfg: DistillConfig, family: Family, masks: list[torch.Tensor] | None, count: int, generation: int,
                   obs_dim: int, act_dim: int) -> list[StudentGroup]:
    """Architecture and init of each of `count` candidates: the population's antithetic pairs
    (member i and i + N/2) and then the search mean's `count - N` episodes. One draw per pair
    or mean episode, except HaDES-F's single init. Members whose architectures differ only in
    their activation share a group (each BC batch costs a fixed Python overhead per step)."""
    half = cfg.population // 2
    slot = np.concatenate([np.arange(half), np.arange(half), half + np.arange(count - cfg.population)])
    if cfg.mode == "f":
        return [StudentGroup(cfg.hidden, False, np.arange(count), (cfg.activation,) * count,
                             hades_f_init(cfg, obs_dim, act_dim).take([0] * count))]
    drawn = sample_architectures(cfg, family, half + count - cfg.population, generation)
    generator = torch.Generator().manual_seed(int(1e6) * (cfg.seed + 1) + generation)
    groups = []
    for hidden, masked in dict.fromkeys((a.hidden, a.masked) for a in drawn):  # in order of first draw
        own = np.flatnonzero([(a.hidden, a.masked) == (hidden, masked) for a in drawn])
        inits = init_params(len(own), obs_dim, act_dim, hidden, generator, masks if masked else None)
        members = np.flatnonzero(np.isin(slot, own))
        groups.append(StudentGroup(hidden, masked, members, tuple(drawn[slot[m]].activation for m in members),
                                   inits.take(np.searchsorted(own, slot[members]))))
    return groups


def run_generation(cfg: DistillConfig, mu: np.ndarray, generation: int, evaluator: PopulationEvaluator,
                   obs_mean: np.ndarray, obs_std: np.ndarray, obs_dim: int, act_dim: int, family: Family,
                   masks: list[torch.Tensor] | None) -> dict:
    rng = np.random.default_rng([cfg.seed, generation])
    noise = antithetic_noise(rng, cfg.population, mu.size)
    k = cfg.mean_episodes
    candidates = np.concatenate([mu[None] + cfg.sigma * noise, np.repeat(mu[None], k, 0)])  # last k: the mean
    states, actions = split_candidates(candidates, cfg.size, obs_dim, act_dim)
    states, actions = torch.as_tensor(states, dtype=torch.float32), torch.as_tensor(actions, dtype=torch.float32)

    start = time.perf_counter()
    policies, order = [], []  # rollout groups (one activation each) and their members
    for group in student_groups(cfg, family, masks, len(candidates), generation, obs_dim, act_dim):
        index = torch.as_tensor(group.members)
        activation = group.activations[0] if len(set(group.activations)) == 1 else group.activations
        params, _ = train_bc(states[index], actions[index], group.init, cfg.bc_steps, cfg.bc_lr, activation,
                             masks=masks if group.masked else None)
        arrays = params.numpy()
        for name in dict.fromkeys(group.activations):
            pick = np.array([a == name for a in group.activations])
            policies.append(({key: value[pick] for key, value in arrays.items()}, name))
            order.append(group.members[pick])
    order = np.concatenate(order)
    bc_seconds = time.perf_counter() - start

    half = cfg.population // 2
    pair_seeds = rng.integers(0, 2**31 - 1, size=half + k)
    env_seeds = np.concatenate([pair_seeds[:half], pair_seeds[:half], pair_seeds[half:]])
    result = evaluator.evaluate_groups(policies, obs_mean.astype(np.float32), obs_std.astype(np.float32),
                                       env_seeds[order])
    returns = np.empty(len(candidates))
    returns[order] = result.returns
    fitness, mean_return = returns[:-k], float(returns[-k:].mean())
    gradient = es_gradient(noise, shape_fitness(fitness, cfg.shaping), cfg.sigma)
    return {"gradient": gradient, "fitness": fitness, "mean_dataset_return": mean_return,
            "env_steps": int(result.lengths.sum()), "bc_seconds": bc_seconds,
            "rollout_seconds": time.perf_counter() - start - bc_seconds}


# ---------------------------------------------------------------------------------------------
# Checkpoint

def _save_state(path: Path, cfg: DistillConfig, mu, best_mu, adam: Adam, obs_mean, obs_std, history, info) -> None:
    write_npz(path, dict(mu=mu, best_mu=best_mu, adam_m=adam.m, adam_v=adam.v, adam_t=np.int64(adam.t),
                         obs_mean=obs_mean, obs_std=obs_std,
                         history=np.asarray(history, dtype=np.float64).reshape(-1, len(HISTORY_COLUMNS)),
                         identity=np.array(json.dumps(cfg.identity(), sort_keys=True)),
                         info=np.array(json.dumps(info))))


def _load_state(path: Path, cfg: DistillConfig) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {path} to resume ({exc}); delete it to start over") from None
    missing = {"mu", "best_mu", "adam_m", "adam_v", "adam_t", "obs_mean", "obs_std", "history", "identity", "info"} - state.keys()
    if missing:
        raise UserError(f"{path} lacks {', '.join(sorted(missing))}; delete it to start over")
    refuse_other_settings(json.loads(str(state["identity"])), json.loads(json.dumps(cfg.identity())), path.parent,
                          hint="use another --out or the same settings to resume")
    return state


# ---------------------------------------------------------------------------------------------
# Final dataset evaluation, reports

def retrain_and_evaluate(dataset: Dataset, evaluator: PopulationEvaluator, seeds: list[int], episodes: int,
                         recipe: BCRecipe | None = None, fixed_init: BCParams | None = None) -> np.ndarray:
    """Train one policy per init seed (batched) on the dataset; mean return of each over `episodes`."""
    recipe = recipe or dataset.recipe
    inits = fixed_init if fixed_init is not None else BCParams.stack(
        [init_params(1, dataset.obs_dim, dataset.act_dim, recipe.hidden, s) for s in seeds])
    params, _ = train_bc(torch.as_tensor(dataset.states), torch.as_tensor(dataset.actions), inits,
                         recipe.steps, recipe.lr, recipe.activation, recipe.adam_eps, recipe.grad_clip)
    return evaluate_policies(evaluator, [(params.numpy(), recipe.activation)], dataset, episodes)


def evaluate_policies(evaluator: PopulationEvaluator, groups: list[tuple[dict, str]], dataset: Dataset,
                      episodes: int) -> np.ndarray:
    """Mean return over `episodes` (env seeds RETRAINED_EVAL_SEED, RETRAINED_EVAL_SEED + 1, ...)
    of every policy in `groups` (stacked arrays, activation), all rolled out at once; in member order."""
    repeated = [({k: np.repeat(v, episodes, axis=0) for k, v in arrays.items()}, activation)
                for arrays, activation in groups]
    count = sum(len(arrays["log_std"]) for arrays, _ in groups)
    env_seeds = np.tile(RETRAINED_EVAL_SEED + np.arange(episodes), count)
    result = evaluator.evaluate_groups(repeated, dataset.obs_mean, dataset.obs_std, env_seeds)
    return result.returns.reshape(count, episodes).mean(1)


def write_fitness_csv(out: Path, history: np.ndarray) -> None:
    write_csv(out / "fitness.csv", HISTORY_COLUMNS,
              ([int(row[0]), *(f"{v:.3f}" for v in row[1:5]), int(row[5]), *(f"{v:.3f}" for v in row[6:])]
               for row in history))


def plot_fitness(out: Path, history: np.ndarray, title: str) -> None:
    fig, ax = subplots(figsize=(7, 4))
    gen = history[:, 0]
    ax.fill_between(gen, history[:, 3], history[:, 2], alpha=0.2, label="population min-max")
    ax.plot(gen, history[:, 1], label="population mean")
    ax.plot(gen, history[:, 4], label="search-mean dataset", lw=1)
    ax.set_xlabel("generation")
    ax.set_ylabel("return (1 episode)")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, out / "fitness.png")


def _render_worker(env_id: str, observations: np.ndarray, path: str, queue) -> None:
    try:
        import gymnasium as gym
        import mujoco

        env = gym.make(env_id).unwrapped
        model, data = env.model, env.data
        excluded = model.nq + model.nv - observations.shape[1]
        if not 0 <= excluded <= 2 or excluded > model.nq:
            raise ValueError(f"cannot map {env_id} observations onto qpos/qvel")
        renderer = mujoco.Renderer(model, 240, 240)
        camera = mujoco.MjvCamera()
        images = []
        for obs in observations:
            data.qpos[:] = np.concatenate([np.zeros(excluded), obs[:model.nq - excluded]])
            data.qvel[:] = obs[model.nq - excluded:model.nq - excluded + model.nv]
            mujoco.mj_forward(model, data)
            mujoco.mjv_defaultFreeCamera(model, camera)
            camera.lookat[:] = data.subtree_com[1]  # the robot's centre of mass
            camera.distance, camera.elevation, camera.azimuth = 3.0, -10.0, 90.0
            renderer.update_scene(data, camera)
            images.append(renderer.render())
        columns = min(8, len(images))
        rows = -(-len(images) // columns)
        fig, axes = subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for k, (ax, image) in enumerate(zip(axes.ravel(), images)):
            ax.imshow(image)
            ax.set_title(str(k), fontsize=7)
        fig.suptitle(f"{env_id}: the {len(images)} synthetic states", fontsize=9)
        save_figure(fig, path, dpi=100)
        queue.put(None)
    except Exception as exc:  # rendering is a picture for people; a missing GL must not lose the run
        queue.put(f"{type(exc).__name__}: {exc}")


def render_states(dataset: Dataset, path: Path, limit: int = 64) -> str | None:
    """Render the dataset's states with MuJoCo offscreen (MUJOCO_GL, default egl); returns an error or None."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # read by mujoco at import, in the fresh process
    context = mp.get_context("spawn")
    queue = context.Queue()
    observations = dataset.states[:limit] * dataset.obs_std + dataset.obs_mean
    process = context.Process(target=_render_worker, args=(dataset.env_id, observations, str(path), queue))
    process.start()
    process.join(timeout=300)
    if process.is_alive():
        process.terminate()
        return "rendering timed out"
    return queue.get() if not queue.empty() else f"renderer exited with status {process.exitcode}"


# ---------------------------------------------------------------------------------------------
# The stage

def distill(config: DistillConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run (or resume) HaDES and write the dataset and its reports into `out_dir`; returns a summary."""
    cfg = config
    env = make_env(cfg.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    action_low, action_high = env.action_space.low.copy(), env.action_space.high.copy()
    env.close()
    out = prepare_output_dir(out_dir)
    torch.set_num_threads(1)

    state_path = out / STATE_FILE
    adam = Adam(cfg.size * (obs_dim + act_dim), cfg.lr)
    state = _load_state(state_path, cfg) if state_path.exists() else None  # refuses other settings first
    # Read before any work, so that a bad mask file leaves no half-started run.
    mask_arrays = None if cfg.arch_mask is None else _pinned(
        cfg.arch_mask, out / "arch_mask.onnx", lambda path: read_mask(path, cfg.env_id, obs_dim, act_dim))
    family = architecture_family(cfg, mask_arrays)
    masks = None if mask_arrays is None else [torch.as_tensor(m) for m in mask_arrays]
    if state is not None:
        mu, best_mu, obs_mean, obs_std = state["mu"], state["best_mu"], state["obs_mean"], state["obs_std"]
        adam.m, adam.v, adam.t = state["adam_m"], state["adam_v"], int(state["adam_t"])
        history = [list(row) for row in state["history"]]
        info = json.loads(str(state["info"]))
    else:
        start = initial_state(cfg, out, obs_dim, act_dim)
        mu, obs_mean, obs_std, info, history = start["mu"], start["obs_mean"], start["obs_std"], start["info"], []
        best_mu = mu
        _save_state(state_path, cfg, mu, best_mu, adam, obs_mean, obs_std, history, info)

    done = len(history)
    with population_evaluator(cfg.env_id, cfg.workers, cfg.max_episode_steps, cfg.backend, cfg.ray_address) as evaluator:
        bar = tqdm(total=cfg.generations, initial=min(done, cfg.generations), disable=not progress,
                   desc=f"HaDES-{cfg.mode.upper()} {cfg.env_id} D={cfg.size}", unit="gen", dynamic_ncols=True)
        env_steps = int(history[-1][5]) if history else 0
        for generation in range(done, cfg.generations):
            start = time.perf_counter()
            result = run_generation(cfg, mu, generation, evaluator, obs_mean, obs_std, obs_dim, act_dim, family,
                                    masks)
            if not history or result["mean_dataset_return"] > max(row[4] for row in history):
                best_mu = mu
            mu = adam.step(mu, result["gradient"])
            env_steps += result["env_steps"]
            fitness = result["fitness"]
            history.append([generation, fitness.mean(), fitness.max(), fitness.min(), result["mean_dataset_return"],
                            env_steps, time.perf_counter() - start, result["bc_seconds"], result["rollout_seconds"]])
            _save_state(state_path, cfg, mu, best_mu, adam, obs_mean, obs_std, history, info)
            write_fitness_csv(out, np.asarray(history))
            bar.set_postfix(best=f"{fitness.max():.0f}", mean=f"{fitness.mean():.0f}",
                            data=f"{result['mean_dataset_return']:.0f}",
                            steps_gen=result["env_steps"], s_gen=f"{history[-1][6]:.1f}")
            bar.update(1)
        bar.close()

        history_array = np.asarray(history, dtype=np.float64).reshape(-1, len(HISTORY_COLUMNS))
        best_generation = int(history_array[:, 4].argmax()) if len(history) else 0
        seconds = float(history_array[:, 6].sum())
        meta = {"mode": cfg.mode, "init": cfg.init, "config": {k: v for k, v in asdict(cfg).items()},
                "generations": len(history), "env_steps": env_steps, "distill_seconds": round(seconds, 1),
                "fitness_history": {"mean": [round(v, 2) for v in history_array[:, 1]],
                                    "best": [round(v, 2) for v in history_array[:, 2]],
                                    "dataset": [round(v, 2) for v in history_array[:, 4]]},
                "es": {"algorithm": "OpenAI-ES, antithetic", "sigma": cfg.sigma, "adam_lr": cfg.lr,
                       "adam_betas": [0.99, 0.999], "shaping": cfg.shaping, "population": cfg.population},
                "obs_stats_from": "random-policy rollouts" if cfg.init == "zeros" else "expert rollouts",
                "selected": {"generation": best_generation, "mean_episodes": cfg.mean_episodes,
                             "rule": "the search mean with the highest return measured during the search"},
                **info}
        if cfg.mode == "f":
            meta["fixed_init_seed"] = FIXED_INIT_OFFSET + cfg.seed
        if cfg.mode == "a":
            meta["architectures"] = {"dense": [a.label for a in family[0]], "masked": [a.label for a in family[1]],
                                     "mask_share": cfg.mask_share if family[1] else 0.0,
                                     "rule": "one architecture and init per antithetic pair, drawn uniformly from "
                                             "the dense ones, or the masked topology with probability mask_share"}

        def as_dataset(vector: np.ndarray) -> Dataset:
            states, actions = split_candidates(vector[None], cfg.size, obs_dim, act_dim)
            return Dataset(cfg.env_id, states[0], actions[0], obs_mean, obs_std, action_low, action_high,
                           recipe=cfg.recipe, meta=meta)

        # Fresh evaluation seeds, so the selection's optimism does not leak into the reported returns.
        final_start = time.perf_counter()
        seeds = list(range(100, 100 + cfg.final_seeds))
        evaluation = {"fresh_init_seeds": seeds, "episodes": cfg.final_episodes}
        for prefix, vector in (("", best_mu), ("last_mean_", mu)):
            candidate = as_dataset(vector)
            fresh = retrain_and_evaluate(candidate, evaluator, seeds, cfg.final_episodes)
            evaluation[f"{prefix}fresh_init_returns"] = [round(float(r), 2) for r in fresh]
            evaluation[f"{prefix}fresh_init_mean"] = round(float(fresh.mean()), 2)
            if cfg.mode == "f":
                fixed = retrain_and_evaluate(candidate, evaluator, [], cfg.final_episodes,
                                             fixed_init=hades_f_init(cfg, obs_dim, act_dim))
                evaluation[f"{prefix}fixed_init_return"] = round(float(fixed[0]), 2)
        evaluation["evaluation_seconds"] = round(time.perf_counter() - final_start, 1)
        dataset = as_dataset(best_mu)
    random_returns = random_policy_returns(cfg.env_id, RANDOM_BASELINE_EPISODES, RETRAINED_EVAL_SEED)
    evaluation["random_policy_return"] = round(float(random_returns.mean()), 2)
    dataset.meta["evaluation"] = evaluation
    save_dataset(dataset, out)
    if cfg.mode == "f":  # HaDES-F datasets are tuned to this init: ship it so a robot can start from it
        init_arrays = hades_f_init(cfg, obs_dim, act_dim).numpy()
        write_npz(out / "policy_init.npz", {k: v[0] for k, v in init_arrays.items()})
    write_fitness_csv(out, history_array)
    plot_fitness(out, history_array, f"HaDES-{cfg.mode.upper()} {cfg.env_id}, D={cfg.size}, N={cfg.population}")
    render_error = render_states(dataset, out / "states.png")
    if render_error:
        print(f"tinypolicy: warning: could not render the states ({render_error}); "
              "set MUJOCO_GL=egl or osmesa", file=sys.stderr)
    summary = {"env_id": cfg.env_id, "mode": cfg.mode, "init": cfg.init, "size": cfg.size,
               "population": cfg.population, "generations": len(history), "selected_generation": best_generation,
               "env_steps": env_steps,
               "distill_seconds": round(seconds, 1),
               "seconds_per_generation": round(seconds / max(len(history), 1), 2),
               "final_population_mean_fitness": round(float(history_array[-1, 1]), 2) if len(history) else None,
               **evaluation, "dataset": str(out / "dataset.npz"),
               "states_image": None if render_error else str(out / "states.png")}
    if "expert_steps_done" in info:
        summary["expert_steps_done"] = info["expert_steps_done"]
    write_json(out / "summary.json", summary)
    return summary

