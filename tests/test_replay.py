"""Replay buffer: n-step windows, soft n-step intermediates, dynamic capacity, persistence.

Every transition stores obs = its id and next_obs = id + 100, so a sampled row tells
which start index it used and which transition it bootstraps from. With gamma = 0.5 and
power-of-two rewards every expected value is exact in float32.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.replay import Batch, ReplayBuffer

GAMMA = 0.5


def _add(buf: ReplayBuffer, i: int, terminated: bool = False, truncated: bool = False,
         reward: float | None = None) -> None:
    buf.add(obs=[float(i)], action=[i / 100.0], policy_action=[-i / 100.0],
            reward=float(2 ** i) if reward is None else reward,
            next_obs=[float(i + 100)], terminated=terminated, truncated=truncated)


def _episode_buffer() -> ReplayBuffer:
    """ids 0..9: id 2 terminates, id 6 is a time-limit truncation, id 9 is the newest."""
    buf = ReplayBuffer(obs_dim=1, act_dim=1, capacity=20)
    for i in range(10):
        _add(buf, i, terminated=(i == 2), truncated=(i == 6))
    return buf


def _rows(batch: Batch) -> dict[int, dict]:
    """Map start id -> that row's fields (asserting that rows with equal starts agree)."""
    out: dict[int, dict] = {}
    n_inter = batch.inter_obs.shape[0]
    for r in range(batch.obs.shape[0]):
        sid = int(batch.obs[r, 0].item())
        row = {
            "returns": batch.returns[r].item(),
            "discount": batch.discount[r].item(),
            "bootstrap": batch.bootstrap_obs[r, 0].item(),
            "action": batch.actions[r, 0].item(),
            "w": [batch.inter_weight[k, r].item() for k in range(n_inter)],
            "inter": [batch.inter_obs[k, r, 0].item() for k in range(n_inter)],
        }
        if sid in out:
            assert out[sid] == row
        out[sid] = row
    return out


def _check_dtypes(batch: Batch, batch_size: int, n_step: int) -> None:
    for name in ("obs", "actions", "returns", "bootstrap_obs", "discount", "inter_obs", "inter_weight"):
        assert getattr(batch, name).dtype == torch.float32, name
    assert batch.obs.shape == (batch_size, 1)
    assert batch.returns.shape == (batch_size,)
    assert batch.discount.shape == (batch_size,)
    assert batch.inter_obs.shape == (n_step - 1, batch_size, 1)
    assert batch.inter_weight.shape == (n_step - 1, batch_size)


# (start id) -> (returns, discount, bootstrap next_obs, inter weights, inter obs where weight > 0)
EXPECTED_N3 = {
    0: (1 + 0.5 * 2 + 0.25 * 4, 0.0, 102, [0.5, 0.25], [100, 101]),   # runs into termination at 2
    1: (2 + 0.5 * 4, 0.0, 102, [0.5, 0.0], [101]),                      # crosses termination
    2: (4, 0.0, 102, [0.0, 0.0], []),                                   # terminal itself
    3: (8 + 0.5 * 16 + 0.25 * 32, 0.125, 105, [0.5, 0.25], [103, 104]),  # full window
    4: (16 + 0.5 * 32 + 0.25 * 64, 0.125, 106, [0.5, 0.25], [104, 105]),  # truncation is last
    5: (32 + 0.5 * 64, 0.25, 106, [0.5, 0.0], [105]),                   # crosses truncation
    6: (64, 0.5, 106, [0.0, 0.0], []),                                  # truncated itself
    7: (128 + 0.5 * 256 + 0.25 * 512, 0.125, 109, [0.5, 0.25], [107, 108]),  # ends at newest
    8: (256 + 0.5 * 512, 0.25, 109, [0.5, 0.0], [108]),                 # shortened by newest
    9: (512, 0.5, 109, [0.0, 0.0], []),                                 # newest
}


def _assert_rows(rows: dict[int, dict], expected: dict) -> None:
    assert set(rows) == set(expected)
    for sid, (ret, disc, boot, w, inter) in expected.items():
        row = rows[sid]
        assert row["returns"] == ret, sid
        assert row["discount"] == disc, sid
        assert row["bootstrap"] == boot, sid
        assert row["action"] == pytest.approx(sid / 100.0), sid
        assert row["w"] == w, sid
        assert [x for x, wk in zip(row["inter"], row["w"]) if wk > 0] == inter, sid


