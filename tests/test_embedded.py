"""Embedded targets: firmware built with the real cross toolchains, run under QEMU, checked
against ONNX Runtime; an actor too big for the part fails to link with a one-line message.

The toolchain tests need Debian's cross compilers and QEMU (`make embedded-deps`); outside
CI they are skipped when those are absent, in CI (CI=true) they run and fail instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.builders import sparse_actor, write_checkpoint
from tinypolicy.export.bundle import export_bundle
from tinypolicy.export.c_codegen import INT8_STEP_SLACK
from tinypolicy.export.embedded import (
    TARGETS,
    ActorSources,
    _parity,
    build_firmware,
    build_plugin,
    embedded_report,
    missing_tools,
    read_bundle,
    run_firmware,
    symbol_address,
)

ROOT = Path(__file__).resolve().parents[1]
MISSING = sorted({tool for target in TARGETS for tool in missing_tools(target)})
needs_toolchains = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("CI"),
    reason=f"{', '.join(MISSING)} not installed (make embedded-deps installs them; CI does)")


def tinypolicy(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinypolicy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kwargs)


def make_bundle(root: Path, hidden: tuple[int, ...], sparsity: float) -> Path:
    """An export bundle of an untrained Hopper-shaped actor, exported by `tinypolicy export`'s code."""
    actor = sparse_actor("td3", sparsity, hidden=hidden)
    checkpoint = write_checkpoint(root / "actor.pt", actor, hidden=hidden)
    export_bundle(checkpoint, root / "bundle", parity_samples=200, episodes=1, progress=False)
    return root / "bundle"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("small"), (64, 64), 0.9)


@pytest.mark.parametrize("step, diff, ok, steps", [(0.01, 0.005, True, 0.5), (0.01, 0.02, False, 2.0),
                                                   (0.0, 0.0, True, None), (0.0, 1e-7, False, None)])
def test_int8_parity_counts_steps_and_needs_equality_when_actions_are_not_quantised(step, diff, ok, steps):
    sources = ActorSources(Path("bundle"), obs_dim=11, act_dim=3, parity_threshold=1e-5, int8_step=step, macs={})
    parity = _parity("int8", sources, np.full((16, 3), diff), observations=16)
    assert parity["ok"] is ok
    if steps is None:
        assert parity["max_diff_in_steps"] is None
    else:
        assert parity["max_diff_in_steps"] == pytest.approx(steps)
    json.dumps(parity, allow_nan=False)  # embedded.json stays valid JSON: no inf or NaN steps


