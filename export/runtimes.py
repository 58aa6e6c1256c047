"""The exported policy as each runtime executes it: ONNX Runtime sessions and the C kernels.

Export uses these for parity and the int8 check, bench for latency and returns, so both
stages run exactly the same code paths.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tinypolicy.export.c_codegen import compile_shared

FLOAT_P = ctypes.POINTER(ctypes.c_float)
TIMER_SOURCE = Path(__file__).with_name("c_timer.c")


def ort_session(path: str | Path) -> ort.InferenceSession:
    """A single-threaded, non-spinning CPU session: the batch-1 latency configuration."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_actions(session: ort.InferenceSession, obs: np.ndarray) -> np.ndarray:
    return session.run(["actions"], {"obs": np.ascontiguousarray(obs, dtype=np.float32)})[0]


class CKernels:
    """actor.c and actor_dense.c (plus the C timing harness) compiled into one shared
    library with the project's warning flags, called through ctypes."""

    def __init__(self, src_dir: str | Path, build_dir: str | Path, obs_dim: int, act_dim: int):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.lib = ctypes.CDLL(str(compile_shared(src_dir, Path(build_dir) / "libtpactor.so", (TIMER_SOURCE,))))
        for name in ("tp_actor", "tp_actor_dense"):
            getattr(self.lib, name).argtypes = [FLOAT_P, FLOAT_P]
            getattr(self.lib, name).restype = None
        self.lib.tp_time_calls.argtypes = [ctypes.c_int, FLOAT_P, ctypes.c_int, ctypes.c_int,
                                           ctypes.POINTER(ctypes.c_double)]
        self.lib.tp_time_calls.restype = ctypes.c_double
        self._out = np.zeros(act_dim, np.float32)
        self._out_p = self._out.ctypes.data_as(FLOAT_P)

    def function(self, dense: bool):
        return self.lib.tp_actor_dense if dense else self.lib.tp_actor

    def actions(self, obs: np.ndarray, dense: bool = False) -> np.ndarray:
        """Run the kernel once per row of an observation batch."""
        obs = np.ascontiguousarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        out = np.empty((len(obs), self.act_dim), np.float32)
        fn = self.function(dense)
        for row, target in zip(obs, out):
            fn(row.ctypes.data_as(FLOAT_P), target.ctypes.data_as(FLOAT_P))
        return out

    def policy(self, dense: bool = False):
        """obs (any float array) -> action, for rolling out in an env."""
        fn = self.function(dense)

        def act(obs: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(obs, dtype=np.float32)
            fn(x.ctypes.data_as(FLOAT_P), self._out_p)
            return self._out.copy()

        return act

    def time_calls(self, obs: np.ndarray, calls: int, dense: bool = False) -> tuple[np.ndarray, float]:
        """Per-call nanoseconds of `calls` calls timed inside C (cycling through `obs`), and
        the mean nanoseconds per call of an untimed loop of as many calls."""
        obs = np.ascontiguousarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        per_call = np.empty(calls, np.float64)
        loop_mean = self.lib.tp_time_calls(int(dense), obs.ctypes.data_as(FLOAT_P), len(obs), calls,
                                           per_call.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        return per_call, float(loop_mean)
