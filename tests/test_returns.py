"""benchmarks.returns: IQM, stratified bootstrap intervals and % of dense over collected runs."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.returns import TABLE_RUNS, iqm, plan, report, table, trimmed_mean
from benchmarks.returns import main as returns_main

pytest.importorskip("rliable")


def _collected(folder, name, method, seed, curve, sparsity=(0.98, 0.95), implementation="tinypolicy", final=None):
    run = folder / name
    run.mkdir(parents=True)
    record = {"implementation": implementation, "env_id": "Hopper-v5", "algo": "td3", "seed": seed}
    if implementation == "tinypolicy":
        record |= {"method": method, "actor_sparsity": sparsity[0], "critic_sparsity": sparsity[1],
                   "total_steps": 100 * len(curve)}
    (run / "run.json").write_text(json.dumps(record))
    (run / "eval.json").write_text(json.dumps({"steps": 100 * len(curve), "mean_return": curve[-1]} | (final or {})))
    rows = ["step,eval_return"] + [f"{100 * (i + 1)},{v}" for i, v in enumerate(curve)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 10, 13])
def test_iqm_is_rliables(n):
    """Our trimmed mean cuts what rliable's aggregate_iqm cuts, for every count of seeds mod 4,
    flattened or column by column."""
    from rliable import metrics

    scores = np.random.default_rng(n).normal(size=(n, 6)) * 1000
    assert iqm(scores) == pytest.approx(metrics.aggregate_iqm(scores), rel=1e-12)
    assert trimmed_mean(scores, axis=0) == pytest.approx([metrics.aggregate_iqm(scores[:, j]) for j in range(6)],
                                                         rel=1e-12)
    assert iqm([1.0, 2.0, 3.0, 100.0]) == 2.5  # the outer quarter of each end goes


def test_iqm_intervals_and_ratio_to_dense(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    dense = [100.0, 900.0, 1000.0, 1100.0, 5000.0]  # the outer seeds must not move the IQM
    rlx2 = [800.0, 1200.0, 1300.0, 1400.0, 1500.0]
    for seed, final in enumerate(dense):
        _collected(runs, f"dense-s{seed}", "dense", seed, [0.0] * 19 + [final])
    for seed, final in enumerate(rlx2):
        _collected(runs, f"rlx2-s{seed}", "rlx2", seed, [0.0] * 18 + [final, final])
    _collected(runs, "prune-s0", "prune", 0, [0.0] * 19 + [2000.0])
    _collected(runs, "sb3-s0", None, 0, [0.0] * 19 + [700.0], implementation="stable-baselines3")
    table = report(runs, out, reps=1000)
    rows = {r["label"]: r for r in json.loads((out / "returns.json").read_text())["rows"]}
    # score = the mean of the last 10% of evaluations (the last 2 of 20); IQM of 5 = the middle 3
    assert rows["dense"]["scores"] == [v / 2 for v in dense]
    assert rows["dense"]["iqm"] == pytest.approx(np.mean([450.0, 500.0, 550.0]))
    assert rows["rlx2 98/95"]["iqm"] == pytest.approx(1300.0)
    low, high = rows["dense"]["iqm_ci"]
    assert low < rows["dense"]["iqm"] < high
    assert rows["rlx2 98/95"]["pct_of_dense"] == pytest.approx(100 * 1300.0 / 500.0)
    low, high = rows["rlx2 98/95"]["pct_of_dense_ci"]
    assert low < 260.0 < high
    for one_seed in ("prune 98/95", "sb3"):  # one seed: no interval, no ratio
        assert rows[one_seed]["iqm_ci"] is None and rows[one_seed]["pct_of_dense"] is None
    assert "| Hopper-v5 | TD3 | prune 98/95 | 0 | 2,000 | 1000 | n/a | n/a | n/a |" in table
    assert (out / "curves_hopper.png").stat().st_size > 10_000
    assert report(runs, tmp_path / "again", reps=1000) == table  # the page regenerates identically


def test_cost_columns_sparsity_flops_and_speed(tmp_path, capsys, monkeypatch):
    """Dense rows cost 1.0 of dense; a 98/95 network far less; GMP the same at inference but,
    training dense first, more in training: the mean over its updates, as the trainer prunes."""
    from benchmarks.flops import flops_vs_dense
    from tinypolicy.models import gmp_sparsity
    from tinypolicy.pipeline.train import Schedule, TrainConfig

    runs = tmp_path / "runs"
    measured = {"actor_sparsity": 0.980005787037037, "critic_sparsity": 0.9499971171586716}
    for seed, speed in enumerate([10.0, 40.0, 20.0]):
        _collected(runs, f"dense-s{seed}", "dense", seed, [1.0] * 20,
                   final={"actor_sparsity": 0.0, "critic_sparsity": 0.0, "steps_per_s": speed})
        _collected(runs, f"rlx2-s{seed}", "rlx2", seed, [1.0] * 20, final=measured | {"steps_per_s": speed + 1})
    _collected(runs, "prune-s0", "prune", 0, [1.0] * 20, final=measured)
    _collected(runs, "sb3-s0", None, 0, [1.0] * 20, implementation="stable-baselines3")
    monkeypatch.setattr("benchmarks.returns.REPS", 100)
    assert returns_main(["table", str(runs)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # `table` writes nothing
    rows = {line.split(" | ")[2]: line.split(" | ")[9:13] for line in printed.splitlines()[2:]}
    assert rows["dense"] == ["0.0% / 0.0%", "1.000", "1.000", "20.0"]  # steps/s: median over seeds
    assert rows["sb3"] == ["0.0% / 0.0%", "1.000", "1.000", "n/a"]
    sparsity, train, infer, speed = rows["rlx2 98/95"]
    assert (sparsity, speed) == ("98.0% / 95.0%", "21.0")
    assert float(train) < 0.06 and float(infer) < 0.03
    assert rows["prune 98/95"][2] == infer

    # the trainer's order: step t's update, then (when due) pruning to the schedule's sparsity
    cfg = TrainConfig(method="prune", actor_sparsity=0.98, critic_sparsity=0.95, total_steps=2000)
    s, level, flops = Schedule.for_config(cfg), (0.0, 0.0), []
    for step in range(1, cfg.total_steps + 1):
        if step > s.learning_starts:
            flops.append(flops_vs_dense("Hopper-v5", *level)[0])
        if s.prune_start < step <= s.prune_end and ((step - s.prune_start) % s.prune_interval == 0
                                                    or step == s.prune_end):
            level = tuple(gmp_sparsity(step, s.prune_start, s.prune_end, f) for f in (0.98, 0.95))
    assert rows["prune 98/95"][1] == f"{np.mean(flops):.3f}"
    assert float(train) < np.mean(flops) < 1.0


def test_report_refuses_a_folder_without_collected_runs(tmp_path, capsys):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        returns_main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no collected run" in err


@pytest.mark.parametrize("damage", ["no env_id", "not an object", "not JSON"])
def test_report_refuses_a_malformed_run_json_in_one_line(tmp_path, capsys, damage):
    runs = tmp_path / "runs"
    _collected(runs, "dense-s0", "dense", 0, [1.0, 2.0])
    run_json = runs / "dense-s0" / "run.json"
    record = json.loads(run_json.read_text())
    del record["env_id"]
    run_json.write_text({"no env_id": json.dumps(record), "not an object": "[1, 2]", "not JSON": "{"}[damage])
    with pytest.raises(SystemExit) as exit_info:
        returns_main(["report", str(runs), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dense-s0 holds no collected run" in err, err
    if damage == "no env_id":
        assert "'env_id'" in err


def test_warm_up_and_replay_floor_off_their_defaults_are_configurations_of_their_own(tmp_path):
    """A warm-up or replay floor other than the defaults for the run's length changes what is
    compared: its runs (ours and SB3's) get rows of their own, compared with the dense runs of the
    same warm-up. A floor means nothing to a method without a dynamic buffer, and a value left to
    the default (None) or written out at the default is the plain configuration."""
    from benchmarks.returns import collect

    runs, sb3_runs = tmp_path / "runs", tmp_path / "sb3"
    curve = [1.0] * 3000  # 300,000 steps: defaults warm-up 25,000, TD3 floor 100,000
    at_defaults = [{}, {"learning_starts": 25_000, "buffer_min": 100_000}, {"buffer_min": 10_000}]
    scaled = {"learning_starts": 2_500, "buffer_min": 10_000}  # the old defaults, scaled to 300k
    runs_by_score = [("dense", 1.0, at_defaults), ("dense", 2.0, [scaled] * 3),
                     ("rlx2", 3.0, [scaled] * 3), ("rlx2", 4.0, at_defaults[:2] * 2)]
    for group, (method, score, settings) in enumerate(runs_by_score):
        for seed, values in enumerate(settings):
            _collected(runs, f"g{group}-s{seed}", method, seed, [score] * len(curve))
            record = json.loads((runs / f"g{group}-s{seed}" / "run.json").read_text())
            (runs / f"g{group}-s{seed}" / "run.json").write_text(json.dumps(record | values))
    for name, warmup in (("sb3-s0", 2_500), ("sb3-default-s0", 25_000)):
        (sb3_runs / name).mkdir(parents=True)
        (sb3_runs / name / "metrics.csv").write_text("step,eval_return\n300000,3.0\n")
        (sb3_runs / name / "eval.json").write_text(json.dumps(
            {"implementation": "stable-baselines3", "env_id": "Hopper-v5", "algo": "td3", "seed": 0,
             "steps": 300_000, "learning_starts": warmup, "mean_return": 3.0}))
        collect(sb3_runs / name, runs)
    report(runs, tmp_path / "out", reps=10)
    rows = {r["label"]: r for r in json.loads((tmp_path / "out" / "returns.json").read_text())["rows"]}
    assert {label: row["scores"] for label, row in rows.items()} == {
        "dense": [1.0] * 3, "dense (warm-up 2,500)": [2.0] * 3,
        "rlx2 98/95 (warm-up 2,500, buffer floor 10,000)": [3.0] * 3, "rlx2 98/95": [4.0] * 4,
        "sb3 (warm-up 2,500)": [3.0], "sb3": [3.0]}
    # each compared with dense at its own warm-up: 3 / 2 and 4 / 1; dense rows with nothing
    assert rows["dense"]["pct_of_dense"] is None and rows["dense (warm-up 2,500)"]["pct_of_dense"] is None
    assert rows["rlx2 98/95 (warm-up 2,500, buffer floor 10,000)"]["pct_of_dense"] == pytest.approx(150.0)
    assert rows["rlx2 98/95"]["pct_of_dense"] == pytest.approx(400.0)
    # the older settings leave the page where today's defaults have 3 seeds (dense, rlx2), not before (sb3: 1)
    assert {label for label, row in rows.items() if row["superseded"]} == {
        "dense (warm-up 2,500)", "rlx2 98/95 (warm-up 2,500, buffer floor 10,000)"}
    current, gone = table(runs, reps=10), table(runs, reps=10, superseded=True)
    assert current == (tmp_path / "out" / "returns.md").read_text()
    for label, row in rows.items():
        assert (f"| TD3 | {label} |" in gone) == row["superseded"] != (f"| TD3 | {label} |" in current)


COMMITTED_RUNS = Path(__file__).resolve().parents[1] / "docs" / "results" / "runs"


def test_plan_lists_each_table_run_once_and_skips_collected_ones(tmp_path):
    full = plan(Path("/runs"), tmp_path, "python")
    names = [line.split(" | ")[0] for line in full]
    assert len(names) == len(set(names)) == sum(len(methods) * seeds for *_, methods, seeds in TABLE_RUNS)
    assert "hopper-td3-rlx2-a98-c95-fp32-ls25k-bm100k-s4" in names
    assert "ant-td3-rlx2-a96-c88-fp32-ls25k-bm100k-s2" in names
    hopper_td3 = [n for n in names if n.startswith("hopper-td3-")]
    assert all("-sb3-" in n for n in hopper_td3[-5:]) and not any("-sb3-" in n for n in hopper_td3[:-5])
    line = full[names.index("walker2d-td3-rlx2-a97-c95-fp32-ls25k-bm100k-s1")]
    assert line.endswith("--actor-sparsity 0.97 --critic-sparsity 0.95 --steps 300000 --seed 1 --threads 1 "
                         "--quiet --out /runs/walker2d-td3-rlx2-a97-c95-fp32-ls25k-bm100k-s1")
    (tmp_path / names[0]).mkdir()
    assert [line.split(" | ")[0] for line in plan(Path("/runs"), tmp_path, "python")] == names[1:]


def test_plan_refuses_a_missing_collected_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        returns_main(["plan", "--runs", str(tmp_path), "--collected", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "nowhere is not a folder of collected runs" in capsys.readouterr().err


def test_plan_names_match_the_committed_runs():
    # every HalfCheetah run of the table is collected: a name format drifting from the
    # committed folders' would queue them again
    remaining = plan(Path("/runs"), COMMITTED_RUNS, "python")
    assert not [line for line in remaining if line.startswith("halfcheetah-")]


def test_lane_runs_the_plan_sets_failures_aside_and_holds_back_sb3(tmp_path):
    (tmp_path / "plan.txt").write_text("# a comment\n"
                                       "ok | echo hello\n"
                                       "broken | exit 3\n"
                                       "x-sb3-s0 | true\n"
                                       "last | pwd\n")
    lane = Path(__file__).resolve().parents[1] / "benchmarks" / "lane.sh"
    end = int(time.time()) + 60 * 60
    subprocess.run(["bash", str(lane), str(tmp_path), str(end)], check=True, timeout=60,
                   env={"MIN_SB3": "120", "PATH": "/usr/bin:/bin"})
    assert (tmp_path / "ok" / ".done").is_file() and (tmp_path / "ok.log").read_text() == "hello\n"
    assert (tmp_path / "broken.failed").is_file() and not (tmp_path / "broken").exists()
    assert not (tmp_path / "x-sb3-s0").exists()  # 60 minutes left, 120 asked for
    assert (tmp_path / "last.log").read_text().strip() == str(tmp_path)
    log = (tmp_path / "lanes.log").read_text()
    assert "ends broken rc=3" in log and log.rstrip().endswith("nothing left to run")
