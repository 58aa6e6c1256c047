"""`tinypolicy compress --from`: a policy trained elsewhere compressed instead of trained."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tinypolicy.checkpoint import load_checkpoint, save_checkpoint
from tinypolicy.ondevice.artefact import sha256_file
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline import cli
from tinypolicy.pipeline.compress import PipelineConfig, source_stage
from tinypolicy.pipeline.settings import TrainConfig
from tinypolicy.pipeline.train import Trainer, train

TINY = cli.load_presets(None)["tiny"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A small dense TD3 Hopper policy with critics (what `import` writes for an SB3 TD3 zip)."""
    out = tmp_path_factory.mktemp("teacher")
    train(TrainConfig(env_id="Hopper-v5", method="dense", total_steps=1500, hidden=(32, 32), eval_interval=1500,
                      eval_episodes=1), out, progress=False)
    return out / "checkpoint.pt"


def actor_only(teacher: Path, folder: Path) -> Path:
    data = {k: v for k, v in load_checkpoint(teacher).data.items()
            if k not in ("format", "version", "critic", "critic_target", "actor_target", "train_state")}
    save_checkpoint(folder / "actor_only.pt", data)
    return folder / "actor_only.pt"


@pytest.mark.integration
def test_compress_from_fine_tunes_a_policy_with_critics_end_to_end(teacher, tmp_path, capsys):
    given = tmp_path / "given" / "checkpoint.pt"  # a copy, so that the test can remove it
    given.parent.mkdir()
    shutil.copyfile(teacher, given)
    out = tmp_path / "art"

    def run(source: Path) -> int:
        return cli.main(["compress", "--env", "Hopper-v5", "--preset", "tiny", "--from", str(source),
                         "--method", "prune", "--out", str(out), "--quiet"])

    assert run(given.parent) == 0  # the run folder holding the checkpoint
    ckpt = load_checkpoint(out / "train")
    # the teacher's network (32-32, not the preset's 64-64), fine-tuned by the method given
    assert ckpt.config["hidden"] == [32, 32] and ckpt.config["method"] == "prune"
    assert ckpt.config["init_from"] == str(given.resolve())
    assert ckpt.data["sparsity"]["actor"] == pytest.approx(TINY["train"]["actor_sparsity"], abs=1e-3)
    record = json.loads((out / "train" / "teacher.json").read_text())
    assert record["method"] == "fine-tuned (prune)" and record["episodes"] == TINY["evaluate"]["episodes"]
    # what was compressed, so that reading the run needs no teacher file
    assert {key: record[key] for key in ("source", "sha256", "kind", "algo")} == {
        "source": str(given.resolve()), "sha256": sha256_file(given), "kind": "tinypolicy", "algo": "TD3"}
    assert "(teacher " in capsys.readouterr().out
    report = (out / "report" / "report.md").read_text()
    assert "| teacher (the policy given to --from), same episodes |" in report
    assert "| expert: the compressed policy, fine-tuned (prune) (for reference) |" in report
    assert run(given) == 0 and capsys.readouterr().out.count(": up to date") == 8  # the file, otherwise spelt

    # the benchmark table of teacher vs compressed reads this run's raw files, not the teacher's
    from benchmarks.compress_from import collect, table
    given.unlink()
    collect(out, tmp_path / "collected")
    row = table(tmp_path / "collected").splitlines()[-1].split(" | ")
    assert row[:2] == ["| Hopper-v5", "given (tinypolicy TD3)"] and row[3] == "fine-tuned (prune)"
    assert float(row[2]) == pytest.approx(record["mean_return"], abs=0.5) and row[4] == "-" and row[6] == "0"


def test_compress_from_distils_an_actor_only_policy_into_a_student(teacher, tmp_path):
    config = PipelineConfig.from_preset("Hopper-v5", TINY, source=actor_only(teacher, tmp_path))
    stage = source_stage(config, progress=False)
    assert stage.outputs == ["checkpoint.pt", "student.json", "teacher.json"]
    assert stage.params["actor_sparsity"] == TINY["train"]["actor_sparsity"]
    (tmp_path / "train").mkdir()
    summary = stage.run(tmp_path / "train")
    assert summary["actor_sparsity"] == pytest.approx(TINY["train"]["actor_sparsity"], abs=1e-3)
    assert json.loads((tmp_path / "train" / "teacher.json").read_text())["method"] == "DAgger student"
    load_checkpoint(tmp_path / "train").build_actor()


