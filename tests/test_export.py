"""Export and bench: exact dead-neuron removal, ONNX/C parity, metadata, refusals, bench schema."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.builders import sparse_actor, write_checkpoint
from tinypolicy.models import sparse_layers

ROOT = Path(__file__).resolve().parents[1]


def tinypolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinypolicy", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


# ---------------------------------------------------------------- dead-neuron removal


@pytest.mark.parametrize("sparsity", [0.9, 0.95, 0.98])
def test_dead_neuron_removal_is_exact_and_complete(sparsity):
    from tinypolicy.export.mlp import policy_from_actor
    from tinypolicy.export.prune import remove_dead_neurons

    actor = sparse_actor("td3", sparsity, obs_dim=17, act_dim=6)
    dense = policy_from_actor(actor)
    result = remove_dead_neurons(dense)
    pruned = result.policy
    rng = np.random.default_rng(0)
    obs = np.concatenate([rng.normal(size=(2000, 17)), rng.uniform(-50, 50, size=(500, 17))]).astype(np.float32)
    with torch.no_grad():
        reference = actor(torch.from_numpy(obs)).numpy()
    assert np.abs(dense(obs) - reference).max() == 0.0
    assert np.abs(pruned(obs) - reference).max() < 1e-5
    # Inputs and action outputs untouched; hidden layers only shrink; no weight appears.
    assert pruned.widths[0] == 17 and pruned.widths[-1] == 6
    assert all(p <= d for p, d in zip(pruned.widths, dense.widths))
    assert sum(pruned.nnz()) <= sum(dense.nnz())
    # Fixpoint: every remaining hidden neuron reads something and is read by something.
    for k in range(len(pruned.weights) - 1):
        assert (pruned.weights[k] != 0).any(axis=1).all()
        assert (pruned.weights[k + 1] != 0).any(axis=0).all()
    # Kept neurons are the original ones: the first layer's rows are the originals' rows.
    np.testing.assert_array_equal(pruned.weights[0], dense.weights[0][result.kept[0]])
    if sparsity == 0.98:  # ER masks this sparse always leave dead neurons to remove
        assert pruned.widths[1] < 256 and pruned.widths[2] < 256 and sum(result.folded) > 0


def _tiny_policy(weights, biases):
    from tinypolicy.export.mlp import MLPPolicy

    w = tuple(np.asarray(x, np.float32) for x in weights)
    b = tuple(np.asarray(x, np.float32) for x in biases)
    n, m = w[0].shape[1], w[-1].shape[0]
    return MLPPolicy(w, b, "relu", "tanh", np.zeros(n, np.float32), np.ones(n, np.float32),
                     -2 * np.ones(m, np.float32), 2 * np.ones(m, np.float32))


def test_constant_neurons_fold_into_next_bias_and_removal_cascades():
    from tinypolicy.export.prune import remove_dead_neurons

    # Hidden layer 1: neuron 0 live; neuron 1 has no inputs (constant relu(0.7)) but is read;
    # neuron 2 reads inputs but nobody reads it. Layer 2: neuron 1 only reads hidden-1
    # neuron 2, so it goes once neuron 2 goes (cascade).
    w0 = [[1.0, -1.0], [0.0, 0.0], [0.5, 0.5]]
    b0 = [0.1, 0.7, 0.2]
    w1 = [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]
    b1 = [0.0, 0.3]
    w2 = [[1.5, 0.0]]
    b2 = [0.1]
    policy = _tiny_policy([w0, w1, w2], [b0, b1, b2])
    result = remove_dead_neurons(policy)
    assert result.policy.widths == [2, 1, 1, 1]
    assert result.kept == [[0], [0]]
    assert result.folded == [1, 0]
    np.testing.assert_allclose(result.policy.biases[1], [2.0 * 0.7], rtol=1e-6)
    obs = np.random.default_rng(1).normal(size=(100, 2)).astype(np.float32) * 3
    assert np.abs(result.policy(obs) - policy(obs)).max() < 1e-6


def test_fully_dead_layer_gives_the_exact_constant_policy():
    from tinypolicy.export.prune import remove_dead_neurons

    policy = _tiny_policy([np.zeros((4, 3)), np.ones((2, 4)), np.ones((1, 2))],
                          [[0.5, -0.5, 1.0, 0.0], [0.1, 0.2], [0.3]])
    result = remove_dead_neurons(policy)
    assert result.policy.widths == [3, 1, 1, 1]
    assert sum(result.policy.nnz()) == 0
    obs = np.random.default_rng(2).normal(size=(10, 3)).astype(np.float32)
    assert np.abs(result.policy(obs) - policy(obs)).max() < 1e-6


def test_sac_actor_exports_its_deterministic_action():
    from tinypolicy.export.mlp import policy_from_actor

    actor = sparse_actor("sac", 0.9, hidden=(64, 64))
    policy = policy_from_actor(actor)
    assert policy.act_dim == 3 and policy.weights[-1].shape == (3, 64)
    obs = np.random.default_rng(3).normal(size=(200, 11)).astype(np.float32)
    with torch.no_grad():
        assert np.abs(policy(obs) - actor(torch.from_numpy(obs)).numpy()).max() < 1e-6


def _int8_model(policy, tmp_path, calibration):
    import onnx

    from tinypolicy.export.bundle import quantize_int8
    from tinypolicy.ondevice.onnx_mlp import save_onnx

    save_onnx(policy.onnx({"env_id": "test"}), tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration, {"env_id": "test"})
    return onnx.load(str(tmp_path / "int8.onnx"))


def _observations(n: int, dim: int, seed: int) -> np.ndarray:
    """80% ordinary observations, 20% extremes (uniform far out and at the corners of a wide box)."""
    rng = np.random.default_rng(seed)
    extremes = n // 5
    corners = np.where(rng.random((extremes // 2, dim)) < 0.5, -30.0, 30.0)
    return np.concatenate([rng.normal(size=(n - extremes, dim)), rng.uniform(-30, 30, size=(extremes - len(corners), dim)),
                           corners]).astype(np.float32)


@pytest.mark.parametrize("sparsity", [0.9, 0.95])
def test_every_c_kernel_matches_onnx_runtime_on_10000_observations(tmp_path, sparsity):
    """Sparse float and vectorised dense against ORT on actor-shaped ONNX, the int8 sparse
    kernel against ORT on its int8 model within one quantisation step; extremes included."""
    from tinypolicy.export.c_codegen import int8_output_step, int8_parity_tolerance, layer_kind, write_c_sources
    from tinypolicy.export.mlp import policy_from_actor
    from tinypolicy.export.prune import remove_dead_neurons
    from tinypolicy.export.runtimes import CKernels, ort_actions, ort_session
    from tinypolicy.ondevice.onnx_mlp import save_onnx

    dense = policy_from_actor(sparse_actor("td3", sparsity, obs_dim=17, act_dim=6))
    pruned = remove_dead_neurons(dense).policy
    obs = _observations(10_000, 17, 7)
    int8 = _int8_model(pruned, tmp_path, obs[:2000])
    write_c_sources(pruned, tmp_path / "c", dense=dense, int8_onnx=int8)
    kernels = CKernels(tmp_path / "c", tmp_path, 17, 6)
    save_onnx(pruned.onnx(), tmp_path / "pruned.onnx")
    reference = ort_actions(ort_session(tmp_path / "pruned.onnx"), obs)
    assert np.abs(kernels.actions(obs, "sparse") - reference).max() <= 1e-5
    assert np.abs(kernels.actions(obs, "dense") - reference).max() <= 1e-5
    step = int8_output_step(int8)
    int8_reference = ort_actions(ort_session(tmp_path / "int8.onnx", fuse=False), obs)
    assert 0 < step and np.abs(kernels.actions(obs, "int8") - int8_reference).max() <= int8_parity_tolerance(step)
    # The kernels differ from the float policy by quantisation, not by a bug: within a few steps on ordinary input.
    assert np.abs(kernels.actions(obs[:8000], "int8") - reference[:8000]).max() < 0.1
    # Between them the two actors run every kernel the host builds: 90% has dense layers (ER's
    # input and output) and CSC, 95% straight-line code, CSC and a narrow dense head.
    kinds = {0.9: ["dense_unrolled", "csc_unrolled", "dense"], 0.95: ["unrolled", "csc_unrolled", "dense_unrolled"]}
    assert [layer_kind(w) for w in pruned.weights] == kinds[sparsity]


def test_c_sources_compile_and_match_with_normalisation_and_clip(tmp_path):
    from dataclasses import replace

    from tinypolicy.export.c_codegen import write_c_sources
    from tinypolicy.export.mlp import policy_from_actor
    from tinypolicy.export.runtimes import CKernels

    rng = np.random.default_rng(4)
    base = policy_from_actor(sparse_actor("td3", 0.95, hidden=(32, 300)))  # > 256 outputs: uint16 indices
    policy = replace(base, output="clip", hidden_activation="tanh",
                     obs_mean=rng.normal(size=11).astype(np.float32),
                     obs_std=rng.uniform(0.5, 2, size=11).astype(np.float32))
    obs = rng.normal(size=(500, 11)).astype(np.float32) * 4
    write_c_sources(policy, tmp_path, int8_onnx=_int8_model(policy, tmp_path, obs))
    header = (tmp_path / "actor.h").read_text()
    assert "#define TP_OBS_DIM 11" in header and "#define TP_ACT_DIM 3" in header
    assert "void tp_actor_int8(const float *obs, float *actions);" in header
    int8 = (tmp_path / "actor_int8.c").read_text()
    assert "static const uint16_t L1_ROW" in int8 and "static const int8_t L1_VAL" in int8
    for name in ("actor.c", "actor_dense.c", "actor_int8.c"):
        source = (tmp_path / name).read_text()
        assert "malloc" not in source and "#include <stdlib.h>" not in source
    kernels = CKernels(tmp_path, tmp_path, 11, 3)
    assert np.abs(kernels.actions(obs) - policy(obs)).max() < 1e-5
    assert np.abs(kernels.actions(obs, "dense") - policy(obs)).max() < 1e-5


def test_c_kernels_refuse_a_hidden_activation_they_do_not_implement(tmp_path):
    from dataclasses import replace

    from tinypolicy.export.c_codegen import write_c_sources
    from tinypolicy.export.mlp import policy_from_actor

    # An MLPPolicy may hold any activation policy_onnx writes (a retrained ELU policy), the C kernels only some.
    policy = replace(policy_from_actor(sparse_actor("td3", 0.9, hidden=(16, 16))), hidden_activation="elu")
    with pytest.raises(ValueError, match="not 'elu'"):
        write_c_sources(policy, tmp_path / "c")
    assert not list((tmp_path / "c").iterdir())  # refused before any file is written


def test_int8_tolerance_is_one_step_and_exact_for_unquantised_actions():
    from tinypolicy.export.c_codegen import int8_parity_tolerance, int8_steps_apart

    step = 2.0 / 255
    assert step < int8_parity_tolerance(step) < step * 1.01
    assert int8_steps_apart(step / 2, step) == pytest.approx(0.5)
    # Actions not quantised (step 0): no grid to round to, so only equality passes, and there are no steps to count.
    assert int8_parity_tolerance(0.0) == 0.0
    assert int8_steps_apart(1e-7, 0.0) is None and int8_steps_apart(0.0, 0.0) is None


@pytest.mark.parametrize("rows_off, steps_off, passed", [
    (0, 0, True),
    (10, 6, True),      # rounding ties: a hidden code flipped by float arithmetic order, amplified
    (10, 1, True),      # within one step anywhere
    (11, 6, False),     # more rows than ties explain: a wrong kernel
    (10_000, 2, False),
])
def test_int8_parity_allows_rare_rounding_ties_only(rows_off, steps_off, passed):
    from tinypolicy.export.c_codegen import int8_rows_apart

    step = 2.0 / 255
    ort = np.random.default_rng(0).integers(-127, 128, (10_000, 3)) * step
    c = ort.copy()
    c[:rows_off, 0] += steps_off * step
    parity = int8_rows_apart(c, ort, step)
    assert parity["passed"] == passed
    assert parity["rows_beyond_one_step"] == (rows_off if steps_off > 1 else 0)
    assert parity["max_abs_error"] == pytest.approx(steps_off * step)


def test_a_missing_c_compiler_is_a_clear_error(tmp_path, monkeypatch):
    import shutil

    from tinypolicy.export import runtimes
    from tinypolicy.export.c_codegen import write_c_sources

    write_c_sources(_tiny_policy([[[1.0, 0.0]], [[2.0]]], [[0.0], [0.0]]), tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        runtimes.CKernels(tmp_path, tmp_path, 2, 1)
    # emx-onnx-cgen's C goes through the same lookup; its generator is stubbed out as if it had run.
    monkeypatch.setattr(runtimes.subprocess, "run", lambda cmd, **kwargs: subprocess.CompletedProcess(cmd, 0, "", ""))
    with pytest.raises(RuntimeError, match="no C compiler"):
        runtimes.build_emx(tmp_path / "actor.onnx", tmp_path)


def test_layer_kinds_follow_density_and_size():
    from tinypolicy.export.c_codegen import layer_kind

    rng = np.random.default_rng(0)

    def matrix(rows, cols, density):
        return (rng.random((rows, cols)) < density).astype(np.float32)

    assert layer_kind(matrix(256, 256, 1.0)) == "dense"
    assert layer_kind(matrix(256, 17, 0.5)) == "dense_unrolled"         # vector ISAs dense, Cortex-M straight-line
    assert layer_kind(matrix(256, 256, 0.01)) == "unrolled"             # small: straight-line everywhere
    assert layer_kind(matrix(256, 256, 0.05)) == "csc_unrolled"         # host: tables beat an i-cache miss
    assert layer_kind(matrix(6, 2000, 0.2)) == "csr_unrolled"
    assert layer_kind(matrix(1024, 1024, 0.05)) == "csc"                # too big to unroll anywhere
    assert layer_kind(matrix(256, 17, 0.5), compact=True) == "csc"      # the int8 kernel's float layer: bytes


def _ell_policies():
    """Three policies whose AVX-512 branch has every kernel: (a) 13-40-37-53-6 ReLU/tanh, a dense
    first layer, then ELL layers with rows not a multiple of 16, inputs not a multiple of 32,
    empty rows and an empty (block, group) cell, and the action head as rows; (b) tanh hidden
    units, a narrow hidden layer (8 outputs: rows), a clipped ELL head in the actions' order
    (40 actions: a masked last block) and normalisation; (c) 17-272-32-6, a first layer with 6 dense
    inputs and 11 sparse ones (ELL with dense inputs) and 17 blocks: two passes."""
    from tinypolicy.export.mlp import MLPPolicy

    rng = np.random.default_rng(11)

    def layer(rows, cols, density):  # weights at a trained actor's scale: unit variance in, unit variance out
        w = np.where(rng.random((rows, cols)) < density, rng.normal(size=(rows, cols)) / np.sqrt(cols * density), 0)
        return w.astype(np.float32), rng.uniform(-0.5, 0.5, rows).astype(np.float32)

    (w0, b0), (w1, b1), (w2, b2), (w3, b3) = layer(40, 13, 0.9), layer(37, 40, 0.1), layer(53, 37, 0.15), \
        layer(6, 53, 0.5)
    w1[[3, 20]] = 0
    w1[16:32, 32:] = 0
    a = MLPPolicy((w0, w1, w2, w3), (b0, b1, b2, b3), "relu", "tanh", np.zeros(13, np.float32),
                  np.ones(13, np.float32), -np.ones(6, np.float32), np.ones(6, np.float32))
    (v0, c0), (v1, c1), (v2, c2) = layer(70, 9, 0.1), layer(8, 70, 0.3), layer(40, 8, 0.1)
    b = MLPPolicy((v0, v1, v2), (c0, c1, c2), "tanh", "clip", rng.normal(size=9).astype(np.float32),
                  rng.uniform(0.5, 2, 9).astype(np.float32), -rng.uniform(0.5, 2, 40).astype(np.float32),
                  rng.uniform(0.5, 2, 40).astype(np.float32))
    (u0, d0), (u1, d1), (u2, d2) = layer(272, 17, 0.05), layer(32, 272, 0.1), layer(6, 32, 0.5)
    u0[:, 11:] = layer(272, 6, 1.0)[0]
    c = MLPPolicy((u0, u1, u2), (d0, d1, d2), "relu", "tanh", np.zeros(17, np.float32), np.ones(17, np.float32),
                  -np.ones(6, np.float32), np.ones(6, np.float32))
    return a, b, c


# branch -> (its name in host_branch, flags that make an x86 host's compiler take it)
BRANCHES = {"avx512": ("AVX-512", ()), "avx2": ("AVX2", ("-mno-avx512f",)),
            "portable": ("portable", ("-mno-avx512f", "-mno-avx2"))}
CROSS_MARCH = {"avx512": "-march=x86-64-v4", "avx2": "-march=x86-64-v3", "portable": "-march=x86-64"}


# Each vector branch's layer kinds for the three `_ell_policies`, and (AVX-512, AVX2) x (whether a layer has dense
# inputs, dot-product rows): between them the policies cover every kernel of both branches.
KINDS = {"avx512": [["dense", "ell", "ell", "rows"], ["ell", "rows", "ell"], ["ell", "ell", "rows"]],
         "avx2": [["dense", "ell", "ell", "rows"], ["ell", "ell", "ell"], ["ell", "ell", "rows"]]}
FEATURES = [[(False, True), (False, False)], [(False, True), (True, True)], [(True, False), (True, False)]]


@pytest.mark.parametrize("branch,packed", [("avx512", False), ("avx512", True), ("avx2", False), ("avx2", True),
                                           ("portable", False)])
def test_sparse_kernel_matches_pytorch_in_each_branch(tmp_path, monkeypatch, branch, packed):
    """actor.c's vector branches, AVX-512 and AVX2 (permuted, padded ELL layers, slots of several groups merged,
    long rows as dot products; 32-bit ELL indices while the tables fit the L1 budget, packed fields beyond it),
    and its portable #else branch (what Cortex-M and aarch64 build) all compute the policy."""
    from dataclasses import replace

    from tinypolicy.export import c_codegen
    from tinypolicy.export.c_codegen import HOST_CFLAGS, compile_shared, host_branch, sparse_source, write_c_sources
    from tinypolicy.export.runtimes import CKernels

    name, flags = BRANCHES[branch]
    runs = host_branch((*HOST_CFLAGS, *flags)) == name
    cross_flags = (*(f for f in HOST_CFLAGS if f != "-march=native"), CROSS_MARCH[branch])
    assert runs or host_branch(cross_flags) == name
    if packed and not runs:
        pytest.skip(f"the host has no {name}: its branch is compiled with wide indices only")
    if packed:
        packed_isas = tuple(replace(isa, l1_bytes=0) for isa in c_codegen.VECTOR_ISAS)
        monkeypatch.setattr(c_codegen, "VECTOR_ISAS", packed_isas)
    merged = 0
    for k, policy in enumerate(_ell_policies()):
        write_c_sources(policy, tmp_path / str(k))
        source = (tmp_path / str(k) / "actor.c").read_text()
        assert source == sparse_source(policy)  # deterministic
        assert f"(AVX-512: {'/'.join(KINDS['avx512'][k])}; AVX2: {'/'.join(KINDS['avx2'][k])})" in source
        assert ("_IDX[" in source) == (not packed)
        assert ("_PACKED[" in source) == packed
        avx512, avx2 = source.split(c_codegen.AVX2.guard)
        assert [("dense inputs" in text, "dot-product rows" in text) for text in (avx512, avx2)] == FEATURES[k]
        merged += avx512.count("_mm512_mask_mov_ps(_mm512_permutex2var_ps(") if branch == "avx512" else \
            avx2.count("_mm256_blend_ps(_mm256_permutevar8x32_ps(")
        if not runs:  # it can still be compiled, for a machine that has the ISA
            compile_shared(tmp_path / str(k), tmp_path / str(k) / "actor.so", cflags=cross_flags)
            continue
        kernels = CKernels(tmp_path / str(k), tmp_path / str(k), policy.obs_dim, policy.act_dim,
                           (*HOST_CFLAGS, *flags))
        obs = _observations(2000, policy.obs_dim, k)
        assert np.abs(kernels.actions(obs) - policy(obs)).max() < 1e-5, (k, branch)
    assert merged or branch == "portable"  # slots of several groups sharing one weight vector were tested
    if not runs:
        pytest.skip(f"the host has no {name}: the branch compiled, not run")