def test_n_step_3_windows_hand_computed():
    buf = _episode_buffer()
    batch = buf.sample(400, 3, GAMMA, np.random.default_rng(0))
    _check_dtypes(batch, 400, 3)
    _assert_rows(_rows(batch), EXPECTED_N3)


def test_n_step_1_is_one_step_td():
    buf = _episode_buffer()
    batch = buf.sample(300, 1, GAMMA, np.random.default_rng(1))
    _check_dtypes(batch, 300, 1)
    expected = {i: (2.0 ** i, 0.0 if i == 2 else 0.5, i + 100, [], []) for i in range(10)}
    _assert_rows(_rows(batch), expected)


def test_n_step_2_windows():
    buf = _episode_buffer()
    rows = _rows(buf.sample(300, 2, GAMMA, np.random.default_rng(2)))
    assert rows[1]["returns"] == 2 + 0.5 * 4 and rows[1]["discount"] == 0.0 and rows[1]["bootstrap"] == 102
    assert rows[2]["returns"] == 4 and rows[2]["discount"] == 0.0 and rows[2]["w"] == [0.0]
    assert rows[5]["returns"] == 32 + 32 and rows[5]["discount"] == 0.25 and rows[5]["bootstrap"] == 106
    assert rows[6]["returns"] == 64 and rows[6]["discount"] == 0.5 and rows[6]["bootstrap"] == 106
    assert rows[3]["w"] == [0.5] and rows[3]["inter"] == [103.0]
    assert rows[9]["returns"] == 512 and rows[9]["discount"] == 0.5


def test_n_step_after_wraparound():
    # capacity 6, ids 0..8: ids 3..8 remain; physical slots id6->0, id7->1, id8->2.
    buf = ReplayBuffer(obs_dim=1, act_dim=1, capacity=6)
    for i in range(9):
        _add(buf, i, terminated=(i == 7))
    assert len(buf) == 6 and buf.start == 3
    expected = {
        3: (8 + 8 + 8, 0.125, 105, [0.5, 0.25], [103, 104]),
        4: (16 + 16 + 16, 0.125, 106, [0.5, 0.25], [104, 105]),    # crosses the physical wrap
        5: (32 + 32 + 32, 0.0, 107, [0.5, 0.25], [105, 106]),      # ends at termination 7
        6: (64 + 64, 0.0, 107, [0.5, 0.0], [106]),
        7: (128, 0.0, 107, [0.0, 0.0], []),
        8: (256, 0.5, 108, [0.0, 0.0], []),                       # newest: must not wrap to id 3
    }
    _assert_rows(_rows(buf.sample(300, 3, GAMMA, np.random.default_rng(3))), expected)

    # after dropping the two oldest only ids 5..8 can start a window; windows are unchanged
    buf.drop_oldest(2)
    rows = _rows(buf.sample(300, 3, GAMMA, np.random.default_rng(4)))
    _assert_rows(rows, {k: v for k, v in expected.items() if k >= 5})


def test_wraparound_with_truncation_across_boundary():
    buf = ReplayBuffer(obs_dim=1, act_dim=1, capacity=4)
    for i in range(7):  # ids 3..6 kept, physical: id4->0, id5->1, id6->2, id3->3
        _add(buf, i, truncated=(i == 4), reward=1.0)
    rows = _rows(buf.sample(200, 3, GAMMA, np.random.default_rng(5)))
    assert set(rows) == {3, 4, 5, 6}
    assert (rows[3]["returns"], rows[3]["discount"], rows[3]["bootstrap"]) == (1.5, 0.25, 104)
    assert (rows[4]["returns"], rows[4]["discount"], rows[4]["bootstrap"]) == (1.0, 0.5, 104)
    assert (rows[5]["returns"], rows[5]["discount"], rows[5]["bootstrap"]) == (1.5, 0.25, 106)
    assert (rows[6]["returns"], rows[6]["discount"], rows[6]["bootstrap"]) == (1.0, 0.5, 106)


