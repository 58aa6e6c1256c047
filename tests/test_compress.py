"""`tinypolicy compress` end to end on the tiny preset: every artefact, kill-and-resume,
and reruns of exactly the stages whose parameters changed."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import ROOT
from tinypolicy.ondevice.artefact import sha256_file
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline.cli import load_presets
from tinypolicy.pipeline.compress import STAGES, PipelineConfig

pytestmark = pytest.mark.integration


def compress(out, *extra):
    return [sys.executable, "-m", "tinypolicy", "compress", "--env", "Hopper-v5", "--preset", "tiny",
            "--out", str(out), "--quiet", *extra]


def stage_status(stdout: str) -> dict[str, str]:
    """The summary table's status column, per stage."""
    rows = stdout[stdout.index("  stage"):].splitlines()[1:]
    return {row[2:11].strip(): row[12:23].strip() for row in rows}


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
    assert not (out / "distill" / "stamp.json").exists()
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
    session = ort.InferenceSession(str(out / "export" / "actor.onnx"), providers=["CPUExecutionProvider"])
    actions = session.run(["actions"], {"obs": np.zeros((4, 11), np.float32)})[0]
    assert actions.shape == (4, 3) and np.all(np.abs(actions) <= 1.0)

    again = subprocess.run(compress(out, "--set", "retrain.episodes=2"), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [stage_status(again.stdout)[s] for s in STAGES] == ["up to date"] * 6 + ["done"] * 2


def test_presets_and_overrides_are_validated():
    presets = load_presets(None)
    assert {"tiny", "quick", "full"} <= set(presets)
    config = PipelineConfig.from_preset("Hopper-v5", presets["tiny"], {"distill": {"generations": 3}})
    assert config.stages["distill"]["generations"] == 3 and config.train_config().total_steps == 4000
    with pytest.raises(UserError, match="stage distill: unknown key generation"):
        PipelineConfig.from_preset("Hopper-v5", presets["tiny"], {"distill": {"generation": 3}})
    with pytest.raises(UserError, match="unknown stages"):
        PipelineConfig.from_preset("Hopper-v5", {"trian": {}})
