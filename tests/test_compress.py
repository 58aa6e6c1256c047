"""`tinypolicy compress`: work done with other settings is refused before anything runs and
rerun only with --force or --rerun (fast, every stage's work replaced by writing its outputs);
end to end on the tiny preset: every artefact, kill-and-resume, refusals that leave every
file as it was, and reruns of exactly the stages asked for."""
from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import ROOT
from tinypolicy.ondevice.artefact import sha256_file
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline import cli
from tinypolicy.pipeline import compress as pipeline
from tinypolicy.pipeline.cli import load_presets
from tinypolicy.pipeline.compress import STAGES, PipelineConfig

TINY = load_presets(None)["tiny"]


def tiny(env: str = "Hopper-v5", **overrides: dict) -> PipelineConfig:
    return PipelineConfig.from_preset(env, TINY, overrides)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclasses.dataclass
class Work:
    """What the stages did instead of their work: write their outputs, new content each time (so
    a stage that runs again changes the inputs of the stages that read it)."""
    ran: list[str] = dataclasses.field(default_factory=list)
    interrupt: str | None = None  # this stage writes a partial file, then is interrupted
    runs: int = 0  # never reset, unlike `ran`

    def stage(self, stage: pipeline.Stage) -> pipeline.Stage:
        def run(folder: Path) -> dict:
            if stage.name == self.interrupt:
                (folder / "partial").write_text("half of the work\n")
                raise KeyboardInterrupt
            self.ran.append(stage.name)
            self.runs += 1
            for name in stage.outputs:
                (folder / name).write_text(f"{stage.name} {name} run {self.runs}\n")
            return {}
        return dataclasses.replace(stage, run=run)


@pytest.fixture
def work(monkeypatch) -> Work:
    work = Work()
    build = pipeline.build_stages
    monkeypatch.setattr(pipeline, "build_stages",
                        lambda config, out, progress: [work.stage(s) for s in build(config, out, progress)])
    monkeypatch.setattr(cli, "STAGE_RESULTS", dict.fromkeys(STAGES, str))
    return work


@pytest.fixture
def finished(tmp_path, work) -> Path:
    out = tmp_path / "out"
    pipeline.compress(tiny(), out, progress=False)
    assert work.ran == list(STAGES)
    work.ran.clear()
    return out


def run_cli(out: Path, *args: str) -> int:
    return cli.main(["compress", "--env", "Hopper-v5", "--preset", "tiny", "--out", str(out), "--quiet", *args])


