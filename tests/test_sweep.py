"""Sweeps: the job grid, the ultimate compression ratio, and a Ray sweep surviving a killed job."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline import cli
from tinypolicy.pipeline.sweep import load_sweep_config, ultimate_compression

CONFIG = """
out = "{out}"
envs = ["Pendulum-v1"]
methods = ["dense", "rlx2"]
sparsities = [[0.9, 0.8], [0.95, 0.9]]
seeds = [0, 1]
[train]
total_steps = {steps}
hidden = [32, 32]
eval_interval = 500
eval_episodes = 1
checkpoint_interval = 500
"""


def test_job_grid_runs_dense_once_per_seed(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG.format(out=tmp_path / "out", steps=1000))
    names = [name for name, _ in load_sweep_config(path).jobs()]
    assert len(names) == 2 + 2 * 2 and len(set(names)) == len(names)
    assert sum("dense" in n for n in names) == 2


def test_bad_configs_are_refused(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG.format(out=tmp_path, steps=1000).replace('"rlx2"', '"rigl2"'))
    with pytest.raises(UserError, match="unknown methods"):
        load_sweep_config(path)
    path.write_text(CONFIG.format(out=tmp_path, steps=1000) + "bogus = 1\n")
    with pytest.raises(UserError, match=r"sweep config \[train\]: unknown key bogus"):
        load_sweep_config(path)


@pytest.mark.parametrize("fields, message", [
    ({"envs": '["../../escape"]'}, "env id '../../escape' is not a plain Gymnasium id"),
    ({"envs": '["tinypolicy/Hopper-v5"]'}, "is not a plain Gymnasium id"),
    ({"envs": '["CartPole-v1"]'}, "CartPole-v1 has a Discrete action space"),
    ({"envs": "[]"}, "envs must not be empty"),
    ({"methods": "[]", "seeds": "[]"}, "methods, seeds must not be empty"),
    ({"envs": '"Pendulum-v1"'}, "envs must be a list, each a string, got 'Pendulum-v1'"),
    ({"seeds": '[0, "1"]'}, "seeds must be a list, each an integer"),
    ({"sparsities": "[0.9, 0.85]"}, "sparsities must be a list, each a list of 2"),
    ({"seeds": "[0, 0]"}, "job Pendulum-v1-td3-dense-s0 appears twice"),
])
def test_bad_configs_are_refused_before_any_folder_exists(tmp_path, capsys, fields, message):
    path = tmp_path / "a" / "b" / "sweep.toml"
    path.parent.mkdir(parents=True)
    text = CONFIG.format(out=path.parent / "out", steps=1000)
    for key, value in fields.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
    path.write_text(text)
    assert cli.main(["sweep", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "a", path.parent, path]


def test_a_config_of_random_bytes_is_refused(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(UserError, match=f"cannot read sweep config {path}"):
        load_sweep_config(path)


def test_ultimate_compression_picks_the_sparsest_run_within_3_percent():
    row = lambda method, a, score: {"env": "E", "method": method, "actor_sparsity": a,
                                    "critic_sparsity": a, "score": score}
    rows = [row("dense", 0.0, 1000), row("dense", 0.0, 1000), row("rlx2", 0.9, 1010), row("rlx2", 0.95, 975),
            row("rlx2", 0.98, 940), row("rlx2", 0.98, 980)]
    result = ultimate_compression(rows)["E"]
    assert result["actor_sparsity"] == 0.95 and result["compression_ratio"] == pytest.approx(20)
    negative = [row("dense", 0.0, -200), row("rlx2", 0.9, -205), row("rlx2", 0.95, -210)]
    assert ultimate_compression(negative)["E"]["actor_sparsity"] == 0.9


@pytest.mark.integration
def test_ray_sweep_survives_a_killed_job(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG.format(out=out, steps=3000).replace("[[0.9, 0.8], [0.95, 0.9]]", "[[0.9, 0.8]]")
                    .replace("[0, 1]", "[0]"))
    sweep = subprocess.Popen([sys.executable, "-m", "tinypolicy", "sweep", str(path), "--backend", "ray", "--quiet"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = out / "Pendulum-v1-td3-rlx2-a0.9-c0.8-s0"
    deadline = time.time() + 240
    while not ((victim / "checkpoint.pt").exists() and (victim / "job.pid").exists()):
        assert sweep.poll() is None and time.time() < deadline, sweep.communicate()
        time.sleep(0.5)
    os.kill(int((victim / "job.pid").read_text()), signal.SIGKILL)  # the worker dies mid-job
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr[-2000:]
    for job in out.iterdir():
        if job.is_dir():
            assert json.loads((job / "eval.json").read_text())["steps"] == 3000
    assert "rlx2" in (out / "sweep.md").read_text() and (out / "sweep.png").exists()
