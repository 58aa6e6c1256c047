"""The exported policy as each runtime executes it: ONNX Runtime sessions, the C kernels and,
where installed, emx-onnx-cgen's C for the same ONNX.

Export uses these for parity and the int8 check, bench for latency and returns, so both
stages run exactly the same code paths.
"""
from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tinypolicy.export.c_codegen import HOST_CFLAGS, KERNELS, WARNINGS, compile_shared, host_compiler

FLOAT_P = ctypes.POINTER(ctypes.c_float)
TIMER_SOURCE = Path(__file__).with_name("c_timer.c")
EMX = "emx_dense"
EMX_FUNCTION = "tp_emx_actor"
EMX_VERSION = "1.4.0"


def ort_session(path: str | Path, fuse: bool = True) -> ort.InferenceSession:
    """A single-threaded, non-spinning CPU session: the batch-1 latency configuration.

    fuse=False runs the graph as written, without ORT's graph optimisations: an int8 QDQ model
    then computes its own arithmetic (DequantizeLinear, float op, QuantizeLinear), the reference
    for its C kernel. The fused integer kernels are not exact everywhere: on x86 without AVX-512
    VNNI, ORT's U8S8 matrix products add pairs of products in 16 bits (vpmaddubsw), which
    saturate with full-range weights (measured on an AVX2 EPYC: 18 quantisation steps off on
    every observation of a 90%-sparse actor, against 0 for our C kernel and for ORT unfused)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fuse
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_actions(session: ort.InferenceSession, obs: np.ndarray) -> np.ndarray:
    return session.run(["actions"], {"obs": np.ascontiguousarray(obs, dtype=np.float32)})[0]


def emx_missing() -> str | None:
    """Why emx-onnx-cgen cannot be used here (None when it can)."""
    if importlib.util.find_spec("emx_onnx_cgen") is None:
        return (f"emx-onnx-cgen not installed (pip install 'tinypolicy[emx]', which pins "
                f"emx-onnx-cgen=={EMX_VERSION})")
    return None


def build_emx(onnx_path: str | Path, build_dir: str | Path, cflags: tuple[str, ...] = HOST_CFLAGS) -> Path:
    """emx-onnx-cgen's C for `onnx_path` (weights inline, no heap, batch 1), compiled with
    our optimisation flags (its own warnings are not errors) into a shared library that
    exports EMX_FUNCTION; raises RuntimeError when the tool or the compiler fails or is missing."""
    build = Path(build_dir)
    source = build / "emx_actor.c"
    cmd = [sys.executable, "-m", "emx_onnx_cgen", "compile", str(onnx_path), str(source), "--model-name", EMX_FUNCTION,
           "--large-weight-threshold", "0", "--large-temp-threshold", "0", "--input-dim", "batch=1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    library = build / "libemx.so"
    flags = [f for f in cflags if f not in WARNINGS]
    result = subprocess.run([host_compiler(), *flags, "-fPIC", "-shared", str(source), "-o", str(library), "-lm"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"compiling emx-onnx-cgen's C failed: {result.stderr.strip()[-500:]}")
    return library


class CKernels:
    """The bundle's C kernels (plus the C timing harness) compiled into one shared library
    with the project's flags, called through ctypes; `add_emx` adds emx-onnx-cgen's kernel."""

    def __init__(self, src_dir: str | Path, build_dir: str | Path, obs_dim: int, act_dim: int,
                 cflags: tuple[str, ...] = HOST_CFLAGS):
        self.obs_dim, self.act_dim, self.cflags = obs_dim, act_dim, cflags
        self.lib = ctypes.CDLL(str(compile_shared(src_dir, Path(build_dir) / "libtpactor.so", (TIMER_SOURCE,),
                                                  cflags)))
        # compile_shared compiles the kernels present: actor_int8.c only where an int8 model was given.
        self.functions = {name: getattr(self.lib, kernel.function) for name, kernel in KERNELS.items()
                          if (Path(src_dir) / kernel.source).is_file()}
        self._libraries = [self.lib]
        for fn in self.functions.values():
            fn.argtypes, fn.restype = [FLOAT_P, FLOAT_P], None
        self.lib.tp_time_calls.argtypes = [ctypes.c_void_p, FLOAT_P, ctypes.c_int, ctypes.c_int,
                                           ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]
        self.lib.tp_time_calls.restype = ctypes.c_double
        self._out = np.zeros(act_dim, np.float32)
        self._out_p = self._out.ctypes.data_as(FLOAT_P)

    def add_emx(self, onnx_path: str | Path, build_dir: str | Path) -> None:
        """Build emx-onnx-cgen's kernel of `onnx_path` and make it callable as EMX."""
        lib = ctypes.CDLL(str(build_emx(onnx_path, build_dir, self.cflags)))
        fn = getattr(lib, EMX_FUNCTION)
        fn.argtypes, fn.restype = [FLOAT_P, FLOAT_P], None
        self._libraries.append(lib)
        self.functions[EMX] = fn

    def function(self, kernel: str):
        return self.functions[kernel]

    def actions(self, obs: np.ndarray, kernel: str = "sparse") -> np.ndarray:
        """Run the kernel once per row of an observation batch."""
        obs = np.ascontiguousarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        out = np.empty((len(obs), self.act_dim), np.float32)
        fn = self.function(kernel)
        for row, target in zip(obs, out):
            fn(row.ctypes.data_as(FLOAT_P), target.ctypes.data_as(FLOAT_P))
        return out

    def policy(self, kernel: str = "sparse"):
        """obs (any float array) -> action, for rolling out in an env."""
        fn = self.function(kernel)

        def act(obs: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(obs, dtype=np.float32)
            fn(x.ctypes.data_as(FLOAT_P), self._out_p)
            return self._out.copy()

        return act

    def time_calls(self, obs: np.ndarray, calls: int, kernel: str = "sparse") -> tuple[np.ndarray, float, float]:
        """Per-call nanoseconds of `calls` calls timed inside C (cycling through `obs`), and the
        mean nanoseconds per call of two untimed loops of as many calls: independent calls (a
        throughput), and calls chained through their actions (a latency; see c_timer.c)."""
        obs = np.ascontiguousarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        per_call = np.empty(calls, np.float64)
        chained_mean = ctypes.c_double()
        address = ctypes.cast(self.function(kernel), ctypes.c_void_p)
        loop_mean = self.lib.tp_time_calls(address, obs.ctypes.data_as(FLOAT_P), len(obs), calls,
                                           per_call.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                                           ctypes.byref(chained_mean))
        return per_call, float(loop_mean), chained_mean.value