def test_sample_general_gamma_matches_reference():
    """Non-power-of-two gamma and random rewards against a plain-Python reference."""
    rng = np.random.default_rng(7)
    n, gamma, cap = 4, 0.97, 30
    buf = ReplayBuffer(obs_dim=1, act_dim=1, capacity=cap)
    ids = list(range(45))
    rewards = rng.normal(size=len(ids))
    term = rng.random(len(ids)) < 0.1
    trunc = (rng.random(len(ids)) < 0.1) & ~term
    for i in ids:
        _add(buf, i, terminated=bool(term[i]), truncated=bool(trunc[i]), reward=float(rewards[i]))
    stored = ids[-cap:]
    rows = _rows(buf.sample(1000, n, gamma, np.random.default_rng(8)))
    assert set(rows) == set(stored)
    for sid in stored:
        ret, m = 0.0, 0
        for k in range(n):
            j = sid + k
            if j > stored[-1]:
                break
            ret += gamma ** k * float(np.float32(rewards[j]))
            m = k
            if term[j] or trunc[j]:
                break
        last = sid + m
        row = rows[sid]
        assert row["returns"] == pytest.approx(ret, rel=1e-5, abs=1e-6)
        assert row["discount"] == pytest.approx(0.0 if term[last] else gamma ** (m + 1), rel=1e-6)
        assert row["bootstrap"] == last + 100
        assert row["w"] == pytest.approx([gamma ** k if k <= m else 0.0 for k in range(1, n)], rel=1e-6)
        assert [x for x, w in zip(row["inter"], row["w"]) if w > 0] == [sid + k + 100 for k in range(m)]


# --------------------------------------------------------------------------- dynamic capacity

def _filled(capacity: int, count: int) -> ReplayBuffer:
    buf = ReplayBuffer(obs_dim=1, act_dim=1, capacity=capacity)
    for i in range(count):
        _add(buf, i)
    return buf


def test_shrink_drops_tenth_of_size_when_stale():
    buf = _filled(100, 50)
    assert buf.shrink_if_stale(0.3, 0.2, 10) == 5
    assert len(buf) == 45
    obs, pol = buf.oldest(3)
    assert obs[:, 0].tolist() == [5.0, 6.0, 7.0]
    assert pol[:, 0].tolist() == pytest.approx([-0.05, -0.06, -0.07])
    # once per check: a second stale check drops 10% of the *current* size
    assert buf.shrink_if_stale(1.0, 0.2, 10) == 4
    assert len(buf) == 41 and buf.oldest(1)[0][0, 0] == 9.0


def test_shrink_does_nothing_when_not_stale():
    buf = _filled(100, 50)
    assert buf.shrink_if_stale(0.2, 0.2, 10) == 0  # distance == threshold is not stale
    assert buf.shrink_if_stale(0.0, 0.2, 10) == 0
    assert len(buf) == 50 and buf.oldest(1)[0][0, 0] == 0.0


def test_shrink_never_below_min_size():
    buf = _filled(100, 30)
    assert buf.shrink_if_stale(0.5, 0.2, 28) == 2  # 10% would be 3
    assert len(buf) == 28
    assert buf.oldest(1)[0][0, 0] == 2.0
    assert buf.shrink_if_stale(0.5, 0.2, 28) == 0  # size == min_size
    assert buf.shrink_if_stale(0.5, 0.2, 40) == 0  # size < min_size
    assert len(buf) == 28


def test_oldest_and_regrowth_after_drop():
    buf = _filled(10, 10)
    buf.drop_oldest(3)
    assert len(buf) == 7
    assert buf.oldest(100)[0][:, 0].tolist() == [3, 4, 5, 6, 7, 8, 9]
    for i in range(10, 13):  # grows back into the freed slots
        _add(buf, i)
    assert len(buf) == 10
    assert buf.oldest(10)[0][:, 0].tolist() == list(range(3, 13))
    _add(buf, 13)  # full again: FIFO overwrites the oldest
    assert len(buf) == 10
    assert buf.oldest(2)[0][:, 0].tolist() == [4.0, 5.0]
    buf.drop_oldest(100)
    assert len(buf) == 0 and buf.oldest(5)[0].shape == (0, 1)


