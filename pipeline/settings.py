"""Settings of the pipeline's stages, one dataclass per stage: the only place a default lives.

`tinypolicy train|distill|ad|generalise` build their flags from these classes, compress's
presets (pipeline/presets.toml) and `--set` overrides are checked against them, and
checkpoints store them as plain dicts (tinypolicy.config). The stage modules import their
class from here; this module imports no torch, so `tinypolicy --help` and the torch-free
`retrain` command can build every command's flags.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tinypolicy.config import check_settings, option, setting
from tinypolicy.ondevice.dataset import ACTIVATIONS, BCRecipe
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.flags import float_in, nonnegative_int, positive_float, positive_int, random_seed
from tinypolicy.pipeline.es import SHAPINGS

BACKENDS = ("local", "ray")  # where rollouts or sweep jobs run


# --------------------------------------------------------------------------- train

@dataclass(frozen=True)
class Method:
    sparse: bool              # sparse from the first step
    prune: bool               # dense at first, magnitude-pruned to the target sparsity (GMP)
    grow: str | None          # None (static topology), "random" (SET) or "gradient" (RigL)
    multi_step: bool          # delayed n-step TD target
    dynamic_buffer: bool      # policy-distance capacity rule


METHODS = {
    "dense": Method(sparse=False, prune=False, grow=None, multi_step=False, dynamic_buffer=False),
    "prune": Method(sparse=False, prune=True, grow=None, multi_step=False, dynamic_buffer=False),
    "static": Method(sparse=True, prune=False, grow=None, multi_step=False, dynamic_buffer=False),
    "set": Method(sparse=True, prune=False, grow="random", multi_step=False, dynamic_buffer=False),
    "rigl": Method(sparse=True, prune=False, grow="gradient", multi_step=False, dynamic_buffer=False),
    "rlx2": Method(sparse=True, prune=False, grow="gradient", multi_step=True, dynamic_buffer=True),
}

# --precision: the torch dtype (by name) of the hidden layers' compute; None keeps float32.
HIDDEN_DTYPES = {"fp32": None, "bf16": "bfloat16"}


# Value parsers (flags) and range checks (settings) of the fields below.
fraction = float_in(0.0, 1.0)                    # [0, 1): sparsities, dropout rates
unit_interval = float_in(0.0, 1.0, "(]")         # (0, 1]: discount factors, Polyak rates, Q-learning's lr
closed_unit_interval = float_in(0.0, 1.0, "[]")  # [0, 1]: RigL drop fractions, shares, probabilities
nonnegative = float_in(0.0)                      # [0, inf): noise scales, weight decay

THREADS_HELP = "torch threads (more is faster only on an otherwise idle machine)"


@dataclass
class TrainConfig:
    """One training run: `tinypolicy train`, compress's train stage, each sweep job."""
    env_id: str = "Hopper-v5"
    algo: str = option("td3", choices=("td3", "sac"))
    method: str = option("rlx2", "dense; prune (dense, then gradual magnitude pruning to the target sparsity); "
                                 "static sparse (SS); SET (random grow); RigL (gradient grow); "
                                 "RLx2 (RigL + delayed n-step target + dynamic buffer)", choices=METHODS)
    actor_sparsity: float = option(0.9, metavar="S", parse=fraction)
    critic_sparsity: float = option(0.85, metavar="S", parse=fraction)
    total_steps: int = option(300_000, "env steps; the topology, n-step and pruning schedules scale with it",
                              flag="--steps")
    seed: int = option(0, metavar="K", parse=random_seed)
    hidden: tuple[int, ...] = option((256, 256))
    batch_size: int = setting(256, positive_int)
    gamma: float = setting(0.99, unit_interval)
    tau: float = setting(0.005, unit_interval)
    lr: float = option(3e-4, "Adam learning rate")
    policy_noise: float = setting(0.2, nonnegative)  # TD3 target smoothing noise, in [-1, 1] action units
    noise_clip: float = setting(0.5, nonnegative)
    policy_freq: int = setting(2, positive_int)      # TD3 delayed actor updates
    exploration_noise: float = setting(0.1, nonnegative)  # TD3
    n_step: int = setting(3, positive_int)
    drop_fraction: float = setting(0.5, closed_unit_interval)  # RigL zeta_0
    buffer_threshold: float = setting(0.2, nonnegative)
    policy_distance_samples: int = setting(2048, positive_int)
    buffer_capacity: int = setting(1_000_000, positive_int)
    eval_interval: int = option(5_000)
    eval_episodes: int = option(10)
    checkpoint_interval: int = option(25_000, "env steps between checkpoints (a killed run resumes from the last one)")
    # One thread: on 2 cores, 2 threads train 1.47x faster when the machine is idle but at 0.05x
    # beside one other busy process (docs/results/reliability.json); a robot's computer is never idle.
    threads: int = option(1, THREADS_HELP)
    precision: str = option("fp32", "compute dtype of the hidden layers (bf16: mixed precision, faster on "
                                    "AVX-512 BF16 CPUs)", choices=HIDDEN_DTYPES)
    # None: pipeline.train.Schedule's default for the run's length; the checkpoint records the value used.
    learning_starts: int | None = option(None, "env steps of uniformly random actions before learning starts "
                                               "(default: the paper's 25,000, at most a tenth of --steps, at "
                                               "least 1,000 or half of --steps)",
                                         parse=nonnegative_int)
    topology_interval: int | None = setting(None, positive_int)
    nstep_start: int | None = setting(None, nonnegative_int)
    buffer_min: int | None = option(None, "RLx2's dynamic replay buffer never drops below this many transitions "
                                          "(default: the paper's 100,000 (TD3) or 200,000 (SAC), at most a third "
                                          "of --steps)", parse=positive_int)
    # --method prune: the fractions of total_steps where pruning starts and reaches the target
    # (Graesser et al. 2022 prune over 20%-80% of training), and the env steps between two
    # pruning steps (None: 1,000 per million env steps).
    prune_start: float = setting(0.2, fraction)
    prune_end: float = setting(0.8, unit_interval)
    prune_interval: int | None = setting(None, positive_int)
    init_from: str | None = option(None, "start from this checkpoint's actor and critics instead of a fresh init "
                                         "(fine-tuning; sparse methods start from its largest weights)",
                                   metavar="CHECKPOINT")

    def validate(self) -> None:
        check_settings(self, "train")
        if self.prune_start >= self.prune_end:
            raise UserError(f"train: prune_start ({self.prune_start:g}) must come before prune_end "
                            f"({self.prune_end:g}), both as fractions of the run")
        if self.learning_starts is not None and self.learning_starts >= self.total_steps:
            raise UserError(f"train: --learning-starts ({self.learning_starts}) must be less than --steps "
                            f"({self.total_steps}): the run would never learn")