@pytest.mark.parametrize("branch", ["avx512", "avx2"])
def test_vector_tanh_is_within_its_ulp_bound_on_a_sweep_of_floats(tmp_path, branch):
    """tp_tanh (each vector branch's tanh) against tanh in double: within 6.1 ulp on every
    4096th float up to 10 and on the floats around the switch to +-1 at 8, odd, +-1 beyond, NaN kept."""
    from tinypolicy.export.c_codegen import AVX2, AVX512, HOST_CFLAGS, host_branch, host_compiler

    name, flags = BRANCHES[branch]
    if host_branch((*HOST_CFLAGS, *flags)) != name:
        pytest.skip(f"the host has no {name}")
    isa = {"avx512": AVX512, "avx2": AVX2}[branch]
    apply = "".join(f"    {isa.op('storeu_ps', f'out + {k}', 'tp_tanh(' + isa.op('loadu_ps', f'in + {k}') + ')')};\n"
                    for k in range(0, 16, isa.lanes))
    program = tmp_path / "tanh.c"
    program.write_text("#include <math.h>\n#include <stdint.h>\n#include <stdio.h>\n#include <string.h>\n"
                       "#include <immintrin.h>\n" + isa.tanh
                       + "static void tanh16(float *out, const float *in)\n{\n" + apply + "}\n" + r"""
static double ulps(float x, float y)
{
    const double exact = tanh((double)x);
    const float near = (float)fabs(exact);
    return fabs(y - exact) / (nextafterf(near, INFINITY) - near);
}
int main(void)
{
    static const float special[8] = {0.0f, -0.0f, 20.0f, -20.0f, INFINITY, -INFINITY, NAN, -1e30f};
    const float limit = 10.0f, edge = 8.0f;
    uint32_t bits, top, start;
    float x[16], y[16];
    double worst = 0;
    int k, odd = 1;
    memcpy(&top, &limit, 4);
    memcpy(&start, &edge, 4);
    for (bits = 0; bits < top; bits += 16 * 4096) {
        for (k = 0; k < 16; ++k) { uint32_t b = bits + 4096u * k; memcpy(&x[k], &b, 4); }
        tanh16(y, x);
        for (k = 0; k < 16; ++k) worst = fmax(worst, ulps(x[k], y[k]));
        for (k = 0; k < 16; ++k) x[k] = -x[k];
        tanh16(x, x);
        for (k = 0; k < 16; ++k) odd &= x[k] == -y[k];
    }
    for (bits = start - 4096; bits < start + 4096; bits += 16) {
        for (k = 0; k < 16; ++k) { uint32_t b = bits + (uint32_t)k; memcpy(&x[k], &b, 4); }
        tanh16(y, x);
        for (k = 0; k < 16; ++k) worst = fmax(worst, ulps(x[k], y[k]));
    }
    for (k = 0; k < 16; ++k) x[k] = special[k % 8];
    tanh16(y, x);
    printf("%.3f %d %g %g %g %g %g %g %d %g\n", worst, odd, y[0], y[1], y[2], y[3], y[4], y[5], isnan(y[6]), y[7]);
    return 0;
}
""")
    subprocess.run([host_compiler(), *HOST_CFLAGS, *flags, str(program), "-o", str(tmp_path / "tanh"), "-lm"],
                   check=True)
    worst, odd, *values = subprocess.run([str(tmp_path / "tanh")], capture_output=True, text=True,
                                         check=True).stdout.split()
    assert float(worst) <= 6.1 and odd == "1"
    assert [float(v) for v in values] == [0.0, 0.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]  # the 1 says NaN stayed NaN