# --------------------------------------------------------------------------- persistence

def _wrapped_buffer() -> ReplayBuffer:
    buf = ReplayBuffer(obs_dim=1, act_dim=1, capacity=8)
    for i in range(13):
        _add(buf, i, terminated=(i == 9), truncated=(i == 11))
    buf.drop_oldest(2)  # ids 7..12, start in the middle of the ring
    return buf


def test_save_load_round_trip_preserves_logical_order(tmp_path):
    buf = _wrapped_buffer()
    path = tmp_path / "replay.npz"
    buf.save(path)
    assert path.exists() and not (tmp_path / "replay.npz.tmp.npz").exists()
    loaded = ReplayBuffer.load(path, obs_dim=1, act_dim=1, capacity=8)
    assert len(loaded) == 6 and loaded.start == 0 and loaded.capacity == 8
    assert loaded.oldest(10)[0][:, 0].tolist() == [7, 8, 9, 10, 11, 12]
    idx = (buf.start + np.arange(buf.size)) % buf.capacity
    for f in ReplayBuffer.FIELDS:
        np.testing.assert_array_equal(loaded.field(f)[:6], buf.field(f)[idx], err_msg=f)
    assert loaded.field("terminated")[:6].tolist() == [False, False, True, False, False, False]
    assert loaded.field("episode_end")[:6].tolist() == [False, False, True, False, True, False]
    # identical windows from the same rng
    a = buf.sample(64, 3, 0.9, np.random.default_rng(0))
    b = loaded.sample(64, 3, 0.9, np.random.default_rng(0))
    for name in ("obs", "actions", "returns", "bootstrap_obs", "discount", "inter_obs", "inter_weight"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # loading into a larger ring keeps growing from the right place
    bigger = ReplayBuffer.load(path, obs_dim=1, act_dim=1, capacity=20)
    _add(bigger, 13)
    assert bigger.oldest(10)[0][:, 0].tolist() == [7, 8, 9, 10, 11, 12, 13]


def test_load_rejects_mismatched_dimensions(tmp_path):
    path = tmp_path / "replay.npz"
    _wrapped_buffer().save(path)
    with pytest.raises(UserError):
        ReplayBuffer.load(path, obs_dim=2, act_dim=1, capacity=8)
    with pytest.raises(UserError):
        ReplayBuffer.load(path, obs_dim=1, act_dim=3, capacity=8)
    with pytest.raises(UserError):
        ReplayBuffer.load(path, obs_dim=1, act_dim=1, capacity=5)  # 6 stored > capacity


@pytest.mark.parametrize("content", [b"", b"this is not a replay buffer" * 20, b"\x93NUMPY garbage"],
                         ids=["empty", "text", "bad-npy-header"])
def test_load_garbage_raises_user_error(tmp_path, content):
    path = tmp_path / "replay.npz"
    path.write_bytes(content)
    with pytest.raises(UserError):
        ReplayBuffer.load(path, obs_dim=1, act_dim=1, capacity=8)


def test_load_missing_file_raises_user_error(tmp_path):
    with pytest.raises(UserError):
        ReplayBuffer.load(tmp_path / "nope.npz", obs_dim=1, act_dim=1, capacity=8)


def test_load_npz_missing_field_raises_user_error(tmp_path):
    path = tmp_path / "replay.npz"
    np.savez(path, obs=np.zeros((2, 1), np.float32))
    with pytest.raises(UserError):
        ReplayBuffer.load(path, obs_dim=1, act_dim=1, capacity=8)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_load_truncated_file_raises_user_error(tmp_path, keep):
    path = tmp_path / "replay.npz"
    _wrapped_buffer().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError):
        ReplayBuffer.load(path, obs_dim=1, act_dim=1, capacity=8)


def test_load_plain_npy_file_raises_user_error(tmp_path):
    path = tmp_path / "replay.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3, np.float32))
    with pytest.raises(UserError):
        ReplayBuffer.load(path, obs_dim=1, act_dim=1, capacity=8)