def test_compress_from_refuses_a_policy_for_another_env(teacher):
    config = PipelineConfig.from_preset("Walker2d-v5", TINY, source=teacher)
    with pytest.raises(UserError, match="is a policy for Hopper-v5; pass --env Hopper-v5"):
        source_stage(config, progress=False)


def test_compress_from_distils_a_student_unless_a_method_is_given(teacher, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "load_presets", lambda path: {"tiny": TINY})

    def fake_compress(config, out, **kwargs):
        seen["route"] = source_stage(config, progress=False).params.get("method", "student")
        return []

    monkeypatch.setattr("tinypolicy.pipeline.compress.compress", fake_compress)
    base = ["compress", "--preset", "tiny", "--from", str(teacher), "--out", str(tmp_path / "o"), "--quiet"]
    assert cli.main(base) == 0 and seen["route"] == "student"  # though the tiny preset's train table says rlx2
    assert cli.main([*base, "--method", "rigl"]) == 0 and seen["route"] == "rigl"
    assert cli.main([*base, "--set", 'train.method="prune"']) == 0 and seen["route"] == "prune"
    config = PipelineConfig.from_preset("Hopper-v5", TINY, {"train": {"method": "prune"}},
                                        source=actor_only(teacher, tmp_path))
    with pytest.raises(UserError, match="holds an actor alone"):
        source_stage(config, progress=False)


def test_a_fine_tune_resumes_from_its_own_checkpoint_wherever_its_source_went(tmp_path):
    """compress compares the source by content, so the fine-tune it runs resumes whatever path the
    source is given by now, or none of it is left; a run started fresh still needs it."""
    cfg = TrainConfig(env_id="Pendulum-v1", method="dense", total_steps=1000, hidden=(8, 8))
    for folder in ("source", "run"):
        (tmp_path / folder).mkdir()
    Trainer(cfg, tmp_path / "source").save()
    fine_tune = replace(cfg, init_from=str(tmp_path / "source" / "checkpoint.pt"))
    Trainer(fine_tune, tmp_path / "run").save()
    shutil.rmtree(tmp_path / "source")
    moved = replace(cfg, init_from=str(tmp_path / "moved" / "checkpoint.pt"))
    Trainer(moved, tmp_path / "run").restore()
    with pytest.raises(UserError, match="init_from: True -> False"):  # a fine-tune explores its warm-up itself
        Trainer(cfg, tmp_path / "run").restore()
    with pytest.raises(UserError, match="moved/checkpoint.pt does not exist"):
        Trainer(moved, tmp_path / "fresh")


def test_routes_table_lists_every_evaluation_and_the_last_share(tmp_path):
    from benchmarks.compress_from import routes

    for name, table, column, values in (("ft", "metrics.csv", "eval_return", [100.0, 50.0]),
                                        ("st", "iterations.csv", "student_return", [90.0, 110.0])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "settings.json").write_text(json.dumps(
            {"route": name, "lr": 1e-4, "teacher_return": 100.0} | ({"note": "stopped"} if name == "ft" else {})))
        (tmp_path / name / table).write_text(f"step,{column}\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    rows = routes(tmp_path).splitlines()[2:]
    assert rows == ["| ft | lr 0.0001 | 100, 50 | stopped | 50% |", "| st | lr 0.0001 | 90, 110 | finished | 110% |"]


def test_table_names_the_settings_in_which_runs_of_one_teacher_differ():
    from benchmarks.compress_from import settings_shown
    ten, thirty = (json.dumps({"iterations": n, "lr": 0.001}) for n in (10, 30))
    assert settings_shown(ten, [ten, thirty]) == "iterations 10"
    assert settings_shown(thirty, [ten, thirty]) == "iterations 30"
    assert settings_shown(ten, [ten]) == "-"


def test_table_of_the_committed_runs():
    from benchmarks.compress_from import table

    lines = table(Path(__file__).resolve().parents[1] / "docs" / "results" / "compress_from", reps=200).splitlines()
    assert lines[0].startswith("| env | teacher | teacher return | method |") and len(lines) == 4  # superseded/ skipped
    assert lines[3].startswith("| Hopper-v5 | import-hopper-td3-sb3-s0 (sb3 TD3) | 2995 | DAgger student | - | 0.950 "
                               "| 0, 1, 2 | 2990 [")
    assert lines[3].endswith("| 101%, 102%, 97% | 18.0 (14.6) | 52.5 / 14.7 / 273.8 |")
