"""HaDES end to end on Hopper-v5 (tiny budgets): outputs, resume, dataset round trip, bad files refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.builders import mask_onnx, sparse_actor, write_checkpoint
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


def _tiny_dataset(folder: Path, expert_return: float | None = 300.0) -> Path:
    from tinypolicy.ondevice.dataset import BCRecipe, Dataset

    rng = np.random.default_rng(0)
    meta = {"mode": "f"} | ({"expert_return": expert_return} if expert_return else {})
    save_dataset(Dataset("Hopper-v5", rng.normal(size=(8, 11)), rng.uniform(-1.5, 1.5, size=(8, 3)), np.zeros(11),
                         np.ones(11), -np.ones(3), np.ones(3), recipe=BCRecipe(hidden=(16,), steps=10), meta=meta),
                 folder)
    return folder


@pytest.mark.integration
def test_generalisation_grid_on_a_tiny_dataset(tmp_path):
    """Every combination is one cell with its own fresh inits; the summary's mean, worst cell and
    fraction at 60% of the expert are those of the cells; the exported topology is retrained
    with the NumPy trainer; the init a HaDES-F dataset ships is retrained beside them."""
    import csv

    from tinypolicy.ondevice.retrain import init_params as numpy_init
    from tinypolicy.pipeline.generalise import generalise

    dataset = _tiny_dataset(tmp_path / "dataset")
    mask_onnx(tmp_path / "actor.onnx", [11, 12, 12, 3])
    own = numpy_init([11, 16, 3], seed=5)
    np.savez(dataset / "policy_init.npz", w0=own.weights[0], b0=own.biases[0], w1=own.weights[1], b1=own.biases[1],
             log_std=own.log_std)
    summary = generalise(dataset, "Hopper-v5", tmp_path / "out", progress=False, seeds=2, episodes=1, widths=(8, 16),
                         depths=(1, 2), activations=("tanh", "elu"), lrs=(0.005,), bc_steps=(5, 10),
                         mask=str(tmp_path / "actor.onnx"))
    with (tmp_path / "out" / "generalise.csv").open() as f:
        rows = list(csv.DictReader(f))
    dense = [r for r in rows if r["grid"] == "dense"]
    masked = [r for r in rows if r["grid"] == "mask"]
    assert len(dense) == 2 * 2 * 2 * 2 and len(masked) == 2 * 2
    assert {(r["width"], r["depth"], r["activation"], r["bc_steps"]) for r in dense} == {
        (w, d, a, s) for w in ("8", "16") for d in ("1", "2") for a in ("tanh", "elu") for s in ("5", "10")}
    assert {r["hidden"] for r in masked} == {"12-12"} and {r["trainer"] for r in masked} == {"numpy"}
    assert all(len(r["returns"].split()) == 2 for r in rows)

    means = np.array([float(r["mean_return"]) for r in dense])
    stats = summary["summary"]["dense"]
    assert stats["cells"] == 16 and stats["policies"] == 32
    assert stats["mean_return"] == pytest.approx(means.mean(), abs=1e-3)
    assert stats["worst_return"] == pytest.approx(means.min(), abs=1e-3)
    assert stats["fraction_at_target"] == pytest.approx(np.mean(means >= 0.6 * 300.0))
    assert summary["expert_return"] == 300.0 and summary["summary"]["mask"]["cells"] == 4
    assert summary["recipe_cell"]["hidden"] == (16,) and summary["recipe_cell"]["bc_steps"] == 10
    assert summary["own_init"]["hidden"] == (16,) and summary["own_init"]["mean_return"] > 0
    table = (tmp_path / "out" / "generalise.md").read_text()
    assert "| dense | 16 |" in table and "| mask | 4 |" in table and "policy_init.npz" in table
    assert (tmp_path / "out" / "generalise.png").stat().st_size > 0


def test_generalise_without_an_expert_return_reports_returns_only(tmp_path):
    from tinypolicy.pipeline.generalise import summarise

    cells = [{"grid": "dense", "hidden": (8,), "activation": "tanh", "lr": 0.005, "bc_steps": 5,
              "returns": [r, r], "mean_return": r} for r in (100.0, 40.0, 70.0)]
    assert summarise(cells, None, 0.6) == {"cells": 3, "policies": 6, "mean_return": 70.0, "worst_return": 40.0,
                                           "worst_cell": "8 tanh, lr 0.005, 5 steps"}
    shares = summarise(cells, 100.0, 0.6)
    assert shares["fraction_at_target"] == pytest.approx(2 / 3) and shares["worst_share"] == pytest.approx(0.4)
    # every return is above 60% of a negative expert's: a share of it would be meaningless
    assert summarise(cells, -100.0, 0.6) == summarise(cells, None, 0.6)


def test_hades_table_refuses_to_publish_a_run_onto_itself(tmp_path):
    from benchmarks.hades_table import publish

    run = _tiny_dataset(tmp_path / "run")
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(UserError, match="onto itself"):
        publish(run, run / "..", None)  # the run folder, spelt otherwise
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_hades_table_summarises_each_grid_of_a_published_run(tmp_path):
    from benchmarks.hades_table import rows

    run = _tiny_dataset(tmp_path / "run")
    summary = {"env_id": "Hopper-v5", "mode": "r", "init": "expert", "size": 8, "population": 4, "generations": 3,
               "selected_generation": 2, "env_steps": 2e6, "distill_seconds": 120.0, "fresh_init_returns": [90.0, 150.0],
               "fresh_init_mean": 120.0, "random_policy_return": 16.0}
    (run / "summary.json").write_text(json.dumps(summary))
    assert rows([run], None)[-1] == ("| Hopper-v5 | HaDES-R from expert | 8 | 4 x 3 | 2 | 2.00M | 2 min | 120 (90, 150) "
                                     "| 40% | - | 16 |")
    (run / "generalise").mkdir()
    grid = {"cells": 405, "mean_return": 75.0, "worst_cell": "16 relu, lr 0.01, 100 steps", "worst_return": 3.0,
            "fraction_at_target": 0.25}
    (run / "generalise" / "generalise.json").write_text(json.dumps(
        {"expert_return": 300.0, "target_share": 0.6, "summary": {"dense": grid}}))
    assert rows([run], None)[-1] == ("| HaDES-R | dense | 405 | 75 | 25% | 16 relu, lr 0.01, 100 steps | 3 | 1% "
                                     "| 25% (>= 60%) |")


def test_bc_ceiling_summarises_the_grid_against_the_expert():
    from benchmarks.bc_ceiling import table

    rows = [{"width": w, "depth": d, "activation": "tanh", "mean_return": r}
            for (w, d), r in zip([(16, 1), (16, 2), (64, 1), (64, 2)], [30.0, 50.0, 70.0, 90.0])]
    report = {"env_id": "Hopper-v5", "expert_return": 100.0, "pairs": 500, "steps": 10, "batch": 8, "lr": 0.01,
              "seeds": 1, "episodes": 1, "rows": rows}
    lines = table(report)
    assert lines[2:6] == ["| 16 | 30% |", "| 16-16 | 50% |", "| 64 | 70% |", "| 64-64 | 90% |"]
    assert ("mean over the 4 cells 60%, worst 16 tanh 30%, cells at >= 40% 75%, at >= 60% 50%." in lines[-1])


def test_bc_ceiling_trains_and_rolls_out_each_architecture(tmp_path):
    from benchmarks.bc_ceiling import main

    ckpt = write_checkpoint(tmp_path / "expert.pt", sparse_actor("td3", 0.9, hidden=(32, 32)), hidden=(32, 32))
    out = tmp_path / "ceiling.json"
    args = ["run", str(ckpt), "--out", str(out), "--pairs", "300", "--steps", "30", "--seeds", "2", "--episodes", "1",
            "--widths", "8", "--depths", "1,2", "--activations", "relu", "--quiet"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert [(r["width"], r["depth"], r["activation"]) for r in report["rows"]] == [(8, 1, "relu"), (8, 2, "relu")]
    assert all(len(r["returns"]) == 2 and len(r["train_mse"]) == 2 for r in report["rows"])
    before = out.read_bytes()
    assert main(args) == 2 and out.read_bytes() == before  # an existing report is never overwritten


def test_architecture_settings_are_checked():
    with pytest.raises(UserError, match="--arch-mask needs --mode a"):
        DistillConfig(env_id="Hopper-v5", mode="r", arch_mask="actor.onnx")
    with pytest.raises(UserError, match="unknown arch activations 'gelu'"):
        DistillConfig(env_id="Hopper-v5", mode="a", arch_activations=("tanh", "gelu"))
    result = tinypolicy("generalise", "nowhere", "--env", "Hopper-v5", "--lrs", "0.01,-1", "--quiet")
    assert result.returncode == 2 and "lrs" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_architecture_randomised_distillation_trains_the_family_and_resumes(tmp_path):
    mask_onnx(tmp_path / "actor.onnx", [11, 12, 12, 3])
    settings = dict(TINY, mode="a", arch_widths=(8, 16), arch_depths=(1, 2), arch_mask=str(tmp_path / "actor.onnx"),
                    mask_share=0.5)
    out = tmp_path / "run"
    distill(DistillConfig(generations=1, **settings), out, progress=False)
    (tmp_path / "actor.onnx").unlink()  # a resumed run reads its own copy
    summary = distill(DistillConfig(generations=2, **settings), out, progress=False)
    assert summary["generations"] == 2 and (out / "arch_mask.onnx").is_file()
    family = load_dataset(out).meta["architectures"]
    assert family["masked"] == ["mask 12-12 tanh", "mask 12-12 relu", "mask 12-12 elu"]
    assert len(family["dense"]) == 2 * 2 * 3 and family["mask_share"] == 0.5
    with pytest.raises(UserError, match="arch_widths"):
        distill(DistillConfig(generations=2, **(settings | {"arch_widths": (8,)})), out, progress=False)


def test_a_bad_mask_is_refused_before_any_work(tmp_path):
    (tmp_path / "junk.onnx").write_text("not a model\n")
    for mask, message in ((tmp_path / "missing.onnx", "does not exist"), (tmp_path / "junk.onnx", "not a valid ONNX")):
        with pytest.raises(UserError, match=message):
            distill(DistillConfig(generations=1, mode="a", arch_mask=str(mask), **TINY), tmp_path / "run",
                    progress=False)
        assert not (tmp_path / "run" / "es_state.npz").exists()


def test_hades_table_prints_the_committed_d64_tables_and_writes_nothing(capsys):
    from benchmarks.hades_table import main

    hades = ROOT / "docs" / "results" / "hades"
    before = sorted(hades.rglob("*"))
    assert main([str(hades / f"hopper-d64-{mode}-expert") for mode in "raf"]) == 0
    out = capsys.readouterr().out
    assert out == (hades / "hopper-d64-table.md").read_text()  # the docs' two tables, nothing else
    assert out.startswith("| env | variant | D | N x G | dataset = mean of generation |")
    assert "| Hopper-v5 | HaDES-F from expert | 64 | 64 x 400 | 7 | 25.08M | 86 min |" in out
    assert "| HaDES-R | dense | 405 | 324 | 10% | 64 elu, lr 0.01, 200 steps |" in out
    assert sorted(hades.rglob("*")) == before