@pytest.mark.parametrize("target", ["host", "cortex-m4", "cortex-m7", "aarch64"])
def test_generated_c_compiles_warning_free_for_every_target(tmp_path, target):
    """-Wall -Wextra -Werror -pedantic for the host, Cortex-M4/M7 and aarch64 (cross compilers
    where installed), on an actor with every layer kind."""
    import shutil

    from tinypolicy.export.c_codegen import layer_kind, write_c_sources
    from tinypolicy.export.mlp import policy_from_actor
    from tinypolicy.export.settings import TARGETS

    compiler = ["gcc", "-march=native"] if target == "host" else [f"{TARGETS[target].prefix}gcc",
                                                                   *TARGETS[target].cflags]
    if shutil.which(compiler[0]) is None:
        pytest.skip(f"{compiler[0]} not installed (make embedded-deps)")
    policy = policy_from_actor(sparse_actor("td3", 0.95, hidden=(256, 256), obs_dim=17, act_dim=6))
    kinds = {layer_kind(w) for w in policy.weights}
    write_c_sources(policy, tmp_path, int8_onnx=_int8_model(policy, tmp_path, _observations(500, 17, 1)))
    for name in ("actor.c", "actor_dense.c", "actor_int8.c"):
        proc = subprocess.run([*compiler, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c",
                               str(tmp_path / name), "-o", str(tmp_path / f"{name}.o")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (kinds, proc.stderr[-2000:])


# ---------------------------------------------------------------- the bundle, end to end


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A 95%-sparse TD3 actor exported through the CLI with the default 10,000 parity
    observations (Hopper-v5 rollouts and extremes)."""
    folder = tmp_path_factory.mktemp("export")
    ckpt = write_checkpoint(folder / "checkpoint.pt", sparse_actor("td3", 0.95))
    result = tinypolicy("export", str(ckpt), "--out", str(folder / "bundle"), "--episodes", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    return folder / "bundle"


@pytest.mark.integration
def test_export_parity_files_and_metadata(bundle):
    import onnx
    import onnxruntime as ort

    from tinypolicy.export.bundle import load_bundle
    from tinypolicy.export.c_codegen import int8_parity_tolerance

    manifest = load_bundle(bundle)
    parity = manifest["parity"]
    assert parity["observations"] == 10_000 and parity["extreme_observations"] == 2_000
    assert parity["passed"] and parity["within_tolerance"]
    assert set(parity["max_abs_error"]) == {"torch_pruned", "onnx", "onnx_dense", "c_sparse", "c_dense"}
    assert max(parity["max_abs_error"].values()) <= 1e-5
    # The int8 C kernel against ONNX Runtime on actor.int8.onnx, the same 10,000 observations.
    c_int8 = manifest["int8"]["c_kernel_vs_onnx"]
    assert c_int8["passed"] and c_int8["max_abs_error"] <= int8_parity_tolerance(c_int8["quantisation_step"])
    for name in ("actor.onnx", "actor.dense.onnx", "actor.int8.onnx"):
        onnx.checker.check_model(str(bundle / name), full_check=True)

    model = onnx.load(str(bundle / "actor.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    layers = manifest["layers"]
    assert meta["env_id"] == "Hopper-v5" and meta["obs_dim"] == "11" and meta["act_dim"] == "3"
    assert json.loads(meta["action_low"]) == [-1.0] * 3
    assert json.loads(meta["layer_nnz"]) == [l["nnz"] for l in layers]
    assert int(meta["nnz"]) == sum(l["nnz"] for l in layers)
    assert int(meta["dense_macs"]) == 11 * 256 + 256 * 256 + 256 * 3
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight")]
    assert int(meta["structural_macs"]) == sum(w.size for w in weights)
    assert int(meta["nonzero_macs"]) == sum(int(np.count_nonzero(w)) for w in weights)
    assert abs(np.mean(json.loads(meta["layer_sparsity"])) - np.mean([l["sparsity"] for l in layers])) < 1e-6
    assert len(meta["checkpoint_sha256"]) == 64 and meta["tinypolicy_version"]

    # Batch 1 and a dynamic batch both run; the int8 error and return are reported.
    session = ort.InferenceSession(str(bundle / "actor.onnx"), providers=["CPUExecutionProvider"])
    obs = np.load(bundle / "observations.npy")
    single = session.run(["actions"], {"obs": obs[:1]})[0]
    batch = session.run(["actions"], {"obs": obs[:7]})[0]
    assert single.shape == (1, 3) and batch.shape == (7, 3)
    np.testing.assert_allclose(single[0], batch[0], atol=1e-6)
    assert 0 < manifest["int8"]["max_abs_error_rollouts"] < 0.5
    assert np.isfinite(manifest["int8"]["int8_return_mean"])


@pytest.mark.integration
def test_bench_writes_its_schema(bundle, tmp_path):
    from tinypolicy.export.bench import C_VARIANTS, DENSE_VARIANTS

    result = tinypolicy("bench", str(bundle), "--out", str(tmp_path), "--calls", "300", "--c-calls", "3000",
                        "--rounds", "2", "--episodes", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    bench = json.loads((tmp_path / "bench.json").read_text())
    variants = ("pytorch_eager", "ort_dense", "ort_pruned", "ort_int8", "c_sparse", "c_dense", "c_int8")
    assert set(bench["variants"]) >= set(variants)
    for name in (*bench["variants"], "ort_identity"):
        lat = bench["latency"][name]
        assert 0 < lat["p50_us"] <= lat["p99_us"]
    for name in ("c_sparse", "c_dense", "c_int8"):
        lat = bench["latency"][name]
        assert lat["loop_mean_us"] > 0 and lat["chained_mean_us"] > 0 and lat["ctypes"]["p50_us"] > 0
    # emx-onnx-cgen is measured where installed, else skipped with its reason.
    assert ("emx_dense" in bench["variants"]) != ("emx_dense" in bench["skipped"])
    assert "-O3" in bench["machine"]["c_flags"] and "-march=native" in bench["machine"]["c_flags"]
    assert bench["machine"]["c_branch"] in ("AVX-512", "AVX2", "portable")  # the host's branch of actor.c
    # Each comparison picks the dense variant with the lowest latency among those it covers
    # (every one measured by p50; the C kernels by each clock-free loop mean) and divides by c_sparse's.
    assert set(bench["speedup"]) == {"p50", "c_loop_mean", "c_chained_mean"}
    ideal = bench["macs"]["dense"] / bench["macs"]["nonzero"]
    c_dense_variants = [v for v in DENSE_VARIANTS if v in C_VARIANTS]
    for comparison, key, candidates in (("p50", "p50_us", DENSE_VARIANTS),
                                        ("c_loop_mean", "loop_mean_us", c_dense_variants),
                                        ("c_chained_mean", "chained_mean_us", c_dense_variants)):
        latency = {v: bench["latency"][v][key] for v in candidates if v in bench["variants"]}
        speedup = bench["speedup"][comparison]
        assert latency[speedup["fastest_dense"]] == min(latency.values()), (comparison, latency)
        ratio = latency[speedup["fastest_dense"]] / bench["latency"]["c_sparse"][key]
        assert speedup["c_sparse_vs_fastest_dense"] == pytest.approx(ratio)
        assert speedup["ideal"] == pytest.approx(ideal)
        assert speedup["fraction_of_ideal"] == pytest.approx(ratio / ideal)
        assert speedup["goal_half_of_ideal_met"] == (ratio >= ideal / 2)
    assert set(bench["macs"]) == {"dense", "structural", "nonzero"}
    assert bench["macs"]["nonzero"] <= bench["macs"]["structural"] <= bench["macs"]["dense"]
    assert set(bench["file_bytes"]) >= {"onnx", "onnx_int8", "c_sparse", "c_dense"}
    assert bench["parameter_bytes"]["sparse_fp32"] < bench["parameter_bytes"]["dense_fp32"]
    # fp32 variants compute the same policy: identical episodes up to float round-off.
    fp32 = [bench["returns"][n]["mean"] for n in bench["variants"] if "int8" not in n]
    assert max(fp32) - min(fp32) <= 1e-3 * max(1.0, abs(fp32[0]))
    assert (tmp_path / "bench.md").read_text().startswith("# Export benchmark")
    assert (tmp_path / "bench.png").stat().st_size > 10_000


# ---------------------------------------------------------------- refusals


def _corrupt(kind: str, path: Path) -> Path:
    if kind == "missing":
        return path / "nope.pt"
    if kind == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(3)}, path / "other.pt")
        return path / "other.pt"
    actor = sparse_actor("td3", 0.9, hidden=(32, 32))
    layer = sparse_layers(actor)[1]
    with torch.no_grad():
        if kind == "weights_outside_mask":
            layer.weight[layer.mask == 0] = 0.5
        elif kind == "nan":
            layer.bias[0] = float("nan")
        elif kind == "mask_not_binary":
            layer.mask[layer.mask == 0] = 0.5
    ckpt = write_checkpoint(path / "ckpt.pt", actor, hidden=(32, 32))
    if kind == "truncated":
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    return ckpt


@pytest.mark.parametrize("kind,message", [
    ("missing", "does not exist"), ("truncated", "not a valid tinypolicy checkpoint"),
    ("not_a_checkpoint", "not a tinypolicy checkpoint"), ("weights_outside_mask", "nonzero outside their mask"),
    ("nan", "NaN"), ("mask_not_binary", "not binary")])
def test_bad_checkpoints_are_refused(kind, message, tmp_path):
    from tinypolicy.export.bundle import export_bundle
    from tinypolicy.ondevice.errors import UserError

    with pytest.raises(UserError, match=message):
        export_bundle(_corrupt(kind, tmp_path), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "export.json").exists()


def test_cli_refusal_is_one_line_with_status_2(tmp_path):
    result = tinypolicy("export", str(_corrupt("truncated", tmp_path)), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "error:" in result.stderr


@pytest.mark.integration
def test_a_bundle_of_another_checkpoint_is_never_replaced(bundle, tmp_path):
    before = {path.name: path.read_bytes() for path in bundle.iterdir() if path.is_file()}
    other = write_checkpoint(tmp_path / "other.pt", sparse_actor("td3", 0.95, seed=1))
    result = tinypolicy("export", str(other), "--out", str(bundle), "--quiet")
    assert result.returncode == 2 and "export bundle of another checkpoint" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {path.name: path.read_bytes() for path in bundle.iterdir() if path.is_file()} == before


@pytest.mark.integration
def test_changed_bundle_file_is_refused(bundle, tmp_path):
    import shutil

    from tinypolicy.export.bundle import load_bundle
    from tinypolicy.ondevice.errors import UserError

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    source = (copy / "actor.c").read_text()
    (copy / "actor.c").write_text(source[: len(source) // 2])
    with pytest.raises(UserError, match="truncated or was changed"):
        load_bundle(copy)
    (copy / "export.json").unlink()
    result = tinypolicy("bench", str(copy))
    assert result.returncode == 2 and "not an export bundle" in result.stderr


@pytest.mark.integration
def test_parity_catches_a_wrong_kernel(tmp_path, monkeypatch):
    """A C kernel whose bias is off by 1e-3 fails the export; the manifest says why."""
    import tinypolicy.export.bundle as bundle_module
    from tinypolicy.export.bundle import export_bundle
    from tinypolicy.ondevice.errors import UserError

    real = bundle_module.write_c_sources

    def off_by_a_bit(policy, out_dir, dense=None, int8_onnx=None):
        biases = list(policy.biases)
        biases[-1] = biases[-1] + np.float32(1e-3)
        return real(policy.with_layers(policy.weights, biases), out_dir, dense=dense, int8_onnx=int8_onnx)

    monkeypatch.setattr(bundle_module, "write_c_sources", off_by_a_bit)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", sparse_actor("td3", 0.95, hidden=(64, 64)), hidden=(64, 64))
    with pytest.raises(UserError, match="parity check failed: c_sparse"):
        export_bundle(ckpt, tmp_path / "out", parity_samples=200, episodes=1, progress=False)
    parity = json.loads((tmp_path / "out" / "export.json").read_text())["parity"]
    assert not parity["passed"] and parity["max_abs_error"]["c_dense"] < 1e-5


def test_narrow_network_compiles_and_matches(tmp_path):
    from tinypolicy.export.c_codegen import write_c_sources
    from tinypolicy.export.mlp import policy_from_actor
    from tinypolicy.export.runtimes import CKernels

    actor = sparse_actor("td3", 0.5, hidden=(8, 8), obs_dim=5, act_dim=2)
    policy = policy_from_actor(actor)
    write_c_sources(policy, tmp_path)
    obs = np.random.default_rng(5).normal(size=(200, 5)).astype(np.float32)
    kernels = CKernels(tmp_path, tmp_path, 5, 2)
    for kernel in ("sparse", "dense"):
        assert np.abs(kernels.actions(obs, kernel) - policy(obs)).max() < 1e-6


def test_a_dense_int8_layer_with_32_bit_pointers_compiles_and_matches(tmp_path):
    """A 256x256 quantised layer with every weight nonzero needs uint32_t pointers (> 65,535 entries)."""
    from tinypolicy.export.c_codegen import int8_output_step, int8_parity_tolerance, write_c_sources
    from tinypolicy.export.mlp import policy_from_actor
    from tinypolicy.export.runtimes import CKernels, ort_actions, ort_session

    policy = policy_from_actor(sparse_actor("td3", 0.0, hidden=(256, 256), obs_dim=11, act_dim=3))
    weights = list(policy.weights)
    weights[1] = np.where(weights[1] >= 0, 0.05, -0.05).astype(np.float32)  # no weight quantises to 0
    policy = policy.with_layers(weights, policy.biases)
    obs = np.random.default_rng(6).normal(size=(300, 11)).astype(np.float32)
    int8 = _int8_model(policy, tmp_path, obs)
    write_c_sources(policy, tmp_path, int8_onnx=int8)
    assert "uint32_t" in (tmp_path / "actor_int8.c").read_text()
    kernels = CKernels(tmp_path, tmp_path, 11, 3)
    assert np.abs(kernels.actions(obs) - policy(obs)).max() < 1e-5
    reference = ort_actions(ort_session(tmp_path / "int8.onnx", fuse=False), obs)
    assert np.abs(kernels.actions(obs, "int8") - reference).max() <= int8_parity_tolerance(int8_output_step(int8))


def test_a_checkpoint_with_nan_weights_is_refused_and_a_run_folder_is_read(tmp_path, capsys):
    """`evaluate` never prints NaN (not JSON): a diverged actor is refused when it is built; and
    given the run folder, it reads the folder's checkpoint.pt."""
    from tinypolicy.pipeline.cli import main

    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "checkpoint.pt", sparse_actor("td3", 0.9, hidden=(16, 16)), hidden=(16, 16))
    assert main(["evaluate", str(run), "--episodes", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 1 and np.isfinite(result["mean_return"])

    actor = sparse_actor("td3", 0.9, hidden=(16, 16))
    with torch.no_grad():
        sparse_layers(actor)[0].weight[sparse_layers(actor)[0].mask == 1] = float("inf")
    write_checkpoint(run / "checkpoint.pt", actor, hidden=(16, 16))
    assert main(["evaluate", str(run), "--episodes", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"{run / 'checkpoint.pt'}: actor" in err and "NaN or infinite" in err


def _small_bundle(folder: Path) -> Path:
    """A bundle that `load_bundle` accepts: real 11 -> 3 ONNX actors and observations, placeholder
    C sources (nothing checks their content but their hashes)."""
    from tinypolicy.export.bundle import FILES, FORMAT, MANIFEST, VERSION
    from tinypolicy.ondevice.artefact import sha256_file, write_json
    from tinypolicy.ondevice.onnx_mlp import policy_onnx, save_onnx

    rng = np.random.default_rng(0)
    model = policy_onnx([rng.normal(size=(8, 11)), rng.normal(size=(3, 8))], [np.zeros(8), np.zeros(3)], "relu",
                        "tanh", np.zeros(11), np.ones(11), -np.ones(3), np.ones(3), {"env_id": "Hopper-v5"})
    folder.mkdir()
    for key, name in FILES.items():
        if key.startswith("onnx"):
            save_onnx(model, folder / name)
        elif key == "observations":
            np.save(folder / name, rng.normal(size=(20, 11)).astype(np.float32))
        else:
            (folder / name).write_text(f"placeholder for {name}\n")
    files = {key: {"name": name, "bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
             for key, name in FILES.items()}
    write_json(folder / MANIFEST, {"format": FORMAT, "version": VERSION, "env_id": "Hopper-v5", "obs_dim": 11,
                                   "act_dim": 3, "action_low": [-1.0] * 3, "action_high": [1.0] * 3,
                                   "parity": {"failure_threshold": 1e-5}, "files": files,
                                   "macs": {"dense": 112, "structural": 112, "nonzero": 112}})
    return folder


@pytest.mark.parametrize("edit, message", [
    ({"obs_dim": 12}, "export.json records obs_dim 12 where actor.onnx has 11: it was edited"),
    ({"act_dim": 2, "env_id": "Walker2d-v5"},
     "records env_id 'Walker2d-v5' where actor.onnx has 'Hopper-v5', act_dim 2 where actor.onnx has 3"),
    ({"action_high": [1.0, 1.0]}, "action_low and action_high must hold act_dim 3 values each"),
])
def test_a_manifest_that_disagrees_with_its_onnx_is_refused_by_bench_and_embedded(edit, message, tmp_path, capsys,
                                                                                  monkeypatch):
    from tinypolicy.export.bundle import MANIFEST, load_bundle
    from tinypolicy.ondevice.errors import UserError
    from tinypolicy.pipeline.cli import main

    monkeypatch.setattr("tinypolicy.export.embedded.missing_tools", lambda target: [])  # the bundle is what is checked
    bundle = _small_bundle(tmp_path / "bundle")
    assert load_bundle(bundle)["obs_dim"] == 11
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps(manifest | edit))
    with pytest.raises(UserError, match=message):
        load_bundle(bundle)
    for command in (["bench", str(bundle), "--out", str(tmp_path / "bench")], ["embedded", str(bundle)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (command, err)
    assert not (tmp_path / "bench").exists() and not (bundle / "embedded").exists()


def _no_work(*args, **kwargs):
    raise AssertionError("the command started working before checking its output")


@pytest.mark.parametrize("command", ["train", "export", "bench", "distill", "generalise", "ad collect"])
@pytest.mark.parametrize("place", ["a file", "under a file"])
def test_commands_refuse_an_output_they_cannot_write_before_any_work(command, place, tmp_path, monkeypatch, capsys):
    from tinypolicy.ondevice.dataset import Dataset, save_dataset
    from tinypolicy.pipeline.cli import main

    (tmp_path / "file").write_text("keep")
    out = str(tmp_path / "file" if place == "a file" else tmp_path / "file" / "out")
    for target in ("tinypolicy.pipeline.train.Trainer", "tinypolicy.export.bundle.rollout_observations",
                   "tinypolicy.export.bench.ort_session", "tinypolicy.pipeline.distill.expert_rollouts",
                   "tinypolicy.pipeline.generalise.PopulationEvaluator", "tinypolicy.pipeline.ad.q_learning"):
        monkeypatch.setattr(target, _no_work)
    rng = np.random.default_rng(0)
    save_dataset(Dataset("Hopper-v5", rng.normal(size=(8, 11)), rng.normal(size=(8, 3)), np.zeros(11), np.ones(11),
                         -np.ones(3), np.ones(3)), tmp_path / "dataset")
    argv = {"train": ["train", "--env", "Pendulum-v1", "--out", out],
            "export": ["export", str(write_checkpoint(tmp_path / "ckpt.pt", sparse_actor("td3", 0.9, hidden=(16, 16)),
                                                      hidden=(16, 16))), "--out", out],
            "bench": ["bench", str(_small_bundle(tmp_path / "bundle")), "--out", out],
            "distill": ["distill", "--env", "Pendulum-v1", "--out", out],
            "generalise": ["generalise", str(tmp_path / "dataset"), "--env", "Hopper-v5", "--out", out],
            "ad collect": ["ad", "collect", "--out", out]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"tinypolicy: error: cannot create output folder {out}: {tmp_path / 'file'} is a file, not a folder\n"
    assert (tmp_path / "file").read_text() == "keep"


def test_a_full_disk_during_an_embedded_build_is_one_line_and_leaves_no_build_folder(tmp_path, monkeypatch, capsys):
    import errno

    from tinypolicy.pipeline.cli import main

    def full_disk(out):
        (out / "insn_count_plugin.so").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "insn_count_plugin.so"))

    monkeypatch.setattr("tinypolicy.export.embedded.missing_tools", lambda target: [])
    monkeypatch.setattr("tinypolicy.export.embedded.build_plugin", full_disk)
    bundle = _small_bundle(tmp_path / "bundle")
    assert main(["embedded", str(bundle), "--target", "cortex-m4", "--quiet"]) == 1
    err = capsys.readouterr().err
    written = bundle / "embedded" / ".cortex-m4.tmp" / "insn_count_plugin.so"
    assert err == f"tinypolicy: error: {written}: No space left on device\n"
    assert list((bundle / "embedded").iterdir()) == []


def test_save_actor_writes_a_small_actor_only_checkpoint_and_never_replaces_one(tmp_path):
    """benchmarks.export_docs save-actor: what the benchmark docs commit from a training run."""
    from benchmarks.export_docs import ACTOR_FILE, ACTOR_INFO, committed_actors, save_actor
    from tinypolicy.checkpoint import load_checkpoint
    from tinypolicy.ondevice.errors import UserError

    actor = sparse_actor("td3", 0.98)
    run = tmp_path / "run"
    run.mkdir()
    source = write_checkpoint(run / "checkpoint.pt", actor)
    (run / "eval.json").write_text(json.dumps({"mean_return": 1234.5}))
    saved = save_actor(run, "hopper-test", root=tmp_path / "actors")
    ckpt = load_checkpoint(saved)
    assert "critic" not in ckpt.data and ckpt.steps_done == 1234
    for mine, theirs in zip(sparse_layers(ckpt.build_actor()), sparse_layers(actor)):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.mask, theirs.mask)
    assert saved.stat().st_size < source.stat().st_size / 2
    info = json.loads((saved.parent / ACTOR_INFO).read_text())
    assert info["trained"] and info["eval"] == {"mean_return": 1234.5} and len(info["source_sha256"]) == 64
    assert committed_actors(tmp_path / "actors") == {"hopper-test": tmp_path / "actors" / "hopper-test" / ACTOR_FILE}
    with pytest.raises(UserError, match="exists; remove it first"):
        save_actor(run, "hopper-test", root=tmp_path / "actors")
    with pytest.raises(UserError, match="no committed actor nope"):
        committed_actors(tmp_path / "actors", ["nope"])


def test_slot_cost_counts_the_slots_of_the_avx2_branch_only(tmp_path):
    """benchmarks.slot_cost reads the AVX2 branch up to its own #else, past the #if blocks nested in it,
    and sorts its slots (one statement each) by their number of gathers."""
    from benchmarks.slot_cost import FMA, GATHER, avx2_branch, count, other_multiply_adds, slot_kinds

    merged = f"c = _mm256_fmadd_ps(_mm256_blend_ps({GATHER}x, i), {GATHER}y, i), 3), w, c);"
    source = "\n".join(["#if defined(__AVX512F__)", f"a = {GATHER}x, i);", "#elif defined(__AVX2__) && defined(__FMA__)",
                        "#if defined(__GNUC__)", "#define A 1", "#else", "#define A 2", "#endif",
                        f"b = {GATHER}x, i);", merged, "#else", f"d = {GATHER}x, i);", "#endif"])
    branch = avx2_branch(source)
    assert "#define A 2" in branch and "d =" not in branch and "a =" not in branch
    assert slot_kinds(branch) == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="no AVX2 branch"):
        avx2_branch("#if defined(__AVX512F__)\n#endif")
    with pytest.raises(ValueError, match="a slot of 5 gathers"):
        slot_kinds(GATHER * 5)
    loops = "\n".join(["{", "for (j = 0; j < 17; ++j) {", f"a = {FMA}w, x, a); b = {FMA}v, x, b);",
                       "for (j = 0; j < 3; ++j) {", f"c = {FMA}w, x, c);", "}", "}", f"d = {FMA}w, x, d);", merged, "}"])
    assert other_multiply_adds(loops) == 17 * 2 + 17 * 3 + 1  # the slot's multiply-add is the slot's

    actor = tmp_path / "actor.pt"
    write_checkpoint(actor, sparse_actor("td3", 0.9))
    counts = count(actor, tmp_path / "c")
    kinds, source = counts["slots_by_gathers"], (tmp_path / "c" / "actor.c").read_text()
    # every gather of that intrinsic is in the AVX2 branch (the others gather with others), each in one slot
    assert kinds[0] > 0 and sum(k * n for k, n in enumerate(kinds, 1)) == source.count(GATHER)
    assert counts["other_multiply_adds"] >= 3 * 256 / 8  # at least the action head's, a dense layer of 3 x 256


def test_slot_cost_probe_builds_with_the_kernels_flags_and_times_every_mix(tmp_path):
    from benchmarks.slot_cost import MAX_GATHERS, PROBE
    from tinypolicy.export.c_codegen import HOST_CFLAGS, host_branch, host_compiler

    if host_branch() not in ("AVX2", "AVX-512"):
        pytest.skip(f"the probe is AVX2 code; this host compiles actor.c's {host_branch()} branch")
    subprocess.run([host_compiler(), *HOST_CFLAGS, str(PROBE), "-o", str(tmp_path / "probe")], check=True)
    timings = json.loads(subprocess.run([str(tmp_path / "probe"), "1000"], check=True, capture_output=True,
                                        text=True).stdout)
    assert len(timings["slot_ns"]) == MAX_GATHERS
    assert all(t > 0 for t in [timings["fma_ns"], timings["permute_ns"], timings["slot_and_2_fma_ns"],
                               timings["hardware_gather_slot_ns"], *timings["slot_ns"]])