@pytest.mark.parametrize("args, listed", [
    (["--env", "Walker2d-v5"], "train (env_id: Hopper-v5 -> Walker2d-v5)"),
    (["--set", "train.total_steps=5000"], "train (total_steps: 4000 -> 5000)"),
    (["--steps", "5000", "--set", "distill.generations=3"],
     "train (total_steps: 4000 -> 5000); distill (generations: 2 -> 3). "),
])
def test_other_settings_in_a_finished_out_are_refused_touching_nothing(finished, work, capsys, args, listed):
    before = snapshot(finished)
    assert run_cli(finished, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and listed in err and "--force" in err, err
    assert work.ran == [] and snapshot(finished) == before


def test_force_reruns_the_changed_stage_and_those_reading_its_outputs(finished, work, capsys):
    assert run_cli(finished, "--set", "retrain.episodes=2", "--force") == 0
    assert work.ran == ["retrain", "report"]
    stdout = capsys.readouterr().out
    assert f"[7/8] retrain: discarding {finished / 'retrain'} (episodes: 1 -> 2), rerunning" in stdout
    assert f"[8/8] report: discarding {finished / 'report'} (its inputs changed), rerunning" in stdout
    assert run_cli(finished, "--set", "retrain.episodes=2") == 0 and work.ran == ["retrain", "report"]
    work.ran.clear()
    assert run_cli(finished, "--env", "Walker2d-v5", "--force") == 0 and work.ran == list(STAGES)


def test_rerun_reruns_an_up_to_date_stage_and_those_reading_its_outputs(finished, work):
    assert run_cli(finished, "--rerun", "export") == 0
    # distill reads the exported actor: its students include that sparse topology (mode a)
    assert work.ran == ["export", "bench", "embedded", "distill", "retrain", "report"]
    work.ran.clear()
    assert run_cli(finished, "--rerun", "train", "--set", "retrain.episodes=2") == 2  # allows no other change
    assert run_cli(finished, "--rerun", "retrain", "--rerun", "report", "--set", "retrain.episodes=2") == 0
    assert work.ran == ["retrain", "report"]
    with pytest.raises(UserError, match="--rerun trian: no such stage"):
        pipeline.compress(tiny(), finished, rerun=["trian"])


def test_interrupted_work_resumes_with_its_settings_and_is_refused_with_others(tmp_path, work, capsys):
    out = tmp_path / "out"
    work.interrupt = "distill"
    with pytest.raises(KeyboardInterrupt):
        pipeline.compress(tiny(), out, progress=False)
    work.interrupt = None
    before = snapshot(out)
    with pytest.raises(UserError, match=r"distill \(generations: 2 -> 3\)"):
        pipeline.compress(tiny(distill={"generations": 3}), out, progress=False)
    assert snapshot(out) == before
    work.ran.clear()
    pipeline.compress(tiny(), out, progress=False)
    assert work.ran == ["distill", "retrain", "report"] and (out / "distill" / "partial").exists()
    assert "[6/8] distill: running (resuming)" in capsys.readouterr().out


def test_a_start_that_failed_before_any_work_is_not_refused(tmp_path, work):
    out = tmp_path / "out"
    other = pipeline.build_stages(tiny("Walker2d-v5"), out, False)[0]
    other.folder(out).mkdir(parents=True)
    (other.folder(out) / pipeline.STAMP).write_text(json.dumps(other.expected_stamp()))
    pipeline.compress(tiny(), out, progress=False)
    assert work.ran == list(STAGES)


def test_an_edited_output_is_refused_until_its_stage_reruns(finished, work):
    (finished / "export" / "actor.onnx").write_text("my own actor\n")
    with pytest.raises(UserError, match=r"export \(actor.onnx changed since the stage finished\).*--rerun export"):
        pipeline.compress(tiny(), finished, progress=False)
    assert work.ran == [] and (finished / "export" / "actor.onnx").read_text() == "my own actor\n"
    pipeline.compress(tiny(), finished, progress=False, force=True)
    assert work.ran == ["export", "bench", "embedded", "distill", "retrain", "report"]


def test_distill_trains_for_the_exported_topology_unless_told_otherwise(tmp_path):
    out = tmp_path / "out"
    stages = {s.name: s for s in pipeline.build_stages(tiny(), out, False)}
    cfg = tiny().distill_config(out / "train" / "checkpoint.pt", out / "export" / "actor.onnx")
    assert cfg.mode == "a" and cfg.arch_mask == str(out / "export" / "actor.onnx") and cfg.init == "expert"
    assert out / "export" / "actor.onnx" in stages["distill"].inputs
    plain = tiny(distill={"mode": "r"})
    assert plain.distill_config(out / "c.pt", out / "a.onnx").arch_mask is None
    assert out / "export" / "actor.onnx" not in {s.name: s for s in pipeline.build_stages(plain, out, False)}[
        "distill"].inputs
    with pytest.raises(UserError, match="arch_mask cannot be set here"):
        tiny(distill={"arch_mask": "mine.onnx"})


def test_a_stamp_without_settings_still_resumes_and_refuses(finished, work):
    path = finished / "train" / pipeline.STAMP
    stamp = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in stamp.items() if k != "settings"}))
    pipeline.compress(tiny(), finished, progress=False)
    assert work.ran == []
    with pytest.raises(UserError, match=r"train \(parameters changed\)"):
        pipeline.compress(tiny(train={"total_steps": 5000}), finished, progress=False)


def test_a_moved_out_folder_is_still_up_to_date(finished, work, tmp_path):
    moved = tmp_path / "elsewhere"
    finished.rename(moved)
    pipeline.compress(tiny(), moved, progress=False)
    assert work.ran == []


def compress(out, *extra):
    return [sys.executable, "-m", "tinypolicy", "compress", "--env", "Hopper-v5", "--preset", "tiny",
            "--out", str(out), "--quiet", *extra]


def stage_status(stdout: str) -> dict[str, str]:
    """The summary table's status column, per stage."""
    rows = stdout[stdout.index("  stage"):].splitlines()[1:]
    return {row[2:11].strip(): row[12:23].strip() for row in rows}