def test_missing_toolchain_is_a_one_line_error(tmp_path):
    proc = tinypolicy("embedded", str(tmp_path), "--target", "cortex-m4", env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "arm-none-eabi-gcc" in proc.stderr and "apt-get install" in proc.stderr


@pytest.mark.integration
@needs_toolchains
def test_firmware_actions_match_onnx_runtime(bundle):
    (bundle / "bench.md").write_text("# Export benchmark\n")  # as `tinypolicy bench` leaves it, abridged
    proc = tinypolicy("embedded", str(bundle), "--quiet")
    assert proc.returncode == 0, proc.stderr
    reports = json.loads((bundle / "embedded.json").read_text())
    manifest = json.loads((bundle / "export.json").read_text())
    assert set(reports) == set(TARGETS)
    for target, report in reports.items():
        sparse, dense, int8 = (report["kernels"][k] for k in ("sparse", "dense", "int8"))
        for kernel in (sparse, dense, int8):
            assert kernel["fits"] and Path(kernel["firmware"]["elf"]).is_file()
            assert kernel["parity"]["observations"] == 16
            assert kernel["instructions"]["exact"]
        for kernel in (sparse, dense):
            assert kernel["parity"]["ok"] and kernel["parity"]["max_abs_diff"] <= 1e-5, (target, kernel["parity"])
        assert int8["parity"]["ok"] and int8["parity"]["max_diff_in_steps"] <= INT8_STEP_SLACK, (target, int8["parity"])
        assert int8["parity"]["reference"] == "ONNX Runtime on actor.int8.onnx"
        # The harness is subtracted: what is left holds the weights plus code, a few KiB of it, and
        # on Cortex-M up to 3 instructions (12 bytes) per nonzero of straight-line layers.
        tables, nonzero = manifest["parameter_bytes"], manifest["macs"]["nonzero"]
        assert tables["sparse_fp32"] <= sparse["flash_bytes"] < tables["sparse_fp32"] + 12 * nonzero + 8192
        assert tables["dense_fp32"] <= dense["flash_bytes"] < tables["dense_fp32"] + 8192
        assert tables["sparse_int8"] <= int8["flash_bytes"] < tables["sparse_int8"] + 8192
        assert sparse["instructions"]["per_mac"] == round(sparse["instructions"]["median"] / nonzero, 3)
        # Each multiply-accumulate is at least one instruction: the counts see the real work.
        assert sparse["instructions"]["min"] >= manifest["macs"]["nonzero"]
        assert dense["instructions"]["min"] >= manifest["macs"]["dense"]
        assert dense["instructions"]["median"] > 2 * sparse["instructions"]["median"]
        assert 0 < sparse["stack_bytes"] < 1024 and sparse["ram_bytes"] == sparse["static_ram_bytes"] + sparse["stack_bytes"]
        assert "ESTIMATE" in sparse["estimate"]["assumption"]
    assert "parity ok" in proc.stdout and "does not fit" not in proc.stdout
    section = (bundle / "bench.md").read_text().split("## Embedded targets")[1]
    assert sum(line.startswith(f"| {target} ") for target in TARGETS for line in section.splitlines()) == 9


@pytest.mark.integration
@needs_toolchains
def test_instruction_counts_are_deterministic(bundle):
    first, second = (embedded_report(bundle, "cortex-m4")["kernels"]["sparse"]["instructions"] for _ in range(2))
    assert first["per_observation"] == second["per_observation"]


@pytest.mark.integration
@needs_toolchains
def test_plugin_counts_match_a_single_step_trace(bundle, tmp_path):
    """QEMU's own execution log, one instruction per translation block, counts the same."""
    target = TARGETS["cortex-m4"]
    sources, observations = read_bundle(bundle)
    elf, _ = build_firmware(target, sources, "sparse", tmp_path)
    run = run_firmware(target, elf, build_plugin(tmp_path), observations[:2], sources.act_dim)
    trace = tmp_path / "trace"
    trace.mkdir()
    observations[:2].astype("<f4").tofile(trace / "obs.bin")
    subprocess.run([*target.qemu, "-nographic", "-monitor", "none", "-serial", "none", "-semihosting-config",
                    "enable=on,target=native", "-singlestep", "-d", "exec,nochain", "-D", str(trace / "exec.log"),
                    "-kernel", str(elf)], cwd=trace, check=True, capture_output=True, timeout=300)
    begin, end = (symbol_address(target, elf, s) for s in ("tp_window_begin", "tp_window_end"))
    windows, executed, start = [], 0, None
    for line in (trace / "exec.log").read_text().splitlines():
        match = re.match(r"Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/", line)
        if match:
            executed += 1
            pc = int(match.group(1), 16)
            if pc == begin:
                start = executed
            elif pc == end:
                windows.append(executed - start)
    assert windows == run.window_instructions and len(windows) == 3 and windows[1] > 1000


@pytest.mark.integration
@needs_toolchains
def test_actor_too_big_for_the_part_fails_to_link(tmp_path):
    # Five dense 255-wide hidden layers: about 1.1 MB of sparse tables against the STM32F405's 1 MiB flash.
    big = make_bundle(tmp_path, (255,) * 5, 0.0)
    proc = tinypolicy("embedded", str(big), "--target", "cortex-m4", "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "the sparse actor does not fit the STM32F405 (cortex-m4): FLASH overflowed by" in proc.stderr


@pytest.mark.integration
@needs_toolchains
def test_dense_baseline_too_big_is_reported_not_fatal(bundle, monkeypatch):
    # A 24 KiB part: the harness (~12 KiB) and the sparse kernel fit, the dense one (~21 KiB) does not.
    monkeypatch.setitem(TARGETS, "cortex-m4", dataclasses.replace(TARGETS["cortex-m4"], flash_kib=24))
    report = embedded_report(bundle, "cortex-m4")
    assert report["kernels"]["sparse"]["fits"] and report["kernels"]["sparse"]["parity"]["ok"]
    dense = report["kernels"]["dense"]
    assert not dense["fits"] and "the dense actor does not fit" in dense["message"] and "FLASH overflowed" in dense["message"]
    assert "dense_over_sparse" not in report


@pytest.fixture(scope="module")
def halfcheetah_95(tmp_path_factory) -> Path:
    """A HalfCheetah actor (17-256-256-6) with RLx2's ER masks at 95%, untrained: the shapes
    the Cortex-M goals are stated for."""
    from benchmarks.export_docs import untrained_checkpoint

    root = tmp_path_factory.mktemp("halfcheetah95")
    checkpoint = untrained_checkpoint("HalfCheetah-v5", 0.95, root / "actor.pt")
    export_bundle(checkpoint, root / "bundle", parity_samples=200, episodes=1, progress=False)
    return root / "bundle"


@pytest.mark.integration
@needs_toolchains
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_cortex_m_instruction_budgets_and_int8_flash(halfcheetah_95, target):
    """At most 4 instructions per nonzero multiply-accumulate for the sparse kernel, 3 per
    MAC for the dense one (activations and scaling included), and the int8 kernel of the 95%
    HalfCheetah actor in 16 KiB of flash."""
    report = embedded_report(halfcheetah_95, target)
    sparse, dense, int8 = (report["kernels"][k] for k in ("sparse", "dense", "int8"))
    assert sparse["instructions"]["per_mac"] <= 4.0, sparse["instructions"]["per_mac"]
    assert dense["instructions"]["per_mac"] <= 3.0, dense["instructions"]["per_mac"]
    assert int8["flash_bytes"] <= 16 * 1024, int8["flash_bytes"]
    assert all(k["parity"]["ok"] for k in (sparse, dense, int8))
