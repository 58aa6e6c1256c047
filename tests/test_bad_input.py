"""Bad input, command by command, through the real CLI: every case of the table in
tests/bad_input_cases.py must be refused with a non-zero exit, no traceback and a few lines at
most, and must leave every file that existed before byte-identical (nothing lost, nothing
silently swapped). Valid inputs (a checkpoint, an export bundle, a dataset, a mask, AD
histories and an AD checkpoint) are built once per module and copied into each case's folder.

Each case runs `tinypolicy ARGS` as its own process, in its own session, with its stderr on a
pipe, as a shell would run it. The process is forked from a server that has imported the CLI
once (multiprocessing's forkserver), rather than started afresh: a fresh interpreter spends
about 1.5 s importing torch and the stages, as much as the slowest refusal, and the table has
about a hundred cases. The server never runs torch, so forking it is safe. One difference from
an interpreter's exit: the child skips atexit handlers, and tinypolicy registers none.

Each case is refused before any long work once the input is checked; a case still running
after `TIMEOUT` seconds has started work it should have refused, and fails. The cases marked
`slow` (integration) load an env, a model or every stage before the refusal.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import os
import resource
import shlex
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.bad_input_cases import AD_COLLECT, AD_MODEL, CASES, Case
from tests.builders import mask_onnx, sparse_actor, synthetic_dataset, write_checkpoint
from tinypolicy.export.bundle import export_bundle
from tinypolicy.ondevice.dataset import save_dataset
from tinypolicy.pipeline.cli import build_parser, main

TIMEOUT = 30        # seconds; far above what refusing any of these inputs needs
MAX_LINES = 3       # non-empty stderr lines a refusal may print
FULL_DISK = 2048    # RLIMIT_FSIZE bytes: every file write beyond it fails as on a full disk


# ---------------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One valid input of each kind, small enough to build in a few seconds."""
    root = tmp_path_factory.mktemp("inputs")
    checkpoint = write_checkpoint(root / "ckpt.pt", sparse_actor("td3", 0.9, hidden=(16, 16)), hidden=(16, 16))
    export_bundle(checkpoint, root / "bundle", parity_samples=50, episodes=1, progress=False)
    save_dataset(synthetic_dataset(np.random.default_rng(0)), root / "dist")
    mask_onnx(root / "mask.onnx", [11, 32, 3])
    for args in (f"ad collect --out {root / 'data'} {AD_COLLECT}",
                 f"ad train --data {root / 'data'} --out {root / 'ad'} --steps 2 {AD_MODEL} --quiet"):
        assert main(shlex.split(args)) == 0, args
    return {"checkpoint": checkpoint, "bundle": root / "bundle", "dataset": root / "dist", "mask": root / "mask.onnx",
            "histories": root / "data", "ad_run": root / "ad"}


def snapshot(root: Path) -> dict[Path, str | None]:
    """Every path under `root`: a file's SHA-256, None for a folder."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            for path in root.rglob("*")}


def _full_disk() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as one on a full disk
    # fails with ENOSPC: an OSError in the middle of writing a file.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK, FULL_DISK))


_FORKSERVER = multiprocessing.get_context("forkserver")
# the CLI and the stages its commands import when they run
_FORKSERVER.set_forkserver_preload(["tinypolicy.pipeline.cli", "tinypolicy.pipeline.compress",
                                    "tinypolicy.pipeline.import_policy", "tinypolicy.pipeline.sweep",
                                    "tinypolicy.pipeline.distill", "tinypolicy.pipeline.ad",
                                    "tinypolicy.pipeline.generalise", "tinypolicy.export.bench",
                                    "tinypolicy.export.embedded", "mujoco"])


def _tinypolicy(args: str, cwd: str, full_disk: bool, stderr) -> None:
    """The child: `python -m tinypolicy ARGS` in `cwd`, stdout discarded, stderr to the pipe. An
    uncaught exception prints its traceback there and exits 1, as the interpreter would."""
    os.setsid()  # a timeout kills its process group: its rollout workers too
    os.chdir(cwd)
    os.dup2(stderr.fileno(), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    if full_disk:
        _full_disk()
    sys.exit(main(shlex.split(args)))


def run_cli(case: Case, cwd: Path) -> tuple[int | None, str]:
    """Exit status (None if it timed out) and stderr of `tinypolicy ARGS` in `cwd`."""
    reader, writer = _FORKSERVER.Pipe(duplex=False)
    child = _FORKSERVER.Process(target=_tinypolicy, args=(case.args, str(cwd), case.full_disk, writer))
    child.start()
    writer.close()  # the pipe ends when the child and everything it started have exited
    chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(reader.fileno(), 1 << 16), b"")))
    drain.start()
    drain.join(TIMEOUT)
    timed_out = drain.is_alive()
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        drain.join()
    child.join()
    reader.close()
    return None if timed_out else child.exitcode, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.integration] if c.slow else [])
                                  for c in CASES])
def test_bad_input_is_refused_and_loses_nothing(case: Case, inputs, tmp_path):
    for step in case.setup:
        step(tmp_path, inputs)
    before = snapshot(tmp_path)
    code, stderr = run_cli(case, tmp_path)
    after = snapshot(tmp_path)

    lines = [line for line in stderr.splitlines() if line.strip()]
    problems = []
    if code is None:
        problems.append(f"still running after {TIMEOUT} s: it started work instead of refusing the input")
    elif code == 0:
        problems.append("exit status 0")
    if "Traceback" in stderr:
        problems.append("traceback")
    if len(lines) > MAX_LINES:
        problems.append(f"{len(lines)} lines on stderr")
    problems += [f"stderr lacks {text!r}" for text in case.stderr_has if text not in stderr]
    problems += [f"stderr says {text!r}" for text in case.stderr_lacks if text in stderr]
    problems += [f"{path.relative_to(tmp_path)} {'deleted' if path not in after else 'changed'}"
                 for path, digest in before.items() if after.get(path, "gone") != digest]
    problems += [f"left behind {path.relative_to(tmp_path)}" for pattern in case.absent_after
                 for path in tmp_path.glob(pattern)]
    if case.confined_to:
        inside = tmp_path / case.confined_to
        problems += [f"created {path.relative_to(tmp_path)} outside {case.confined_to}/" for path in after
                     if path not in before and path != inside and inside not in path.parents]
    assert not problems, f"{'; '.join(problems)}\n--- stderr (last 1500 characters) ---\n{stderr[-1500:]}"


def test_the_table_covers_every_command_and_its_cases_are_distinct():
    def subcommands(parser: argparse.ArgumentParser) -> dict:  # argparse has no public API for these
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    commands = subcommands(build_parser())
    ad_stages = subcommands(commands["ad"])
    covered = {case.command for case in CASES}
    assert covered == (set(commands) - {"ad"}) | {f"ad {stage}" for stage in ad_stages}
    assert len({case.id for case in CASES}) == len(CASES) >= 40
