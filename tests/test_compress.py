"""The compress orchestrator: stamps, skipping finished stages, rerunning changed ones."""
import json

import pytest

from pipeline.compress import compress
from pipeline.train import TrainConfig

pytestmark = pytest.mark.integration


def tiny(seed: int = 0) -> TrainConfig:
    return TrainConfig(env_id="Pendulum-v1", method="rlx2", actor_sparsity=0.9, critic_sparsity=0.8,
                       total_steps=1_200, hidden=(32, 32), eval_interval=600, eval_episodes=1, seed=seed)


def test_stages_stamp_skip_and_rerun(tmp_path):
    first = compress(tiny(), tmp_path, eval_episodes=2, progress=False)
    assert [r["status"] for r in first] == ["done", "done", "done"]
    for stage in ("train", "evaluate", "report"):
        stamp = json.loads((tmp_path / stage / "stamp.json").read_text())
        assert stamp["outputs"] and all(len(h) == 64 for h in stamp["outputs"].values())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Actor sparsity per layer" in report and "random actions" in report
    evaluation = json.loads((tmp_path / "evaluate" / "eval.json").read_text())
    assert evaluation["episodes"] == 2 and "random_mean_return" in evaluation

    again = compress(tiny(), tmp_path, eval_episodes=2, progress=False)
    assert [r["status"] for r in again] == ["up to date"] * 3

    # Only the evaluation's parameter changed: training stays, evaluation and report rerun.
    partly = compress(tiny(), tmp_path, eval_episodes=3, progress=False)
    assert [r["status"] for r in partly] == ["up to date", "done", "done"]

    # A tampered artefact is not trusted: its stage reruns.
    (tmp_path / "report" / "report.md").write_text("edited")
    assert [r["status"] for r in compress(tiny(), tmp_path, eval_episodes=3, progress=False)] == \
        ["up to date", "up to date", "done"]

    # A training parameter changed: everything reruns from a clean training folder.
    changed = compress(tiny(seed=1), tmp_path, eval_episodes=3, progress=False)
    assert [r["status"] for r in changed] == ["done", "done", "done"]
    assert json.loads((tmp_path / "train" / "eval.json").read_text())["seed"] == 1
