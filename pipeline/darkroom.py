"""Dark Room and Dark Key-to-Door: the grid worlds of Algorithm Distillation (Laskin et al. 2023, Sec. 4).

A 9x9 room; the agent observes only its own cell (index x * 9 + y, 0..80), starts in the
centre and has 5 actions: left, right, up, down, no-op (moves into a wall leave it in place).
- Dark Room: 20-step episodes; reward 1 on every step that ends on the invisible goal; no
  termination (the episode is truncated after 20 steps).
- Dark Key-to-Door: 50-step episodes; reward 1 the first time the agent reaches the invisible
  key, and 1 the first time it reaches the invisible door while holding the key (max 2).

`DarkRoomEnv` / `DarkKeyToDoorEnv` are Gymnasium envs (ids `tinypolicy/DarkRoom-v0` and
`tinypolicy/DarkKeyToDoor-v0`, registered on import). `BatchDarkRoom` / `BatchKeyToDoor` step
many rooms, one task each (a goal; a key and a door), with NumPy: the learning-history
collector and the in-context evaluation run thousands of rooms at once through them
(`BATCH_ENVS` maps each env id to its batch class). All four share `move`, so their
dynamics are one.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from tinypolicy.pipeline.settings import DARK_ROOM_ID, KEY_TO_DOOR_ID

SIZE = 9
NUM_STATES = SIZE * SIZE
NUM_ACTIONS = 5
CENTRE = (SIZE // 2, SIZE // 2)
DARK_ROOM_STEPS = 20
KEY_TO_DOOR_STEPS = 50
# left, right, up, down, no-op as (dx, dy)
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], dtype=np.int64)


def move(xy: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Next cell(s): xy [..., 2] and actions [...] -> xy [..., 2], clipped at the walls."""
    return np.clip(xy + MOVES[action], 0, SIZE - 1)


def cell_index(xy: np.ndarray) -> np.ndarray:
    """The observation: x * 9 + y."""
    xy = np.asarray(xy)
    return xy[..., 0] * SIZE + xy[..., 1]


def all_cells() -> np.ndarray:
    """Every cell [81, 2], in observation-index order."""
    return np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij"), -1).reshape(-1, 2)


def optimal_return(goals: np.ndarray, episode_steps: int = DARK_ROOM_STEPS) -> np.ndarray:
    """Best Dark Room return per goal [N, 2]: walk the Manhattan distance d, then stay.
    The first d - 1 steps earn nothing, so the return is steps - d + 1 (steps when d = 0)."""
    distance = np.abs(np.asarray(goals) - np.array(CENTRE)).sum(-1)
    return np.minimum(episode_steps, np.maximum(episode_steps - distance + 1, 0)).astype(np.float64)


def _check_cell(name: str, cell) -> np.ndarray:
    cell = np.asarray(cell, dtype=np.int64)
    if cell.shape != (2,) or cell.min() < 0 or cell.max() >= SIZE:
        raise ValueError(f"{name} must be a cell (x, y) with 0 <= x, y < {SIZE}, got {cell.tolist()}")
    return cell


class DarkRoomEnv(gym.Env):
    """Dark Room; the goal comes from `goal=` or `reset(options={"goal": (x, y)})`, else it is
    drawn uniformly from the reset's seed."""

    metadata = {"render_modes": []}

    def __init__(self, goal=None, max_episode_steps: int = DARK_ROOM_STEPS):
        self.observation_space = gym.spaces.Discrete(NUM_STATES)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.max_episode_steps = max_episode_steps
        self._fixed_goal = None if goal is None else _check_cell("goal", goal)
        self.goal = self._fixed_goal
        self.xy = np.array(CENTRE)
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "goal" in options:
            self.goal = _check_cell("goal", options["goal"])
        elif self._fixed_goal is None:
            self.goal = self.np_random.integers(0, SIZE, size=2)
        self.xy, self.steps = np.array(CENTRE), 0
        return int(cell_index(self.xy)), {"goal": self.goal.copy()}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, {NUM_ACTIONS}), got {action!r}")
        self.xy = move(self.xy, int(action))
        self.steps += 1
        reward = float(np.array_equal(self.xy, self.goal))
        return int(cell_index(self.xy)), reward, False, self.steps >= self.max_episode_steps, {}


class DarkKeyToDoorEnv(gym.Env):
    """Dark Key-to-Door; key and door come from `reset(options={"key": ..., "door": ...})`
    or the constructor, else they are drawn from the reset's seed (distinct cells)."""

    metadata = {"render_modes": []}

    def __init__(self, key=None, door=None, max_episode_steps: int = KEY_TO_DOOR_STEPS):
        self.observation_space = gym.spaces.Discrete(NUM_STATES)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.max_episode_steps = max_episode_steps
        self._fixed = None if key is None else (_check_cell("key", key), _check_cell("door", door))
        self.key, self.door = self._fixed or (None, None)
        self.xy = np.array(CENTRE)
        self.steps, self.has_key, self.opened = 0, False, False

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "key" in options:
            self.key, self.door = _check_cell("key", options["key"]), _check_cell("door", options["door"])
        elif self._fixed is None:
            cells = self.np_random.choice(NUM_STATES, size=2, replace=False)
            self.key, self.door = all_cells()[cells[0]], all_cells()[cells[1]]
        self.xy, self.steps, self.has_key, self.opened = np.array(CENTRE), 0, False, False
        return int(cell_index(self.xy)), {"key": self.key.copy(), "door": self.door.copy()}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, {NUM_ACTIONS}), got {action!r}")
        self.xy = move(self.xy, int(action))
        self.steps += 1
        reward = 0.0
        if not self.has_key and np.array_equal(self.xy, self.key):
            self.has_key, reward = True, 1.0
        elif self.has_key and not self.opened and np.array_equal(self.xy, self.door):
            self.opened, reward = True, 1.0
        return int(cell_index(self.xy)), reward, False, self.steps >= self.max_episode_steps, {}