# --------------------------------------------------------------------------- distill, generalise

# The hidden widths and depths that distill --mode a draws students from and that generalise's
# grid retrains: by default generalise tests a dataset on the family mode a distils for.
ARCH_WIDTHS = (16, 32, 64, 128, 256)
ARCH_DEPTHS = (1, 2, 3)
# Env seed of the first episode evaluating a policy retrained on a dataset (distill's final
# evaluation, generalise's cells, compress's retrain stage) and of the random-policy baseline
# distill and generalise report beside them: fixed, so that the retrained policies of every
# dataset are compared on the same episodes.
RETRAINED_EVAL_SEED = 1000
RANDOM_BASELINE_EPISODES = 10  # episodes of uniformly random actions: the floor a retrained policy must beat


@dataclass
class DistillConfig:
    """HaDES behaviour distillation: `tinypolicy distill` and compress's distill stage."""
    env_id: str = option(help="Gymnasium env id, e.g. Hopper-v5", flag="--env", metavar="ENV")
    size: int = option(64, "state-action pairs", metavar="D")
    mode: str = option("f", "f: one fixed policy init (HaDES-F); r: a random init per antithetic pair (HaDES-R); "
                            "a: a random init and architecture per pair (--arch-*)", choices=("r", "f", "a"))
    population: int = option(64, "even ES population", metavar="P")
    generations: int = option(200, metavar="G")
    init: str = option("zeros", "zeros: the paper's start; expert: states and actions from an expert's rollouts",
                       choices=("zeros", "expert"))
    expert: str | None = option(None, "expert checkpoint for --init expert", metavar="CHECKPOINT")
    sigma: float = option(0.03, "ES noise scale (fixed)")
    lr: float = option(0.05, "Adam lr on the ES mean")
    shaping: str = option("raw", "fitness shaping", choices=SHAPINGS)
    # the behaviour-cloning recipe: the robot's own defaults (ondevice/ imports nothing of ours)
    hidden: tuple[int, ...] = option(BCRecipe.hidden, "BC policy hidden sizes")
    activation: str = BCRecipe.activation
    bc_steps: int = option(BCRecipe.steps)
    bc_lr: float = option(BCRecipe.lr)
    # mode a: the family of students; every dense combination is equally likely
    arch_widths: tuple[int, ...] = option(ARCH_WIDTHS, "mode a: hidden widths drawn")
    arch_depths: tuple[int, ...] = option(ARCH_DEPTHS, "mode a: hidden layer counts drawn", metavar="N,N")
    arch_activations: tuple[str, ...] = option(ACTIVATIONS, "mode a: hidden activations drawn", choices=ACTIVATIONS)
    arch_mask: str | None = option(None, "mode a: also train students with this exported actor's sparse topology",
                                   metavar="ACTOR.onnx")
    mask_share: float = option(0.25, "mode a with --arch-mask: the share of students with that topology",
                               parse=closed_unit_interval)
    seed: int = option(0, metavar="K", parse=random_seed)
    workers: int = option(2, "rollout processes")
    backend: str = option("local", "rollouts in local worker processes, or on Ray workers (pip install -e '.[ray]')",
                          choices=BACKENDS)
    ray_address: str | None = option(None, "an existing Ray cluster (default: a local one)", metavar="ADDR")
    max_episode_steps: int = setting(1000, positive_int)
    stats_steps: int = setting(10_000, positive_int)  # env steps of rollouts for the fixed observation statistics
    final_seeds: int = option(5, "fresh policies retrained and evaluated on the final dataset")
    final_episodes: int = setting(3, positive_int)
    mean_episodes: int = option(4, "episodes of the search mean per generation; the best-scoring mean is the dataset")

    # fields that may change between a run and its resumption
    RESUMABLE = ("generations", "workers", "backend", "ray_address", "final_seeds", "final_episodes")

    def __post_init__(self):
        check_settings(self, "distill")
        if self.init == "expert" and not self.expert:
            raise UserError("--init expert needs --expert CHECKPOINT")
        if self.population < 2 or self.population % 2:
            raise UserError(f"--population must be even and >= 2 (antithetic pairs), got {self.population}")
        if self.arch_mask and self.mode != "a":
            raise UserError(f"--arch-mask needs --mode a (architecture-randomised), not --mode {self.mode}")

    @property
    def recipe(self) -> BCRecipe:
        return BCRecipe(hidden=self.hidden, activation=self.activation, steps=self.bc_steps, lr=self.bc_lr)

    def identity(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE}