@pytest.mark.integration
def test_tiny_pipeline_survives_a_kill_and_reruns_only_what_changed(tmp_path):
    out = tmp_path / "hopper"
    first = subprocess.Popen(compress(out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (out / "distill" / "es_state.npz").exists():  # distillation has checkpointed a generation
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert "outputs" not in json.loads((out / "distill" / "stamp.json").read_text())  # started, not finished
    finished = {s: (out / s / "stamp.json").read_text() for s in ("train", "evaluate", "export", "bench", "embedded")}

    resumed = subprocess.run(compress(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[6/8] distill: running (resuming)" in resumed.stdout
    status = stage_status(resumed.stdout)
    assert [status[s] for s in STAGES] == ["up to date"] * 5 + ["done"] * 3
    for stage, stamp in finished.items():  # nothing finished before the kill was redone
        assert (out / stage / "stamp.json").read_text() == stamp

    for stage in STAGES:  # every stage's artefacts exist and match their stamps
        stamp = json.loads((out / stage / "stamp.json").read_text())
        for name, digest in stamp["outputs"].items():
            assert sha256_file(out / stage / name) == digest
    report = (out / "report" / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 and "Retrained on the distilled dataset" in report
    embedded = (out / "report" / "report.md").read_text().split("## Embedded targets", 1)
    assert len(embedded) == 2  # measured, or skipped with the reason when the cross toolchains are missing
    assert ("Skipped:" in embedded[1]) == bool(json.loads((out / "embedded" / "stamp.json").read_text())
                                               ["summary"]["skipped"])
    retrained = json.loads((out / "retrain" / "retrain.json").read_text())
    assert retrained["sparse"]["sparsity"] > 0.5 and retrained["dense"]["sparsity"] == 0.0
    # architecture-randomised (the default): no init is shipped, every retrained policy starts fresh
    assert set(retrained) == {"dense", "sparse"} and not (out / "distill" / "policy_init.npz").exists()
    for entry in retrained.values():
        assert entry["start"] == "fresh init (seeds 0, 1, 2)" and len(entry["returns"]) == 3
    assert retrained["sparse"]["architecture"].startswith("sparse topology of export/actor.onnx")
    meta = json.loads((out / "distill" / "dataset.json").read_text())["meta"]
    assert meta["mode"] == "a" and meta["architectures"]["masked"] and meta["expert_return"] is not None
    assert "started from" in (out / "report" / "report.md").read_text()
    assert re.search(r"parity (ok|within float32 round-off) \(max error \d\.\de-\d\d", resumed.stdout)
    session = ort.InferenceSession(str(out / "export" / "actor.onnx"), providers=["CPUExecutionProvider"])
    actions = session.run(["actions"], {"obs": np.zeros((4, 11), np.float32)})[0]
    assert actions.shape == (4, 3) and np.all(np.abs(actions) <= 1.0)

    before = snapshot(out)
    for extra, listed in ((("--env", "Walker2d-v5"), "train (env_id: Hopper-v5 -> Walker2d-v5)"),
                          (("--set", "train.total_steps=5000"), "train (total_steps: 4000 -> 5000)"),
                          (("--set", "retrain.episodes=2"), "retrain (episodes: 1 -> 2)")):
        refused = subprocess.run(compress(out, *extra), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
        assert listed in refused.stderr and "--force" in refused.stderr, refused.stderr
        assert snapshot(out) == before

    again = subprocess.run(compress(out, "--set", "retrain.episodes=2", "--force"), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [stage_status(again.stdout)[s] for s in STAGES] == ["up to date"] * 6 + ["done"] * 2
    assert "[7/8] retrain: discarding" in again.stdout

    exported = subprocess.run(compress(out, "--set", "retrain.episodes=2", "--rerun", "export"), cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    status = stage_status(exported.stdout)
    assert status["export"] == "done" and {status[s] for s in ("train", "evaluate", "distill")} == {"up to date"}


@pytest.mark.parametrize("summary, line", [
    ({"parity_within_1e-5": True, "parity_max_abs_error": 3.2e-6, "parity_roundoff_scale": 4e-6},
     "ok (max error 3.2e-06)"),
    ({"parity_within_1e-5": False, "parity_max_abs_error": 1.07e-5, "parity_roundoff_scale": 7.7e-6},
     "within float32 round-off (max error 1.1e-05; PyTorch itself 7.7e-06 from float64)"),
    ({"parity_within_1e-5": False}, "within float32 round-off"),  # a stamp from before the errors were recorded
])
def test_the_export_summary_says_how_close_parity_came(summary, line):
    """A stamped export passed its parity check; beyond 1e-5 it reads as round-off, not as a failure."""
    assert cli.STAGE_RESULTS["export"]({"widths": [], "macs": {"nonzero": 1, "dense": 2}} | summary).endswith(
        f"parity {line}")


def test_presets_and_overrides_are_validated():
    presets = load_presets(None)
    assert {"tiny", "quick", "full"} <= set(presets)
    config = PipelineConfig.from_preset("Hopper-v5", presets["tiny"], {"distill": {"generations": 3}})
    assert config.stages["distill"]["generations"] == 3 and config.train_config().total_steps == 4000
    with pytest.raises(UserError, match="stage distill: unknown key generation"):
        PipelineConfig.from_preset("Hopper-v5", presets["tiny"], {"distill": {"generation": 3}})
    with pytest.raises(UserError, match="unknown stages"):
        PipelineConfig.from_preset("Hopper-v5", {"trian": {}})
    with pytest.raises(UserError, match=r"train.init_from in the preset: .* --from CHECKPOINT"):
        PipelineConfig.from_preset("Hopper-v5", {"train": {"init_from": "expert.pt"}})


def test_the_report_labels_every_retrained_return_with_its_start_and_architecture(tmp_path):
    from tinypolicy.pipeline import report
    from tinypolicy.pipeline.document import Document

    (tmp_path / "distill").mkdir()
    (tmp_path / "retrain").mkdir()
    (tmp_path / "distill" / "summary.json").write_text(json.dumps({
        "mode": "f", "size": 64, "generations": 3, "population": 8, "env_steps": 1000, "distill_seconds": 5.0,
        "init": "expert", "fresh_init_seeds": [100, 101], "fresh_init_mean": 500.0, "fixed_init_return": 1900.0,
        "random_policy_return": 16.0, "episodes": 3}))
    (tmp_path / "distill" / "dataset.json").write_text(json.dumps({
        "recipe": {"hidden": [64, 64], "activation": "tanh"}, "meta": {"mode": "f"}}))
    entry = {"hidden": [64, 64], "activation": "tanh", "sparsity": 0.0, "nnz": 4992, "final_loss": -1.0,
             "train_seconds": 0.05, "seeds": [0, 1, 2], "returns": [400.0, 600.0, 500.0], "mean_return": 500.0,
             "std_return": 81.6}
    (tmp_path / "retrain" / "retrain.json").write_text(json.dumps({
        "dense": entry | {"architecture": "64-64 tanh", "start": "fresh init (seeds 0, 1, 2)"},
        "sparse": entry | {"architecture": "sparse topology of export/actor.onnx: 256-256 tanh, 98.0% sparse",
                           "start": "fresh init (seeds 0, 1, 2)", "mean_return": 250.0},
        "dense_own_init": entry | {"architecture": "64-64 tanh", "start": "own init (policy_init.npz)",
                                   "seeds": [0], "returns": [2000.0], "mean_return": 2000.0}}))
    doc = Document("report")
    report._distill_section(doc, tmp_path, tmp_path, 2500.0)
    report._retrain_section(doc, tmp_path, 2500.0, {"method": "dense", "algo": "sac"}, None)
    text = doc.markdown()
    assert "| expert: dense SAC (for reference) |" in text and "teacher" not in text
    assert "| share of the expert |" in text and "| fresh inits (seeds 100, 101) | 64-64 tanh | 500.0 | 20% |" in text
    assert "| own init (the one it was distilled for) | 64-64 tanh | 1900.0 | 76% |" in text
    assert ("| dense | 64-64 tanh | fresh init (seeds 0, 1, 2) | 0.05 | 500.0 (400, 600, 500) | 20% |"
            in text)
    assert "| sparse | sparse topology of export/actor.onnx: 256-256 tanh, 98.0% sparse | fresh init" in text
    assert ("| dense_own_init | 64-64 tanh | own init (policy_init.npz) | 0.05 | 2000.0 (2000) | 80% |"
            in text)

    compressed = Document("report")  # compress --from: the expert is the compressed policy, its teacher beside it
    report._retrain_section(compressed, tmp_path, 2500.0, {"method": "dagger", "algo": "td3"},
                            {"method": "DAgger student", "mean_return": 3000.0})
    text = compressed.markdown()
    assert "| expert: the compressed policy, DAgger student (for reference) |" in text and "2500.0" in text
    assert "| teacher: the policy given to --from (for reference) |" in text and "3000.0" in text

    negative = Document("report")  # a share of a negative expert return (Pendulum's) means nothing
    report._retrain_section(negative, tmp_path, -150.0, {"method": "dense", "algo": "sac"}, None)
    assert "| 0.05 | 500.0 (400, 600, 500) | n/a |" in negative.markdown()