def path_length(starts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Manhattan distance(s) between cells [..., 2]: the fewest moves from one to the other."""
    return np.abs(np.asarray(targets) - np.asarray(starts)).sum(-1)


def key_door_pairs() -> np.ndarray:
    """Every Key-to-Door task [6480, 4]: key (x, y) then door (x, y), distinct cells."""
    cells = all_cells()
    key, door = np.nonzero(~np.eye(NUM_STATES, dtype=bool))
    return np.concatenate([cells[key], cells[door]], 1)


class BatchDarkRoom:
    """N Dark Rooms stepped together, one goal each (tasks [N, 2]); episodes reset together.

    The batch classes share one interface, which `tinypolicy.pipeline.ad` runs either task
    through: `reset`, `step`, `target` (the cell an optimal policy heads for now),
    `learner_state` (the tabular learner's Markov state) and the class-level task facts."""

    env_id = DARK_ROOM_ID
    title = "Dark Room"
    task_noun = "goals"
    episode_steps = DARK_ROOM_STEPS
    num_learner_states = NUM_STATES

    def __init__(self, tasks: np.ndarray):
        self.goals = np.asarray(tasks, dtype=np.int64).reshape(-1, 2)
        self.xy = np.empty_like(self.goals)

    @staticmethod
    def all_tasks() -> np.ndarray:
        return all_cells()

    @staticmethod
    def optimal_return(tasks: np.ndarray) -> np.ndarray:
        return optimal_return(tasks, DARK_ROOM_STEPS)

    @staticmethod
    def path_length(tasks: np.ndarray) -> np.ndarray:
        return path_length(np.array(CENTRE), tasks)

    def reset(self) -> np.ndarray:
        self.xy = np.broadcast_to(np.array(CENTRE), self.goals.shape).copy()
        return cell_index(self.xy)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Observations [N] and rewards [N] after one step."""
        self.xy = move(self.xy, actions)
        return cell_index(self.xy), np.all(self.xy == self.goals, axis=-1).astype(np.float32)

    def target(self) -> np.ndarray:
        return self.goals

    def learner_state(self, obs: np.ndarray) -> np.ndarray:
        return obs


class BatchKeyToDoor:
    """N Dark Key-to-Doors stepped together (tasks [N, 4]: key x, y, door x, y), with the
    dynamics and rewards of `DarkKeyToDoorEnv`; episodes reset together."""

    env_id = KEY_TO_DOOR_ID
    title = "Dark Key-to-Door"
    task_noun = "key/door pairs"
    episode_steps = KEY_TO_DOOR_STEPS
    # The cell alone is not Markov: the learner also knows whether it holds the key, which its
    # own history tells it (the key's reward came earlier in this episode).
    num_learner_states = 2 * NUM_STATES

    def __init__(self, tasks: np.ndarray):
        tasks = np.asarray(tasks, dtype=np.int64).reshape(-1, 4)
        self.keys, self.doors = tasks[:, :2], tasks[:, 2:]
        self.xy = np.empty_like(self.keys)
        self.has_key = np.zeros(len(tasks), dtype=bool)
        self.opened = np.zeros(len(tasks), dtype=bool)

    @staticmethod
    def all_tasks() -> np.ndarray:
        return key_door_pairs()

    @staticmethod
    def optimal_return(tasks: np.ndarray) -> np.ndarray:
        # The longest centre-key-door walk (8 + 16 moves) fits in 50 steps: every task pays 2.
        return np.full(len(tasks), 2.0)

    @staticmethod
    def path_length(tasks: np.ndarray) -> np.ndarray:
        tasks = np.asarray(tasks)
        return path_length(np.array(CENTRE), tasks[:, :2]) + path_length(tasks[:, :2], tasks[:, 2:])

    def reset(self) -> np.ndarray:
        self.xy = np.broadcast_to(np.array(CENTRE), self.keys.shape).copy()
        self.has_key[:], self.opened[:] = False, False
        return cell_index(self.xy)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Observations [N] and rewards [N] after one step."""
        self.xy = move(self.xy, actions)
        got_key = ~self.has_key & np.all(self.xy == self.keys, axis=-1)
        opened = self.has_key & ~self.opened & np.all(self.xy == self.doors, axis=-1)
        self.has_key |= got_key
        self.opened |= opened
        return cell_index(self.xy), (got_key | opened).astype(np.float32)

    def target(self) -> np.ndarray:
        return np.where(self.has_key[:, None], self.doors, self.keys)

    def learner_state(self, obs: np.ndarray) -> np.ndarray:
        return obs + NUM_STATES * self.has_key


BATCH_ENVS = {cls.env_id: cls for cls in (BatchDarkRoom, BatchKeyToDoor)}


gym.register(DARK_ROOM_ID, entry_point=DarkRoomEnv, max_episode_steps=DARK_ROOM_STEPS)
gym.register(KEY_TO_DOOR_ID, entry_point=DarkKeyToDoorEnv, max_episode_steps=KEY_TO_DOOR_STEPS)