def positive_floats(text: str) -> tuple[float, ...]:
    """Positive numbers separated by commas (or spaces, as a settings error shows them)."""
    return tuple(positive_float(x) for x in text.replace(",", " ").split())


@dataclass
class GeneraliseConfig:
    """`tinypolicy generalise`: a dataset retrained from fresh inits over a grid of architectures
    and BC hyperparameters (every combination), and with an exported actor's sparse topology."""
    seeds: int = option(3, "fresh inits per cell")
    episodes: int = option(2, "episodes per policy")
    workers: int = option(2)
    widths: tuple[int, ...] = option(ARCH_WIDTHS, "hidden widths")
    depths: tuple[int, ...] = option(ARCH_DEPTHS, "hidden layer counts", metavar="N,N")
    activations: tuple[str, ...] = option(ACTIVATIONS, "hidden activations", choices=ACTIVATIONS)
    lrs: tuple[float, ...] = option((BCRecipe.lr / 2, BCRecipe.lr, BCRecipe.lr * 2), "BC learning rates",
                                    metavar="X,X", parse=positive_floats)
    bc_steps: tuple[int, ...] = option((BCRecipe.steps // 2, BCRecipe.steps, BCRecipe.steps * 2), "BC steps",
                                       metavar="N,N")
    mask: str | None = option(None, "also retrain this exported actor's sparse topology with the NumPy on-device "
                                    "trainer (every activation, lr and step count)", metavar="ACTOR.onnx")
    expert_return: float | None = option(None, "the expert's return that cells are a share of (default: the "
                                               "dataset's meta.expert_return)")
    target_share: float = setting(0.6, float_in(0.0, 1.0, "(]"))  # a cell passes at this share of the expert

    def __post_init__(self):
        check_settings(self, "generalise")


# --------------------------------------------------------------------------- import

@dataclass
class ImportConfig:
    """`tinypolicy import`: what a foreign policy file cannot say itself (only its pickles
    would, and tinypolicy never unpickles a file)."""
    activation: str | None = option(None, "hidden activation (default: what an SB3 zip names, else SB3's default: "
                                          "relu for TD3/SAC/DDPG, tanh for PPO/A2C; for a state dict CleanRL's: "
                                          "tanh with a state-independent log-std, else relu; for ONNX its graph's)",
                                    choices=("relu", "tanh"))
    output: str | None = option(None, "how the last layer becomes an action: tanh scaled to the bounds, or clip to "
                                      "the bounds (default: what the source does)", choices=("tanh", "clip"))
    obs_stats: str | None = option(None, "observation normalisation the policy was trained with: an .npz or .json "
                                         "holding mean and var (VecNormalize's obs_rms; its .pkl is refused)",
                                   metavar="FILE")
    check_steps: int = option(2000, "env steps on which an ONNX import is checked against ONNX Runtime")
    seed: int = option(0, "seed of those steps' episodes", metavar="K", parse=random_seed)


# --------------------------------------------------------------------------- compress's own stages

@dataclass
class EvaluateConfig:
    """compress's evaluate stage (`tinypolicy evaluate` has its own flags: another default seed)."""
    # 30: an SB3 PPO Hopper teacher's returns spread by 480-570 (std) over episodes, so 10 of them
    # put the share of its return that a student keeps within +-8% (one standard error); on 30
    # other episodes a student measured at 83% of it on 10 kept 95%.
    episodes: int = setting(30, positive_int)
    seed: int = setting(10_000, random_seed)  # episodes never seen in training


@dataclass
class RetrainConfig:
    """compress's retrain stage: a dense and a sparse-mask policy retrained from the dataset, from
    fresh inits (what a robot's own policy starts from), and, for a HaDES-F dataset, the dense one
    also from the init it was distilled for."""
    episodes: int = setting(5, positive_int)
    seed: int = setting(0, random_seed)  # the first fresh init, whose policies are policy.dense/sparse.onnx
    seeds: int = setting(3, positive_int)  # fresh inits per policy (seed, seed + 1, ...): one is an anecdote


@dataclass
class ReportConfig:
    """compress's report stage has no settings; its presets table must be empty."""


@dataclass
class StudentConfig:
    """A sparse student distilled from an actor-only teacher (an imported PPO or ONNX policy) by
    DAgger: iteration 0 rolls out the teacher, later ones the student (with probability beta**i
    the teacher acts instead); every state visited is labelled with the teacher's deterministic
    action, and the student is trained on all of them, its topology evolving by RigL. Of the
    iterations after the topology froze, the student that returns most on select_seed's
    episodes is kept, and evaluated on eval_seed's."""
    actor_sparsity: float = option(0.9, "student actor sparsity", metavar="S", parse=fraction)
    hidden: tuple[int, ...] | None = option(None, "student hidden sizes (default: the teacher's)")
    # 30: the 90% student of an SB3 PPO Hopper teacher (64-64, about 500 weights left) kept 77%
    # and 58% of it after 10 iterations, 80% after 20, and 99%, 90%, 90% after 30 (seeds 0-2);
    # an SB3 TD3 teacher's 95% student kept 94-98% after 10 and 89-100% after 30 when the last
    # iteration's student was kept, its return swinging between iterations by up to 30%
    # (docs/BENCHMARKS.md, bring your own policy); hence the choice on select_seed episodes.
    iterations: int = option(30, "DAgger iterations (the first rolls out the teacher)")
    env_steps: int = option(10_000, "env steps rolled out per iteration")
    grad_steps: int = option(10_000, "gradient steps per iteration, on every state gathered so far")
    batch_size: int = setting(256, positive_int)
    lr: float = option(1e-3, "student Adam learning rate")
    # RigL as in training: every topology_interval gradient steps, drop the cosine-annealed
    # fraction (from drop_fraction) of each layer's smallest weights and grow as many where the
    # imitation loss's dense gradient is largest, until topology_end of all gradient steps
    # (RigL's 75%), so that the last steps tune a fixed topology.
    topology_interval: int = setting(1_000, positive_int)
    topology_end: float = setting(0.75, unit_interval)
    drop_fraction: float = setting(0.5, closed_unit_interval)
    beta: float = option(0.0, "iteration i rolls out the teacher's action with probability beta**i, else the "
                              "student's (0: pure DAgger after iteration 0)", parse=closed_unit_interval)
    eval_episodes: int = option(EvaluateConfig.episodes, "episodes evaluating teacher and student (deterministic)")
    eval_seed: int = setting(EvaluateConfig.seed, random_seed)  # evaluation episode k is seeded eval_seed + k
    # Episodes choosing which iteration's student to keep (select_seed + k), apart from the
    # reported ones so that the choice does not flatter the reported return; every iteration
    # runs them.
    select_episodes: int = setting(10, positive_int)
    select_seed: int = setting(20_000, random_seed)
    seed: int = option(0, metavar="K", parse=random_seed)
    threads: int = option(1, THREADS_HELP)  # one, as for training (TrainConfig.threads says why)

    def __post_init__(self):
        check_settings(self, "student")


# --------------------------------------------------------------------------- Algorithm Distillation

SOURCES = ("learning", "expert")  # what `ad train` learns from: learning histories (AD) or expert episodes (ED)
DARK_ROOM_ID = "tinypolicy/DarkRoom-v0"
KEY_TO_DOOR_ID = "tinypolicy/DarkKeyToDoor-v0"


@dataclass(frozen=True)
class QLearningConfig:
    """Tabular epsilon-greedy Q-learning (Tarasov et al. 2025 / Headless-AD use lr 0.9933,
    200 episodes). Epsilon falls linearly from 1 to 0 over `decay_episodes`; ties between
    equal Q-values break at random, so an agent that has seen no reward walks at random."""

    lr: float = setting(0.9933, unit_interval)
    gamma: float = setting(0.9, unit_interval)
    decay_episodes: int = option(50, "source episodes over which Q-learning's epsilon falls from 1 to 0",
                                 flag="--epsilon-decay")
    # Sweeps at each episode's end backing its transitions up again, last first (episodic
    # backward update, Lee et al. 2019): a reward found propagates along the whole path that led
    # to it, so the next episode heads for it. With one-step backups alone the episode after a
    # learner's first key and door returns 0.73 of 2 (random: 0.27), and AD's windows show
    # rewards that change nothing; with one sweep 1.40-1.65.
    replay_sweeps: int = option(0, "backward sweeps over each source episode at its end (0: one-step Q-learning "
                                   "only)", parse=nonnegative_int)

    def epsilon(self, episode: int) -> float:
        return max(0.0, 1.0 - episode / self.decay_episodes)


@dataclass
class ADCollectConfig:
    """`ad collect`: the task split and the source's learning histories (Dark Room's defaults;
    AD_ENV_DEFAULTS holds Key-to-Door's). A task is a goal, or a key and a door."""
    test_goals: int = option(16, "held-out tasks")
    seeds_per_goal: int = option(25, "Q-learners per training task")
    episodes: int = option(200, "source episodes per history")
    keep_every: int = option(10, "keep every K-th episode", metavar="K")
    seed: int = option(0, "seed of the goal split and the learners", metavar="K", parse=random_seed)


@dataclass
class ADTrainConfig:
    """`ad train`: the causal transformer and its optimiser."""
    source: str = option("learning", "learning histories (AD) or expert episodes (ED)", choices=SOURCES)
    steps: int = option(20_000, "gradient steps")
    batch: int = option(64, "windows per step")
    lr: float = option(1e-3, "peak AdamW learning rate")
    warmup: int = setting(200, nonnegative_int)
    weight_decay: float = setting(1e-4, nonnegative)
    grad_clip: float = setting(1.0, positive_float)
    seed: int = option(0, metavar="K", parse=random_seed)
    window: int = option(60, "context length T in transitions")
    episode_return: str = option("no", "tokens also carry the return collected earlier in their episode (what a "
                                       "dark-room agent remembers of it)", choices=("no", "yes"))
    dim: int = option(64)
    layers: int = option(3)
    heads: int = option(4)
    ff_dim: int = option(256)
    dropout: float = setting(0.1, fraction)
    attn_dropout: float = setting(0.3, fraction)
    checkpoint_every: int = option(500, "gradient steps between checkpoints")
    threads: int = option(1, THREADS_HELP)  # one by default, as for RL training (TrainConfig.threads says why)

    # fields that may change between a run and its resumption: a run can be extended or cut
    # short, its cosine schedule then follows the new length from the current step on
    RESUMABLE = ("steps", "checkpoint_every", "threads")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 1% of the peak."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class ADEvalConfig:
    """`ad evaluate`: the in-context curves."""
    episodes: int = option(500, "AD, source, random")
    seeds: int = option(3, "evaluation seeds per goal")
    short_episodes: int = option(150, "ED, AD on training goals and the ablations")
    ablation_window: int = setting(10, positive_int)  # under one episode
    seed: int = option(1000, metavar="K", parse=random_seed)
    temperature: float = option(1.0, "softmax temperature of the model's sampled actions (0: always the most "
                                     "likely one)", parse=nonnegative)
    threads: int = option(1, THREADS_HELP)


@dataclass
class ADExportConfig:
    """`ad export`: the held-out curve run under PyTorch and ONNX Runtime."""
    episodes: int = option(100)
    seed: int = option(1000, metavar="K", parse=random_seed)
    temperature: float = option(ADEvalConfig.temperature, "softmax temperature of the sampled actions, as `ad "
                                                          "evaluate`'s", parse=nonnegative)


# Where an env's defaults differ from the dataclasses' (Dark Room's): `tinypolicy ad` applies
# these under the flags given, by the env of `--env` (collect), of the histories (train) or of
# the checkpoint (evaluate, export).
# Key-to-Door's were chosen by measurement (docs/BENCHMARKS.md, Algorithm Distillation): AD
# must see a discovery change the source's next episodes, so the source replays each episode
# backwards (QLearningConfig.replay_sweeps), learns over 20 episodes (1.66 of 2 by episode
# 20, 1.94 by 50) and every episode is kept, where one-step Q-learning subsampled every 10th
# episode showed improvements that no reward in the window explained; one learner per key/door
# pair, every pair but the held-out ones, buys task diversity, the paper's main lever; a
# window of four 50-step episodes holds a discovery and the episodes that use it (the paper:
# 100 transitions reach 1.74 of 2, 200 reach 1.84). Tokens carry the episode's return so far:
# a window starts mid-episode, and without it the model could not tell a key taken in this
# episode from one taken in the last (it then hovered around the key cell, returning 1).
# AD samples its actions more sharply than the source acted: the source's epsilon reaches 0 at
# episode 20, but the model cannot read the episode index from its window and at temperature 1
# keeps exploring (40 training pairs, first 100 episodes: 1.04 at 1, 1.33 at 0.7, 1.53 at 0.5,
# 1.41 at 0.35, 1.30 at 0.25; chosen on training pairs, never the held-out ones).
KEY_TO_DOOR_TEMPERATURE = 0.5
AD_ENV_DEFAULTS: dict[str, dict[str, dict]] = {
    DARK_ROOM_ID: {"collect": {}, "q_learning": {}, "train": {}, "evaluate": {}, "export": {}},
    KEY_TO_DOOR_ID: {
        "collect": {"test_goals": 20, "seeds_per_goal": 1, "episodes": 50, "keep_every": 1},
        "q_learning": {"decay_episodes": 20, "replay_sweeps": 1},
        "train": {"window": 200, "episode_return": "yes"},
        "evaluate": {"temperature": KEY_TO_DOOR_TEMPERATURE},
        "export": {"temperature": KEY_TO_DOOR_TEMPERATURE},
    },
}
