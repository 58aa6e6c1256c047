"""C99 source for an `MLPPolicy`: a sparse kernel, a dense reference and an int8 sparse kernel.

API of the generated files (stable: firmware is built around it):

    actor.h        #define TP_OBS_DIM n, #define TP_ACT_DIM m
                   void tp_actor(const float *obs, float *actions);        sparse, actor.c
                   void tp_actor_dense(const float *obs, float *actions);  dense, actor_dense.c
                   void tp_actor_int8(const float *obs, float *actions);   int8 sparse, actor_int8.c

All take observations and write actions in env units (normalisation and action scaling
are inside). No malloc, no mutable globals except static scratch buffers (so the
functions are not reentrant), const weight tables the linker places in flash, and only
tanhf from <math.h>.

Each layer gets the kernel that suits its density and size (`layer_kind`), and where
the best choice differs between vector ISAs (host, aarch64) and Cortex-M's scalar FPU,
both are generated under `#ifdef TP_SCALAR_FPU` (set from the compiler's target macros):

- dense (and every layer of the dense reference): on vector ISAs the weights transposed,
  blocks of TP_BLOCK outputs accumulated over all inputs (acc[0..B) += W[j, block] * x[j]),
  which compilers vectorise without reassociating sums (a row-major dot product is a
  serial chain unless the compiler may reorder it); layers with few outputs (the action
  head) are row dot products with TP_LANES interleaved partial sums for every row at
  once. On Cortex-M blocks of 8 outputs stay in registers for the whole pass over the
  inputs (one input load per 8 multiply-adds: ~2.6 instructions per MAC).
- unrolled: straight-line code, one statement per output, the weights as constants in
  the code: no index loads and no loop branches (~3 instructions per nonzero on Cortex-M),
  at the price of flash: about 16 bytes per nonzero against 5 for tables. On the host
  only small layers, since large ones stop fitting the instruction cache.
- CSC (sparse, many outputs): one compressed column per input, scattered into the
  outputs; an input from a ReLU layer that is zero skips its whole column, so about half
  of a ReLU layer's weights are never read.
- CSR (sparse, at most ROW_WISE_MAX_ROWS outputs): row-wise with four partial sums, since
  scattering into a handful of accumulators chains every update through memory.

Activations are applied where each output is formed, not in a second pass. Indices are
uint8_t for dimensions up to 256 and pointers the smallest type that holds the nonzero
count. The int8 kernel keeps tables everywhere: it is the compact one.

On x86 actor.c has a second implementation, one branch per vector ISA (`VectorIsa`: `#if`
AVX-512, `#elif` AVX2 with FMA), with the portable one above as their #else: every other target
(Cortex-M, aarch64, older x86) compiles exactly the code it compiled before. Both branches come
from one generator; the AVX2 one has 8-float registers, slots that gather from one register of 8
inputs (_mm256_permutevar8x32_ps), 3-bit packed indices, and fewer accumulators per pass (16
registers). The design and its measurements below are the AVX-512 dev box's. CSC was the weak spot there: on the
90% HalfCheetah actor (17-252-256-6) its zero-input skip mispredicts on rollout inputs, and
the 256 x 252 layer (3,635 nonzeros) took 1.7 us against 0.8 us on a repeated input, the
whole actor 2.0 us, 1.1x faster than the dense reference. Each layer gets (`vector_kind`):

- ell (sparse): inputs in groups of 32, a register pair, outputs in blocks of 16, an
  accumulator register each. For each group and block, as many slots as the block's
  longest row has nonzeros in the group; a slot gathers the 16 inputs from the pair by
  index (_mm512_permutex2var_ps) and multiply-adds its 16 weights (zero in padding lanes).
  Straight-line code, group by group, in passes of up to 16 accumulators (more spill
  registers): nothing depends on the data. Slots of different groups whose lanes do not
  overlap share one weight vector (`_block_slots`, blended gathers). Where the tables fit the L1 data cache with them
  (`VectorIsa.l1_bytes`), indices are stored as 32-bit lanes: 0.5 ns a slot (95% HalfCheetah,
  42 KB); beyond, 6 slots share one vector of 5-bit indices, shifted into place on port 0
  (`_packed_table`; 8-bit indices widened on the shuffle port the gathers saturate were 7%
  slower on the 90% actor). Each block's slots alternate between 2 accumulators, which
  halves its chain of dependent multiply-adds. Padding is what to cut:
  rows of similar shape go into the same block, and when the previous layer is dense (free
  to write its outputs in any order) inputs are regrouped too (`_ell_order`): 411 slots for
  the layer above, against 505 with rows sorted by length and 856 as they are (228 at best).
  A block has as many slots in a group as its longest row there, so the few longest rows of
  a layer (up to 4) may be dot products over registers of inputs instead, summed across lanes
  into their block (`_dot_rows`): the 98% Hopper actor's second layer, whose longest row has
  51 nonzeros and the next 22, 47 slots and a dot row against 78 slots.
  A dense-ish layer (`_dense_columns`) is ell too, its densest inputs broadcast as in dense,
  its other inputs in slots: the 90% actor's first layer 9 dense inputs and 43 slots.
- dense (dense-ish first layers): all outputs in registers, one pass over the inputs, each
  broadcast: ~0.25 ns per 16 multiply-adds. A layer is ell where the ISA's slot_cost x its slots
  is below its inputs x blocks, and `_sparse_plan` tries making an ell layer dense (then
  dense inputs and slots) to free the next layer's input order.
- rows (fewer than 16 outputs, the action head): dot products over registers of inputs,
  4 partial sums a row, summed across lanes by a tree of shuffles into one register, then a
  vector tanh (`tp_tanh`, a rational function within 6.1 ulp; libm's tanhf costs 10-35 ns a
  call, as much as the rest of the head).

Hidden vectors there are in the branch's own order, padded with zeros to whole registers;
each layer's tables are permuted to match (rows by its own order, columns by the previous
layer's), and the last layer keeps the actions' order. Measured on the dev box (ns per call,
layers alone / whole actor, inputs from rollouts, each changing every call), HEAD -> this:
90% HalfCheetah layers 125 / 2,400 / 152 -> 67 / 231 / 71, actor 2,580 -> 445 (dense
reference 2,260); 95% HalfCheetah actor 1,600 -> 228; 98% Hopper 312 -> 137. The whole
actor costs more than its layers: its tables (60 KB on the 90% actor) overflow the 48 KB L1
data cache, so each call streams them from L2 (reading 15 KB less saved 75 ns). Then
(untimed loop of calls, ns): wide indices, 2 accumulators per block and the head's partial
sums took the 95% HalfCheetah actor 224 -> 169 and the 98% Hopper 99 -> 72 (measured with a
tanh about 9 ns faster than tp_tanh, not kept); the 90% actor (narrow indices) stayed at 410.
Then, the 90% actor being bound by the bytes it streams from L2 (56 KB of tables; 4.5 ns a
KB less) and the shuffle port: packed indices, merged slots (411 -> 354 weight vectors) and
the first layer's dense inputs (17 -> 13 KB) took it 396 -> 288 ns (load 4, one binary), 5.8x
faster than the dense reference; the 95% actor 161 -> 157 and the 98% Hopper 75 -> 71.
Then, small actors being bound by their chain of dependent steps more than by their slots (a
random walk over orders that cut the 95% actor's second layer from 172 to 153 slots gained 2%,
more accumulators for long blocks nothing): the rational tp_tanh (Hopper -17%, 95% -9%), a dot
row in each second layer (Hopper -8%), layers inlined into the actor (2-3%) and passes of at
most 16 accumulators (95% -3%) took (load 4, one binary, median of 61 interleaved rounds) the
98% Hopper 73 -> 55 ns, the 95% HalfCheetah 161 -> 151 and the 90% 297 -> 292; the dense
reference, which shares tp_tanh and the inlining, 1,820 -> 1,733 ns on the HalfCheetah actors.

The int8 kernel computes what actor.int8.onnx (ONNX Runtime's QDQ quantisation) computes,
with its quantisation parameters: float layers stay float; a quantised layer quantises
its input to uint8 codes (round half to even, saturate), multiplies int8 weights in
int32, rescales by input scale x per-channel weight scale and adds the dequantised bias;
every QuantizeLinear/DequantizeLinear pair on the way to the actions is applied as
written. It matches ONNX Runtime within one quantisation step of the output.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tinypolicy.export.mlp import MLPPolicy
from tinypolicy.ondevice.artefact import write_text

HEADER, SPARSE, DENSE, INT8 = "actor.h", "actor.c", "actor_dense.c", "actor_int8.c"


@dataclass(frozen=True)
class Kernel:
    source: str     # the bundle's C file that defines it
    function: str   # its C function, declared in actor.h


# The generated kernels, by the name bench, export and the embedded targets call them.
KERNELS = {"sparse": Kernel(SPARSE, "tp_actor"), "dense": Kernel(DENSE, "tp_actor_dense"),
           "int8": Kernel(INT8, "tp_actor_int8")}
# Hidden activation -> the C function applying it (tp_relu is in _PREAMBLE, tanhf in <math.h>).
C_ACTIVATIONS = {"relu": "tp_relu", "tanh": "tanhf"}
# Rounding an action to its quantisation step can land one step apart from ONNX Runtime's
# fused int8 kernels; the 0.1% over one step covers float32 round-off of the step itself.
INT8_STEP_SLACK = 1.001

ROW_WISE_MAX_ROWS = 16
# Above this density a layer runs dense on vector ISAs: the vectorised dense loop does 8-16
# multiply-adds per instruction against about one per nonzero for straight-line code.
DENSE_MIN_DENSITY = 0.3
# ... and on Cortex-M, where dense costs ~2.6 instructions per weight (measured under QEMU)
# against ~3 per nonzero for straight-line code.
SCALAR_DENSE_MIN_DENSITY = 0.85
# Straight-line code (`_unrolled_loop`, ~3 instructions per nonzero) up to this many
# nonzeros per layer on Cortex-M, whose flash streams code without an instruction cache to
# miss; compile time and code size grow with it.
UNROLLED_MAX_NNZ = 8192
# On the host, ~20 bytes of code per nonzero stop fitting the instruction cache beyond about
# this many (the 90% HalfCheetah actor's 3,656-nonzero layer took 5.6 us straight-line
# against 2.9 us as CSC tables on the dev box); larger layers use the tables there.
VECTOR_UNROLLED_MAX_NNZ = 1024
REGISTER_BLOCK = 8
# An ELL block's slots alternate between ELL_CHAINS accumulators: a single accumulator chains all of a block's
# multiply-adds (4 cycles each), the critical path of a layer of few blocks (2 accumulators took the 98% Hopper
# actor, 6 blocks, from 99 to 82 ns and the 95% HalfCheetah one, 13 blocks, from 174 to 162; 4, or more for the
# blocks of most slots only, gained nothing). A layer whose accumulators would exceed the ISA's pass_accumulators
# is split into passes of equal numbers of blocks: the 95% HalfCheetah actor's 26 accumulators in one AVX-512 pass
# spilled registers (2 passes of 7 and 6 blocks: 3% faster; 20 a pass, the same).
ELL_CHAINS = 2
# Partial sums per row of the action head (`_vector_rows`), within the ISA's row_registers.
ROW_PARTIALS = 4
# An ELL layer's longest rows, up to MAX_DOT_ROWS, may be dot products instead (`_dot_rows`), each costing, besides
# its multiply-adds, this many dense multiply-adds for its share of the sum across lanes.
MAX_DOT_ROWS = 4
DOT_ROW_COST = 3
# A dot row's multiply-adds alternate between this many partial sums (its chain, 4 cycles a multiply-add, is on the
# layer's critical path).
DOT_PARTIALS = 2
# Beyond the L1 data cache every byte of table streams from L2 each call: what a byte costs then, in dense
# multiply-adds (0.25 ns each): 16 KB less table took the 90% HalfCheetah actor 80 ns faster (about 4.5 ns a KB).
STREAMED_BYTE_COST = 0.017
WARNINGS = ("-Wall", "-Wextra", "-Werror", "-pedantic")
# The host build: the same flags for every kernel, tuned for the machine it runs on.
# Contraction into fused multiply-adds is allowed (ISO C mode turns it off by default).
HOST_CFLAGS = ("-std=c99", "-O3", "-march=native", "-ffp-contract=fast", *WARNINGS)

_PREAMBLE = """#include <math.h>
#include <stdint.h>

#include "actor.h"

/* Cortex-M's FPU is scalar: dense layers keep 8 outputs in registers per pass over the
   inputs, and half-dense layers run straight-line (see layer_kind). Elsewhere the loops
   over outputs are written for the compiler to vectorise. */
#if defined(__ARM_ARCH_7EM__) || defined(__ARM_ARCH_8M_MAIN__)
#define TP_SCALAR_FPU 1
#endif
#if defined(__GNUC__)
#define TP_NOINLINE __attribute__((noinline))
#else
#define TP_NOINLINE
#endif
static inline float tp_relu(float v) { return v > 0.0f ? v : 0.0f; }
static inline float tp_clip1(float v) { return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v); }

/* Partial sums of a row-wise dot product: the vector width in floats; outputs per block of
   a dense layer: enough vectors of accumulators to hide the multiply-add latency. */
#if defined(__AVX512F__)
#define TP_LANES 16
#define TP_BLOCK 128
#elif defined(__AVX__)
#define TP_LANES 8
#define TP_BLOCK 64
#else
#define TP_LANES 4
#define TP_BLOCK 32
#endif

"""


# Which of these a kernel uses depends on its layers' kinds and on the target's branch.
_LOOP_VARIABLES = "    int i, j, l, p;\n    (void)i; (void)j; (void)l; (void)p;\n"


def _float(x: float) -> str:
    # %.9e round-trips every float32 exactly and always reads as a float literal.
    return "0.0f" if x == 0 else f"{float(x):.9e}f"


def _initializer(items: list[str], per_line: int, indent: str) -> str:
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return f",\n{indent}".join(lines)


def _array(ctype: str, name: str, values: np.ndarray, per_line: int = 6, fmt=_float, aligned: bool = False) -> str:
    """A const table; 2-D arrays are written row by row with nested braces. `aligned`: on a
    cache line (TP_ALIGNED), for tables read in whole vectors."""
    values = np.asarray(values)
    align = " TP_ALIGNED" if aligned else ""
    if values.ndim == 2:
        rows = ",\n    ".join("{" + _initializer([fmt(v) for v in row], per_line, "     ") + "}"
                              for row in values)
        return f"static const {ctype} {name}[{values.shape[0]}][{values.shape[1]}]{align} = {{\n    {rows}\n}};\n"
    flat = values.ravel()
    if flat.size == 0:  # C99 forbids empty arrays; the kernel never reads this element
        flat = np.zeros(1, dtype=flat.dtype)
    body = _initializer([fmt(v) for v in flat], per_line, "    ")
    return f"static const {ctype} {name}[{flat.size}]{align} = {{\n    {body}\n}};\n"


def _int(x) -> str:
    return str(int(x))


def _index_type(limit: int) -> str:
    """Smallest unsigned type holding values up to `limit` - 1."""
    return "uint8_t" if limit <= 256 else "uint16_t" if limit <= 65536 else "uint32_t"


_BYTES = {"uint8_t": 1, "uint16_t": 2, "uint32_t": 4}


def _sparse_bytes(w: np.ndarray, kind: str, value_bytes: int) -> int:
    nnz = int(np.count_nonzero(w))
    indexed, pointed = (w.shape[1], w.shape[0]) if kind == "csr" else (w.shape[0], w.shape[1])
    return (value_bytes + _BYTES[_index_type(indexed)]) * nnz + _BYTES[_index_type(nnz + 1)] * (pointed + 1)


def layer_kind(w: np.ndarray, compact: bool = False) -> str:
    """The kernel for weight matrix `w`: "dense", "unrolled", "csc", "csr", or X_unrolled:
    X on vector ISAs, straight-line on Cortex-M. `compact` (the int8 kernel's float
    layers) picks whichever of dense and tables is smaller."""
    table = "csr" if w.shape[0] <= ROW_WISE_MAX_ROWS else "csc"
    nnz = int(np.count_nonzero(w))
    if compact:
        return "dense" if 4 * w.size <= _sparse_bytes(w, table, 4) else table
    if nnz >= SCALAR_DENSE_MIN_DENSITY * w.size:
        return "dense"
    if nnz >= DENSE_MIN_DENSITY * w.size:
        return "dense_unrolled" if nnz <= UNROLLED_MAX_NNZ else "dense"
    if nnz <= VECTOR_UNROLLED_MAX_NNZ:
        return "unrolled"
    return f"{table}_unrolled" if nnz <= UNROLLED_MAX_NNZ else table


def _weight_bytes(w: np.ndarray, kind: str, value_bytes: int = 4) -> int:
    """Bytes of a layer's weights: dense tables, constants in the code (unrolled, not
    counting the instructions around them), or values with indices and pointers."""
    if kind == "dense":
        return value_bytes * w.size
    if kind.endswith("unrolled"):  # as on Cortex-M
        return value_bytes * int(np.count_nonzero(w))
    return _sparse_bytes(w, kind, value_bytes)


def sparse_table_bytes(policy: MLPPolicy) -> int:
    """Bytes of actor.c's weights (fp32 values, indices, pointers) and biases in its portable
    kernel, the one embedded targets build (the AVX-512 branch's are padded: larger)."""
    return sum(_weight_bytes(w, layer_kind(w)) + 4 * b.size for w, b in zip(policy.weights, policy.biases))


# --- tables and loops of one layer: dst[i] = act((W x)[i] + b[i]) ------------------------

@dataclass(frozen=True)
class _Layer:
    name: str          # table prefix, e.g. L1
    w: np.ndarray      # [out, in], float32, or int8 codes for a quantised layer
    src: str           # input array
    dst: str           # output array
    skip_zero: bool    # the input comes from a ReLU: zero inputs skip their column (CSC)
    ctype: str = "float"
    acc: str = ""      # accumulator array of a quantised layer (int32), else dst
    # How output {i} with value {v} is stored, activation included; default dst[i] = v.
    # Applied where the value is formed (in registers), not in a second pass over dst.
    store: str = ""

    @property
    def out(self) -> int:
        return self.w.shape[0]

    @property
    def inputs(self) -> int:
        return self.w.shape[1]

    @property
    def scalar(self) -> str:
        return "float" if self.ctype == "float" else "int32_t"

    def zero(self) -> str:
        return "0.0f" if self.ctype == "float" else "0"

    def put(self, i: str, v: str) -> str:
        return self.store.format(i=i, v=v) if self.store else f"{self.dst}[{i}] = {v};"


def _dense_tables(layer: _Layer) -> str:
    # Transposed ([in][out]) so that the axpy and the register blocks read it contiguously;
    # the row-wise dot products of a narrow layer on a vector ISA read it as stored.
    transposed = _array(layer.ctype, f"{layer.name}_W", layer.w.T)
    if layer.out >= 16:
        return transposed
    return (f"#ifdef TP_SCALAR_FPU\n{transposed}#else\n"
            f"{_array(layer.ctype, f'{layer.name}_W', layer.w)}#endif\n")


def _register_block(layer: _Layer, start: str, size: int) -> str:
    """Cortex-M: `size` outputs from `start` accumulated in registers over all inputs."""
    n, name = layer.out, layer.name
    lanes = range(size)
    return (f"    {{\n"
            f"        const float *w = &{name}_W[0][{start}];\n"
            f"        float {', '.join(f'a{l} = {name}_BIAS[{start} + {l}]' for l in lanes)};\n"
            f"        for (j = 0; j < {layer.inputs}; ++j, w += {n}) {{\n"
            f"            const float xj = {layer.src}[j];\n"
            + "".join(f"            a{l} += w[{l}] * xj;\n" for l in lanes)
            + "        }\n"
            + "".join(f"        {layer.put(f'{start} + {l}', f'a{l}')}\n" for l in lanes)
            + "    }\n")


def _register_blocks(layer: _Layer) -> str:
    n, block = layer.out, REGISTER_BLOCK
    tail = n % block
    loop = (f"    for (i = 0; i + {block} <= {n}; i += {block})\n" + _register_block(layer, "i", block)
            if n >= block else "")
    return loop + (_register_block(layer, str(n - tail), tail) if tail else "")


def _vector_block(layer: _Layer, size: str) -> str:
    """Vector ISAs: `size` outputs from i in a local array the compiler keeps in vector
    registers over all inputs (TP_BLOCK of them: several independent multiply-add chains)."""
    return (f"    {{\n"
            f"        float a[TP_BLOCK];\n"
            f"        for (l = 0; l < {size}; ++l)\n"
            f"            a[l] = {layer.name}_BIAS[i + l];\n"
            f"        for (j = 0; j < {layer.inputs}; ++j) {{\n"
            f"            const float xj = {layer.src}[j];\n"
            f"            const float *w = &{layer.name}_W[j][i];\n"
            f"            for (l = 0; l < {size}; ++l)\n"
            f"                a[l] += w[l] * xj;\n"
            f"        }}\n"
            f"        for (l = 0; l < {size}; ++l)\n"
            f"            {layer.put('i + l', 'a[l]')}\n"
            f"    }}\n")


def _vector_loop(layer: _Layer) -> str:
    n, m, name, x = layer.out, layer.inputs, layer.name, layer.src
    if n < 16:
        # Every row's partial sums advance together: n independent chains per input chunk.
        return (f"    {{\n"
                f"        float part[{n}][TP_LANES];\n"
                f"        for (i = 0; i < {n}; ++i)\n"
                f"            for (l = 0; l < TP_LANES; ++l)\n"
                f"                part[i][l] = 0.0f;\n"
                f"        for (j = 0; j + TP_LANES <= {m}; j += TP_LANES)\n"
                f"            for (i = 0; i < {n}; ++i)\n"
                f"                for (l = 0; l < TP_LANES; ++l)\n"
                f"                    part[i][l] += {name}_W[i][j + l] * {x}[j + l];\n"
                f"        for (i = 0; i < {n}; ++i) {{\n"
                f"            float sum = {name}_BIAS[i];\n"
                f"            for (p = j; p < {m}; ++p)\n"
                f"                sum += {name}_W[i][p] * {x}[p];\n"
                f"            for (l = 0; l < TP_LANES; ++l)\n"
                f"                sum += part[i][l];\n"
                f"            {layer.put('i', 'sum')}\n"
                f"        }}\n"
                f"    }}\n")
    return (f"    for (i = 0; i + TP_BLOCK <= {n}; i += TP_BLOCK)\n" + _vector_block(layer, "TP_BLOCK")
                  + f"    if ({n} % TP_BLOCK)\n" + _vector_block(layer, f"{n} % TP_BLOCK"))


def _dense_loop(layer: _Layer) -> str:
    return f"#ifdef TP_SCALAR_FPU\n{_register_blocks(layer)}#else\n{_vector_loop(layer)}#endif\n"


def _unrolled_loop(layer: _Layer) -> str:
    """Straight-line code, one statement per output, the weights as constants in the code:
    no index loads, no loop branches; larger than tables (a constant and the instructions
    that load it and multiply-add per nonzero)."""
    lines = []
    for i, row in enumerate(layer.w):
        terms = "".join(f" + {_float(row[j])} * {layer.src}[{j}]" for j in np.flatnonzero(row))
        lines.append(f"    {{\n        const float v = {layer.name}_BIAS[{i}]{terms};\n"
                     f"        {layer.put(str(i), 'v')}\n    }}\n")
    return "".join(lines)


def _csc_tables(layer: _Layer) -> str:
    w = layer.w
    cols, rows = np.nonzero(w.T)                     # column-major order
    col_ptr = np.concatenate([[0], np.cumsum(np.count_nonzero(w, axis=0))])
    fmt = _float if layer.ctype == "float" else _int
    return (_array(layer.ctype, f"{layer.name}_VAL", w[rows, cols], 16 if fmt is _int else 6, fmt)
            + _array(_index_type(w.shape[0]), f"{layer.name}_ROW", rows, 16, _int)
            + _array(_index_type(len(rows) + 1), f"{layer.name}_COL", col_ptr, 16, _int))


def _csc_loop(layer: _Layer) -> str:
    name, acc = layer.name, layer.acc or layer.dst
    init = (f"        {acc}[i] = {name}_BIAS[i];\n" if layer.ctype == "float" else f"        {acc}[i] = 0;\n")
    return (f"    for (i = 0; i < {layer.out}; ++i)\n" + init
            + f"    for (j = 0; j < {layer.inputs}; ++j) {{\n"
            f"        const {layer.scalar} xj = {layer.src}[j];\n"
            + (f"        if (xj == {layer.zero()})\n            continue;\n" if layer.skip_zero else "")
            + f"        for (p = (int){name}_COL[j]; p < (int){name}_COL[j + 1]; ++p)\n"
            f"            {acc}[{name}_ROW[p]] += {name}_VAL[p] * xj;\n"
            f"    }}\n"
            + (f"    for (i = 0; i < {layer.out}; ++i)\n        {layer.put('i', f'{acc}[i]')}\n" if layer.store else ""))


def _csr_tables(layer: _Layer) -> str:
    w = layer.w
    rows, cols = np.nonzero(w)                       # row-major order
    row_ptr = np.concatenate([[0], np.cumsum(np.count_nonzero(w, axis=1))])
    fmt = _float if layer.ctype == "float" else _int
    return (_array(layer.ctype, f"{layer.name}_VAL", w[rows, cols], 16 if fmt is _int else 6, fmt)
            + _array(_index_type(w.shape[1]), f"{layer.name}_COL", cols, 16, _int)
            + _array(_index_type(len(rows) + 1), f"{layer.name}_ROW", row_ptr, 16, _int))


def _csr_loop(layer: _Layer) -> str:
    v, c, t, z = f"{layer.name}_VAL", f"{layer.name}_COL", layer.scalar, layer.zero()
    x, acc = layer.src, layer.acc or layer.dst
    first = f"{layer.name}_BIAS[i]" if layer.ctype == "float" else z
    return (f"    for (i = 0; i < {layer.out}; ++i) {{\n"
            f"        {t} a0 = {first}, a1 = {z}, a2 = {z}, a3 = {z};\n"
            f"        const int end = (int){layer.name}_ROW[i + 1];\n"
            f"        for (p = (int){layer.name}_ROW[i]; p + 4 <= end; p += 4) {{\n"
            f"            a0 += {v}[p] * {x}[{c}[p]];\n"
            f"            a1 += {v}[p + 1] * {x}[{c}[p + 1]];\n"
            f"            a2 += {v}[p + 2] * {x}[{c}[p + 2]];\n"
            f"            a3 += {v}[p + 3] * {x}[{c}[p + 3]];\n"
            f"        }}\n"
            f"        for (; p < end; ++p)\n"
            f"            a0 += {v}[p] * {x}[{c}[p]];\n"
            f"        {layer.put('i', '(a0 + a1) + (a2 + a3)') if layer.ctype == 'float' else f'{acc}[i] = (a0 + a1) + (a2 + a3);'}\n"
            f"    }}\n")


def _layer_code(layer: _Layer, kind: str, bias: np.ndarray) -> tuple[str, str]:
    """(tables, loops) computing dst = W src + b for one layer with kernel `kind`."""
    tables = _array("float", f"{layer.name}_BIAS", bias)
    if kind == "dense":
        return tables + _dense_tables(layer), _dense_loop(layer)
    if kind == "csc":
        return tables + _csc_tables(layer), _csc_loop(layer)
    if kind == "unrolled":
        return tables, _unrolled_loop(layer)
    if kind.endswith("_unrolled"):
        vector = kind.removesuffix("_unrolled")
        vector_tables, vector_loop = {"dense": (_dense_tables, _vector_loop), "csc": (_csc_tables, _csc_loop),
                                      "csr": (_csr_tables, _csr_loop)}[vector]
        return (tables + f"#ifndef TP_SCALAR_FPU\n{vector_tables(layer)}#endif\n",
                f"#ifdef TP_SCALAR_FPU\n{_unrolled_loop(layer)}#else\n{vector_loop(layer)}#endif\n")
    return tables + _csr_tables(layer), _csr_loop(layer)


def _comment(k: int, w: np.ndarray, kind: str, what: str) -> str:
    return (f"    /* layer {k}: {w.shape[1]} -> {w.shape[0]}, {np.count_nonzero(w)} nonzeros "
            f"of {w.size}, {kind}, {what} */\n")


# --- the float kernels ---------------------------------------------------------------------

def _normalises(policy: MLPPolicy) -> bool:
    return not (np.all(policy.obs_mean == 0) and np.all(policy.obs_std == 1))


def _io_tables(policy: MLPPolicy) -> str:
    parts = []
    if _normalises(policy):
        parts.append(_array("float", "OBS_MEAN", policy.obs_mean))
        parts.append(_array("float", "OBS_STD", policy.obs_std))
    low, high = policy.action_low.astype(np.float32), policy.action_high.astype(np.float32)
    # The same float32 arithmetic as the ONNX graph and the PyTorch reference.
    parts.append(_array("float", "ACTION_SCALE", (high - low) / np.float32(2)))
    parts.append(_array("float", "ACTION_OFFSET", (high + low) / np.float32(2)))
    return "".join(parts)


def _input(normalise: bool) -> str:
    if not normalise:
        return "    const float *x = obs;\n"
    return ("    static float x[TP_OBS_DIM];\n"
            "    for (i = 0; i < TP_OBS_DIM; ++i)\n"
            "        x[i] = (obs[i] - OBS_MEAN[i]) / OBS_STD[i];\n")


def _c_activation(policy: MLPPolicy) -> str:
    if policy.hidden_activation not in C_ACTIVATIONS:
        raise ValueError(f"the C kernels implement the hidden activations {', '.join(C_ACTIVATIONS)}, "
                         f"not {policy.hidden_activation!r}")
    return C_ACTIVATIONS[policy.hidden_activation]


def _store(policy: MLPPolicy, last: bool, buffer: str) -> str:
    """A layer's store template (see _Layer.store): its activation, and for the last layer
    the squashing and action scaling into `actions`."""
    if last:
        squash = "tanhf" if policy.output == "tanh" else "tp_clip1"
        return f"actions[{{i}}] = {squash}({{v}}) * ACTION_SCALE[{{i}}] + ACTION_OFFSET[{{i}}];"
    return f"{buffer}[{{i}}] = {_c_activation(policy)}({{v}});"


def _portable_kernel(policy: MLPPolicy, function: str, kinds: list[str]) -> tuple[str, str]:
    """(tables, code) of the kernel every target builds. One function per layer, kept out of
    line: inlined into one body, compilers carry the straight-line layers' outputs into the
    next layer in registers and spill them (kilobytes of stack on Cortex-M)."""
    normalise = _normalises(policy)
    width = max(w.shape[0] for w in policy.weights)
    tables, layers, calls = [], [], []
    source = "x"
    for k, (w, b, kind) in enumerate(zip(policy.weights, policy.biases, kinds)):
        last = k == len(policy.weights) - 1
        dst = f"h{k % 2}"
        layer = _Layer(f"L{k}", w, "x", dst, skip_zero=k > 0 and policy.hidden_activation == "relu",
                       store=_store(policy, last, dst))
        table, loop = _layer_code(layer, kind, b)
        tables.append(table)
        layers.append(f"static TP_NOINLINE void layer{k}(const float *restrict x, float *restrict actions)\n{{\n" + _LOOP_VARIABLES
                      + "    (void)actions;\n"
                      + _comment(k, w, kind, policy.output if last else policy.hidden_activation) + loop + "}\n\n")
        calls.append(f"    layer{k}({source}, actions);\n")
        source = dst
    return "".join(tables), (f"\nstatic float h0[{width}], h1[{width}];\n\n" + "".join(layers)
                             + f"void {function}(const float *obs, float *actions)\n{{\n"
                             + ("    int i;\n" if normalise else "") + _input(normalise) + "".join(calls) + "}\n")


def _float_kernel(policy: MLPPolicy, function: str, description: str, kinds: list[str],
                  plans: dict[VectorIsa, list[_VectorLayer]] | None = None) -> str:
    """The kernel with each layer's `kinds`; given vector `plans`, a branch per x86 ISA comes
    first (`#if`, `#elif`) and the portable kernel is their #else."""
    io = _io_tables(policy)
    tables, code = _portable_kernel(policy, function, kinds)
    body = tables + code
    if plans:
        branches = [f"#{'if' if k == 0 else 'elif'} {isa.guard}\n{_vector_kernel(policy, function, plan, isa)}"
                    for k, (isa, plan) in enumerate(plans.items())]
        body = "".join(branches) + f"#else\n{body}#endif\n"
    return f"/* Generated by tinypolicy: {description}. */\n" + _PREAMBLE + io + body


def sparse_source(policy: MLPPolicy) -> str:
    """actor.c: each layer with the kernel its density calls for (`layer_kind`), and on x86
    with AVX-512 or AVX2 the one `_sparse_plan` picks for it."""
    kinds = [layer_kind(w) for w in policy.weights]
    plans = {isa: _sparse_plan(policy, isa) for isa in VECTOR_ISAS}
    branches = "; ".join(f"{isa.name}: {'/'.join(v.kind for v in plan)}" for isa, plan in plans.items())
    return _float_kernel(policy, KERNELS["sparse"].function, f"sparse policy, {sum(policy.nnz())} nonzero weights, "
                         f"layers {'/'.join(kinds)} ({branches})", kinds, plans)


def dense_source(policy: MLPPolicy) -> str:
    """actor_dense.c: the same computation over every weight, zeros included; on x86 with
    AVX-512 or AVX2 with the same intrinsics as actor.c's dense and rows layers, so that the sparse
    kernel is compared with the best dense one we can write."""
    return _float_kernel(policy, KERNELS["dense"].function, f"dense reference policy, {policy.macs()} weights",
                         ["dense"] * len(policy.weights),
                         {isa: _vector_plan(policy, isa, sparse=False) for isa in VECTOR_ISAS})


# --- actor.c's vector branches (x86 hosts: AVX-512, AVX2) -----------------------------------

@dataclass(frozen=True)
class VectorIsa:
    """An x86 vector ISA with its own branch in actor.c and actor_dense.c. Both branches are one
    generator (`_vector_kernel`) with the same kernels; what differs is here: the register width
    (a block of outputs), the inputs a slot gathers from (`pair`: two registers, AVX-512's
    permutex2var; else one, AVX2's permutevar8x32), the registers a pass may keep accumulators in,
    the L1 data cache the tables should fit, and the intrinsics' spellings."""
    name: str               # in the generated comments
    macros: tuple[str, ...]  # the compiler's macros it needs
    prefix: str             # of its intrinsics, "_mm512"
    lanes: int              # floats per register
    pair: bool
    masked: bool            # has mask registers (AVX-512's k0-k7); else partial loads and blends take vector masks
    dense_blocks: int       # blocks of outputs accumulated per pass of a dense layer
    pass_accumulators: int  # ... of an ELL layer (ELL_CHAINS per block)
    row_registers: int      # accumulators of the action head (`_vector_rows`)
    slot_cost: float        # what an ELL slot costs, in dense multiply-adds of a register
    order_passes: int       # the most alternations of the input and row order searches (`_ell_order`)
    # ELL indices are stored as the 32-bit lanes the permute reads while all tables fit in l1_bytes; beyond,
    # `_packed_table`: packed_slots slots share a vector of indices, packed_bits a lane each (the permute reads
    # the low bits, an index within the group, and ignores the rest).
    l1_bytes: int
    packed_slots: int
    packed_bits: int
    preamble: str
    tanh: str               # tp_tanh, on registers
    lane_sum_steps: tuple[tuple[str, str], ...]  # `_lane_sums`: the shuffles of each level of its tree

    @property
    def guard(self) -> str:
        """The preprocessor condition of its branch; TP_SCALAR_FPU forces the portable one."""
        return " && ".join(f"defined({m})" for m in self.macros) + " && !defined(TP_SCALAR_FPU)"

    @property
    def group(self) -> int:
        """Inputs an ELL slot gathers from."""
        return self.lanes * (2 if self.pair else 1)

    @property
    def vec(self) -> str:
        return f"__m{32 * self.lanes}"

    def op(self, name: str, *args: str) -> str:
        """The intrinsic `name` of this ISA applied to `args`: op("fmadd_ps", a, b, c)."""
        return f"{self.prefix}_{name}({', '.join(args)})"

    def _lane_mask(self, lanes: int) -> str:
        if self.masked:
            return f"(__mmask16)0x{(1 << lanes) - 1:04x}"
        return self.op("setr_epi32", *(["-1"] * lanes + ["0"] * (self.lanes - lanes)))

    def load_first(self, lanes: int, address: str) -> str:
        """A register of the first `lanes` floats at `address`, zeros in the others."""
        mask = self._lane_mask(lanes)
        return self.op("maskz_loadu_ps", mask, address) if self.masked else self.op("maskload_ps", address, mask)

    def store_first(self, lanes: int, address: str, v: str) -> str:
        mask = self._lane_mask(lanes)
        return self.op("mask_storeu_ps", address, mask, v) if self.masked else \
            self.op("maskstore_ps", address, mask, v)

    def gather(self, index: str, low: str, high: str) -> str:
        """The lanes of the group's registers `low`, `high` (unused unless `pair`) picked by `index`."""
        return self.op("permutex2var_ps", low, index, high) if self.pair else self.op("permutevar8x32_ps", low, index)

    def blend(self, into: str, mask: int, v: str) -> str:
        """`into` with the lanes in `mask` taken from `v`."""
        if self.masked:
            return self.op("mask_mov_ps", into, f"0x{mask:04x}", v)
        return self.op("blend_ps", into, v, f"0x{mask:02x}")

    def load_indices(self, address: str) -> str:
        return self.op("load_si512", address) if self.lanes == 16 else \
            self.op("load_si256", f"(const __m256i *){address}")


@dataclass(frozen=True)
class _VectorLayer:
    """One layer of a vector branch. Hidden vectors there are in an order of the branch's
    choosing (`order`), padded to whole registers, so each layer's weights are permuted: rows
    by its own order, columns by the previous layer's."""
    kind: str           # "dense", "ell" or "rows" (see vector_kind)
    w: np.ndarray       # float32 [len(order), inputs the previous layer writes]
    bias: np.ndarray    # float32 [len(order)]
    order: np.ndarray   # output position -> neuron; positions holding neuron >= outputs are padding (zero)
    slots: int          # "ell": slots (a register of weights each), padding included, before merging; else 0
    dense_columns: tuple[int, ...] = ()  # "ell": inputs multiplied densely, by broadcast (`_dense_columns`)
    dot_rows: tuple[int, ...] = ()  # "ell": output positions computed as dot products, not in slots (`_dot_rows`)


def _group_counts(nz: np.ndarray, isa: VectorIsa) -> np.ndarray:
    """Nonzeros of each row in each group of inputs."""
    groups = -(-nz.shape[1] // isa.group)
    padded = np.zeros((nz.shape[0], groups * isa.group), np.int32)
    padded[:, :nz.shape[1]] = nz
    return padded.reshape(nz.shape[0], groups, isa.group).sum(2)


def _ell_slots(counts: np.ndarray, isa: VectorIsa) -> int:
    """Slots of rows in this order: per block of rows (a register) and group, the longest row there."""
    return int(counts.reshape(-1, isa.lanes, counts.shape[1]).max(1).sum())


def _row_descent(counts: np.ndarray, order: np.ndarray, isa: VectorIsa) -> np.ndarray:
    """`order` (position -> row) after the swap of rows between two blocks that saves most
    slots, repeated while one saves any."""
    blocks, groups, lanes = len(order) // isa.lanes, counts.shape[1], isa.lanes
    same = np.arange(blocks)
    counts = counts.astype(np.int8)  # at most a group's inputs: the 5-D tensor below is most of the time, in bytes
    while True:
        m = counts[order].reshape(blocks, lanes, groups)
        top = m.max(1)
        at_top = m == top[:, None]
        second = np.where(at_top, -1, m).max(1)
        second = np.where(at_top.sum(1) > 1, top, second)
        without = np.where(at_top, second[:, None], top[:, None])  # a block's maxima without one of its rows
        # Slots of block A with its row a replaced by row b of block B, for every A, a, B, b.
        swapped = np.maximum(without[:, :, None, None, :], m[None, None]).sum(-1, dtype=np.int32)
        base = top.sum(1, dtype=np.int32)
        gain = swapped + swapped.transpose(2, 3, 0, 1) - base[:, None, None, None] - base[None, None, :, None]
        gain[same, :, same, :] = 0
        best = int(np.argmin(gain))
        if gain.flat[best] >= 0:
            return order
        a, i, b, j = np.unravel_index(best, gain.shape)
        order = order.copy()
        order[[a * lanes + i, b * lanes + j]] = order[[b * lanes + j, a * lanes + i]]


def _column_descent(nz: np.ndarray, isa: VectorIsa) -> tuple[np.ndarray, bool]:
    """(input order, whether it changed) of `nz` [rows in order, inputs] after, for each two
    groups in turn, the swap of inputs between them that saves most slots, while one saves any."""
    x = nz.astype(np.int8)
    groups = [np.arange(g, min(g + isa.group, x.shape[1])) for g in range(0, x.shape[1], isa.group)]
    lanes = isa.lanes
    columns, changed, improved = np.arange(x.shape[1]), False, True
    while improved:
        improved = False
        for i, u in enumerate(groups):
            for v in groups[i + 1:]:
                cu, cv = x[:, u].sum(1), x[:, v].sum(1)
                moved = x[:, None, v] - x[:, u, None]  # rows, u, v: +1 where the swap brings a nonzero into u's group
                slots = ((cu[:, None, None] + moved).reshape(-1, lanes, len(u), len(v)).max(1).sum(0)
                         + (cv[:, None, None] - moved).reshape(-1, lanes, len(u), len(v)).max(1).sum(0))
                best = np.unravel_index(int(np.argmin(slots)), slots.shape)
                if slots[best] < cu.reshape(-1, lanes).max(1).sum() + cv.reshape(-1, lanes).max(1).sum():
                    pair = [u[best[0]], v[best[1]]]
                    x[:, pair] = x[:, pair[::-1]]
                    columns[pair] = columns[pair[::-1]]
                    changed = improved = True
    return columns, changed


def _ell_order(nz: np.ndarray, free_columns: bool, isa: VectorIsa) -> tuple[np.ndarray, np.ndarray]:
    """(row order, input order) with few ELL slots for nonzero pattern `nz` [rows, inputs]:
    rows by nonzeros, then `_row_descent`; where the previous layer can write its outputs in
    any order (`free_columns`), alternately `_column_descent` and `_row_descent` while the
    inputs move, at most the ISA's order_passes times. Slots on the 90% HalfCheetah actor: 505 sorted,
    454 after the row descent, 411 with the inputs, in a third of a second (a minute of
    simulated annealing over the rows alone found 426; AVX-512)."""
    columns = np.arange(nz.shape[1])
    rows = _row_descent(_group_counts(nz, isa), np.argsort(-nz.sum(1), kind="stable"), isa)
    for _ in range(isa.order_passes if free_columns else 0):
        moved, changed = _column_descent(nz[rows][:, columns], isa)
        if not changed:
            break
        columns = columns[moved]
        rows = _row_descent(_group_counts(nz[:, columns], isa), rows, isa)
    return rows, columns


def vector_kind(w: np.ndarray, last: bool, isa: VectorIsa, free_columns: bool = False,
                dense: bool = False) -> tuple[str, np.ndarray, np.ndarray, int, tuple[int, ...]]:
    """A vector branch's kernel for weights `w` [out, in] (inputs in the order the previous
    layer writes them): (kind, output order, input order, ELL slots, output positions computed as
    dot products, `_dot_rows`). Fewer outputs than lanes (the action head): "rows", dot products
    over registers of inputs. Wider layers: "ell" when the ISA's slot_cost x its slots plus the dot rows'
    `_dot_cost` is below the dense kernel's multiply-adds (inputs x blocks) and not
    `dense`, else "dense". The last layer keeps its outputs in order: they are the actions; the inputs
    are reordered only where the previous layer's outputs can be (`free_columns`)."""
    out, inputs = w.shape
    identity = np.arange(inputs)
    if out < isa.lanes:
        return "rows", np.arange(out), identity, 0, ()
    padded = -(-out // isa.lanes) * isa.lanes
    nz = np.zeros((padded, inputs), bool)
    nz[:out] = w != 0
    # Each slot fills at most a register's lanes, and dot rows take at most MAX_DOT_ROWS rows: where even that bound
    # costs more than dense, the order searches below could not make the layer ELL.
    dot_bound = np.sort(nz.sum(1))[::-1][:0 if last else MAX_DOT_ROWS].sum()
    if dense or isa.slot_cost * (nz.sum() - dot_bound) / isa.lanes >= inputs * padded // isa.lanes:
        return "dense", np.arange(padded), identity, 0, ()
    rows, columns, slots, dots = ((np.arange(padded), identity, _ell_slots(_group_counts(nz, isa), isa), ()) if last
                                  else _dot_rows(nz, free_columns, isa))
    if isa.slot_cost * slots + _dot_cost(nz[rows][:, columns], dots, isa) < inputs * padded // isa.lanes and not dense:
        return "ell", rows, columns, slots, dots
    return "dense", np.arange(padded), identity, 0, ()


def _dot_cost(nz: np.ndarray, dots: tuple[int, ...], isa: VectorIsa) -> float:
    """What rows `dots` of `nz` [rows, inputs] cost as dot products, in dense multiply-adds: one per register of
    inputs the row uses, and DOT_ROW_COST for its share of the sum across lanes."""
    registers = -(-nz.shape[1] // isa.lanes)
    padded = np.zeros((len(dots), registers * isa.lanes), bool)
    padded[:, :nz.shape[1]] = nz[list(dots)]
    return int(padded.reshape(len(dots), registers, isa.lanes).any(2).sum()) + DOT_ROW_COST * len(dots)


def _dot_rows(nz: np.ndarray, free_columns: bool, isa: VectorIsa
              ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...]]:
    """(row order, input order, ELL slots, positions of dot-product rows) for nonzero pattern `nz` [rows, inputs]:
    the longest rows, up to MAX_DOT_ROWS, left out of the ELL slots and computed as dot products over registers of
    inputs, as many as `_dot_cost` and the ISA's slot_cost find cheapest. A block has as many slots in a group as its
    longest row there, so a single long row pads its neighbours: the 98% Hopper actor's second layer has a row
    of 51 nonzeros, the next 22: 47 slots and that row as a dot product instead of 78 slots (AVX-512). The dot rows
    take the places of rows left without nonzeros (`_ell_order` sorts them last), which add no slot, in order."""
    longest = np.argsort(-nz.sum(1), kind="stable")
    best = None
    for count in range(min(MAX_DOT_ROWS, nz.shape[0]) + 1):
        rest = nz.copy()
        rest[longest[:count]] = False
        rows, columns = _ell_order(rest, free_columns, isa)
        slots = _ell_slots(_group_counts(rest[rows][:, columns], isa), isa)
        cost = isa.slot_cost * slots + _dot_cost(nz[:, columns], tuple(longest[:count]), isa)
        if best is None or cost < best[0]:
            empty = [p for p, row in enumerate(rows) if not rest[row].any()]
            dot = set(longest[:count].tolist())
            rows = rows.copy()
            rows[empty] = rows[sorted(empty, key=lambda p: rows[p] not in dot)]  # stable: the dot rows first
            best = cost, rows, columns, slots, tuple(empty[:count])
    return best[1:]


def _sparse_plan(policy: MLPPolicy, isa: VectorIsa) -> list[_VectorLayer]:
    """A vector branch's layers of actor.c: `_vector_plan` as `vector_kind` picks, or with an ELL layer
    followed by another made dense (then dense inputs and slots, `_dense_columns`, in the order the next
    layer reads them, which it is free to choose), whichever `_plan_cost` finds cheaper: on the 98% Hopper
    actor the first layer's 8 densest inputs and 4 slots, against 24 slots, and 78 slots for the next
    layer against 80, took the actor from 77 to 73 ns (AVX-512)."""
    plan = _vector_plan(policy, isa)
    candidates = [plan] + [_vector_plan(policy, isa, dense_layers={k}) for k in range(len(plan) - 1)
                           if plan[k].kind == plan[k + 1].kind == "ell"]
    streamed = _table_bytes(plan, isa, wide=False) > isa.l1_bytes
    return min(candidates, key=lambda p: _plan_cost(p, isa, streamed))


def _plan_cost(plan: list[_VectorLayer], isa: VectorIsa, streamed: bool) -> float:
    """What `_dense_columns` minimises, over a plan's layers: the ISA's slot_cost per slot and one per dense
    multiply-add of a register, plus STREAMED_BYTE_COST per byte of table where they overflow the L1 data cache."""
    compute = sum(isa.slot_cost * v.slots + len(v.order) // isa.lanes * len(v.dense_columns)
                  + _dot_cost(v.w != 0, v.dot_rows, isa) if v.kind == "ell" else v.w.size / isa.lanes for v in plan)
    return compute + (STREAMED_BYTE_COST * _table_bytes(plan, isa, wide=False) if streamed else 0)


def _vector_plan(policy: MLPPolicy, isa: VectorIsa, sparse: bool = True,
                 dense_layers: frozenset[int] | set[int] = frozenset()) -> list[_VectorLayer]:
    """A vector branch's layers: each the kernel `vector_kind` picks (dense for `dense_layers`), or (not
    `sparse`) every weight multiplied, in the layers' own order."""
    plan: list[_VectorLayer] = []
    columns = np.arange(policy.obs_dim)  # input position -> input of the layer
    for k, (w, b) in enumerate(zip(policy.weights, policy.biases)):
        real = columns < w.shape[1]
        permuted = np.zeros((w.shape[0], len(columns)), np.float32)
        permuted[:, real] = w[:, columns[real]]
        free = bool(plan) and plan[-1].kind == "dense"
        if sparse:
            kind, order, inputs, slots, dots = vector_kind(permuted, k == len(policy.weights) - 1, isa, free,
                                                           k in dense_layers)
        else:
            padded = -(-w.shape[0] // isa.lanes) * isa.lanes
            kind, order = (("dense", np.arange(padded)) if w.shape[0] >= isa.lanes
                           else ("rows", np.arange(w.shape[0])))
            inputs, slots, dots = np.arange(len(columns)), 0, ()
        if free and kind == "ell":  # the dense layer before writes its outputs in the order this one reads them
            plan[-1] = replace(plan[-1], w=plan[-1].w[inputs], bias=plan[-1].bias[inputs], order=plan[-1].order[inputs])
            permuted, columns = permuted[:, inputs], columns[inputs]
        rows = order < w.shape[0]
        vw = np.zeros((len(order), len(columns)), np.float32)
        vw[rows] = permuted[order[rows]]
        vb = np.zeros(len(order), np.float32)
        vb[rows] = b[order[rows]]
        plan.append(_VectorLayer(kind, vw, vb, order, slots, dot_rows=dots))
        columns = order
    if sparse:  # dense layers' rows are in their final order now, up to moves within the next layer's groups
        streamed = _table_bytes(plan, isa, wide=False) > isa.l1_bytes
        for k, vector in enumerate(plan):
            if vector.kind != "dense":
                continue
            dense, moved, slots = _dense_columns(vector.w, isa, streamed, movable=k + 1 < len(plan))
            if len(dense) < vector.w.shape[1]:
                plan[k] = replace(vector, kind="ell", w=vector.w[moved], bias=vector.bias[moved],
                                  order=vector.order[moved], slots=slots, dense_columns=dense)
                if k + 1 < len(plan):
                    plan[k + 1] = replace(plan[k + 1], w=plan[k + 1].w[:, moved])
    return plan


def _table_bytes(plan: list[_VectorLayer], isa: VectorIsa, wide: bool) -> int:
    """Bytes of a vector branch's tables, ELL indices `wide` or packed."""
    lanes = isa.lanes
    slot = 8 * lanes if wide else 4 * lanes + 4 * lanes // isa.packed_slots
    return sum(4 * v.bias.size + (slot * v.slots + 4 * len(v.order) * len(v.dense_columns)
                                  + 4 * -(-v.w.shape[1] // lanes) * lanes * len(v.dot_rows) if v.kind == "ell"
                                  else 4 * v.w.size) for v in plan)


def _dense_columns(w: np.ndarray, isa: VectorIsa, streamed: bool, movable: bool
                   ) -> tuple[tuple[int, ...], np.ndarray, int]:
    """(inputs, row order, ELL slots) of a layer [rows, inputs] split into inputs multiplied densely and ELL
    slots for the others (`_vector_ell`): the densest inputs, as many as minimise the cost, slot_cost x slots +
    the dense multiply-adds, plus, where the tables do not fit the L1 data cache (`streamed`), STREAMED_BYTE_COST
    per byte of table. `movable` rows move within their group of positions (`_regroup_rows`), which keeps the
    next layer's slots. On the 90% HalfCheetah actor's first layer (17 inputs, 45% dense) 9 dense inputs and 43
    slots, 17 KB -> 13 KB of table: the actor 12% faster than with all 17 dense (AVX-512)."""
    nz = w != 0
    blocks = w.shape[0] // isa.lanes
    densest = np.argsort(-nz.sum(0), kind="stable")
    best, best_cost = (tuple(range(w.shape[1])), np.arange(w.shape[0]), 0), np.inf
    for count in range(w.shape[1] + 1):
        rest = nz.copy()
        rest[:, densest[:count]] = False
        moved = _regroup_rows(rest, isa) if movable else np.arange(w.shape[0])
        slots = _ell_slots(_group_counts(rest[moved], isa), isa)
        table = 4 * isa.lanes * (count * blocks + slots) + 4 * isa.lanes // isa.packed_slots * slots
        cost = count * blocks + isa.slot_cost * slots + (STREAMED_BYTE_COST * table if streamed else 0)
        if cost < best_cost:
            best, best_cost = (tuple(sorted(int(c) for c in densest[:count])), moved, slots), cost
    return best


def _regroup_rows(nz: np.ndarray, isa: VectorIsa) -> np.ndarray:
    """A row order (position -> row) with few ELL slots for `nz` [rows, inputs] in which rows only move within their
    group of positions: the next layer gathers its inputs by group, so its slots stay as they are. Within each group,
    rows by nonzeros, then `_row_descent`. Where a group is one block (AVX2), no move changes a slot."""
    order = np.arange(nz.shape[0])
    if isa.group == isa.lanes:
        return order
    for start in range(0, nz.shape[0], isa.group):
        part = nz[start:start + isa.group]
        local = _row_descent(_group_counts(part, isa), np.argsort(-part.sum(1), kind="stable"), isa)
        order[start:start + isa.group] = start + local
    return order


def _load(src: str, start: int, width: int, isa: VectorIsa) -> str:
    """The register of inputs start.. of `src`, which holds `width` (zeros beyond)."""
    if start + isa.lanes <= width:
        return isa.op("loadu_ps", f"{src} + {start}")
    if start < width:
        return isa.load_first(width - start, f"{src} + {start}")
    return isa.op("setzero_ps")


@dataclass(frozen=True)
class _VectorOut:
    """Where a layer of a vector branch stores its outputs, activation applied in registers."""
    dst: str            # output array, or "actions" for the last layer (squashed and scaled)
    activation: str     # "relu", "tanh" or "clip"
    outputs: int        # outputs stored, padding included (zeros: the activations keep 0 at 0)
    isa: VectorIsa

    def store(self, start: int, v: str) -> str:
        """Outputs start.. from register `v`."""
        isa = self.isa
        lanes = min(isa.lanes, self.outputs - start)
        if self.activation == "relu":
            v = isa.op("max_ps", v, isa.op("setzero_ps"))  # a NaN becomes 0, as in tp_relu
        elif self.activation == "tanh":
            v = f"tp_tanh({v})"
        else:
            v = isa.op("min_ps", isa.op("set1_ps", "1.0f"), isa.op("max_ps", isa.op("set1_ps", "-1.0f"), v))
        if self.dst == "actions":
            v = isa.op("fmadd_ps", v, isa.load_first(lanes, f"ACTION_SCALE + {start}"),
                       isa.load_first(lanes, f"ACTION_OFFSET + {start}"))
        if lanes == isa.lanes:
            return isa.op("storeu_ps", f"{self.dst} + {start}", v) + ";"
        return isa.store_first(lanes, f"{self.dst} + {start}", v) + ";"


def _vector_passes(layer: _Layer, out: _VectorOut, inputs: Callable[[int, int], str], max_blocks: int) -> str:
    """Passes over the inputs with up to `max_blocks` blocks of outputs in registers each;
    `inputs(first, blocks)` gives a pass's statements, accumulating into a0, a1, ..."""
    isa = out.isa
    blocks = layer.out // isa.lanes
    code = []
    for first in range(0, blocks, max_blocks):
        count = min(max_blocks, blocks - first)
        accs = ", ".join(f"a{b} = {isa.op('loadu_ps', f'{layer.name}_BIAS + {isa.lanes * (first + b)}')}"
                         for b in range(count))
        code.append(f"    {{\n        {isa.vec} {accs};\n" + inputs(first, count)
                    + "".join(f"        {out.store(isa.lanes * (first + b), f'a{b}')}\n" for b in range(count))
                    + "    }\n")
    return "".join(code)


def _vector_dense(layer: _Layer, out: _VectorOut, bias: np.ndarray) -> tuple[str, str]:
    """All outputs in registers over one pass over the inputs, each broadcast to every block."""
    isa = out.isa

    def inputs(first: int, count: int) -> str:
        weights = [isa.op("loadu_ps", f"&{layer.name}_W[j][{isa.lanes * (first + b)}]") for b in range(count)]
        fmas = [f"a{b} = {isa.op('fmadd_ps', weights[b], 'xj', f'a{b}')};" for b in range(count)]
        return (f"        for (j = 0; j < {layer.inputs}; ++j) {{\n"
                f"            const {isa.vec} xj = {isa.op('set1_ps', f'{layer.src}[j]')};\n"
                + "".join(f"            {fma}\n" for fma in fmas) + "        }\n")

    code = _vector_passes(layer, out, inputs, isa.dense_blocks)
    return (_array("float", f"{layer.name}_BIAS", bias, aligned=True)
            + _array("float", f"{layer.name}_W", layer.w.T, aligned=True)), code


def _pairwise_sum(terms: list[str], isa: VectorIsa) -> str:
    """The sum of registers `terms`, added in pairs."""
    while len(terms) > 1:
        terms = [isa.op("add_ps", a, b) for a, b in zip(terms[::2], terms[1::2])] + terms[len(terms) // 2 * 2:]
    return terms[0]


@dataclass(frozen=True)
class _Slot:
    """One ELL slot of a block: `groups` (usually one) it gathers from, the lanes each fills (`masks`, disjoint:
    the gathers are blended), an input index within its group and a weight for every lane (0 in padding)."""
    groups: tuple[int, ...]
    masks: tuple[int, ...]
    index: np.ndarray   # [lanes] int
    value: np.ndarray   # [lanes] float32


def _block_slots(cell_rows: np.ndarray, groups: int, group: int) -> list[_Slot]:
    """The slots of one block [lanes, inputs] in groups of `group` inputs: per group, as many as its longest row
    there (slot s takes each row's s-th nonzero), then slots whose lanes do not overlap merged, first fit from the
    fullest, so that one weight vector and multiply-add serve them (`_vector_ell`)."""
    single, width = [], cell_rows.shape[0]
    for g in range(groups):
        cell = cell_rows[:, group * g:group * (g + 1)]
        used = [np.flatnonzero(row) for row in cell]
        for s in range(max(len(u) for u in used)):
            lanes = [lane for lane, u in enumerate(used) if s < len(u)]
            index = np.zeros(width, np.int64)
            value = np.zeros(width, np.float32)
            for lane in lanes:
                index[lane] = used[lane][s]
                value[lane] = cell[lane, used[lane][s]]
            single.append(_Slot((g,), (sum(1 << lane for lane in lanes),), index, value))
    merged: list[_Slot] = []
    for slot in sorted(single, key=lambda t: -t.masks[0].bit_count()):
        for k, into in enumerate(merged):
            if not any(slot.masks[0] & m for m in into.masks):
                lanes = np.array([(slot.masks[0] >> lane) & 1 for lane in range(width)], bool)
                merged[k] = _Slot(into.groups + slot.groups, into.masks + slot.masks,
                                  np.where(lanes, slot.index, into.index), np.where(lanes, slot.value, into.value))
                break
        else:
            merged.append(slot)
    return sorted(merged, key=lambda t: t.groups[0])  # stable: each group's slots stay in order


def _vector_ell(layer: _Layer, out: _VectorOut, bias: np.ndarray, wide: bool,
                dense_columns: tuple[int, ...] = (), dot_rows: tuple[int, ...] = ()) -> tuple[str, str]:
    """ELL slots, straight-line: for each group of inputs (`VectorIsa.group`: a register pair on AVX-512,
    one register on AVX2) and block of outputs (a register), as many slots as the block's longest row there; a
    slot's lanes gather their input from the group by index and multiply-add it by their weight (zero in padding,
    which adds nothing as long as the inputs are finite). Slots of different groups whose lanes do not overlap
    share one weight vector and multiply-add (`_block_slots`): each of their gathers costs a shuffle
    as before, and they are blended (90% HalfCheetah on AVX-512: 411 slots -> 354 weight vectors). A block's
    slots take turns between ELL_CHAINS accumulators, added up at the end of the pass; passes of at most
    the ISA's pass_accumulators accumulators.
    `dense_columns` (`_dense_columns`) are multiplied first, each broadcast to every block; the
    slots cover the other inputs. `dot_rows` (`_dot_rows`) are dot products over registers of inputs, summed
    across lanes (`_lane_sums`) into their block's accumulator.

    `wide`: indices stored as the 32-bit lanes the permute reads. Otherwise packed_slots slots share
    one vector of indices, packed_bits a lane each, shifted into place (on port 0, where widening
    8-bit indices took the shuffle port the gathers saturate), stored beside their weights and
    read through a pointer the compiler cannot see through (`_packed_table`)."""
    isa, lanes = out.isa, out.isa.lanes
    w = layer.w.copy()
    dense_w = w[:, list(dense_columns)].T
    w[:, list(dense_columns)] = 0
    registers = -(-layer.inputs // lanes)
    dot_w = np.zeros((len(dot_rows), registers * lanes), np.float32)
    dot_w[:, :layer.inputs] = w[list(dot_rows)]
    w[list(dot_rows)] = 0
    slots: list[_Slot] = []

    def index_vector(s: int) -> str:
        if wide:
            return isa.load_indices(f"{layer.name}_IDX[{s}]")
        field = isa.packed_bits * (s % isa.packed_slots)
        # A variable shift: gcc reloads the indices from memory for every slot with an immediate
        # one (-5%, 90% HalfCheetah), where this one keeps them in a register.
        return isa.op("srlv_epi32", "idx", isa.op("set1_epi32", str(field))) if field else "idx"

    def group_registers(g: int) -> tuple[str, str]:
        start = isa.group * g
        return (_load(layer.src, start, layer.inputs, isa),
                _load(layer.src, start + lanes, layer.inputs, isa) if isa.pair else "")

    def inputs(first: int, count: int) -> str:
        code, chains, done = [], ELL_CHAINS, [0] * count
        if dense_columns:  # each broadcast to every block, as in _vector_dense
            row = f"{layer.name}_DENSE[j]"
            weights = [isa.op("load_ps", f"&{row}[{lanes * (first + b)}]") for b in range(count)]
            fmas = "".join(f"            a{b} = {isa.op('fmadd_ps', weights[b], 'xj', f'a{b}')};\n"
                           for b in range(count))
            broadcast = isa.op("set1_ps", f"{layer.src}[{layer.name}_COLUMNS[j]]")
            code.append(f"        for (j = 0; j < {len(dense_columns)}; ++j) {{\n"
                        f"            const {isa.vec} xj = {broadcast};\n" + fmas + "        }\n")
        first_slot = len(slots)
        groups = -(-layer.inputs // isa.group)
        blocks = [_block_slots(w[lanes * (first + b):lanes * (first + b + 1)], groups, isa.group)
                  for b in range(count)]
        for g in range(groups):
            lines = []
            for b in range(count):
                for slot in (t for t in blocks[b] if t.groups[0] == g):
                    s = len(slots)
                    slots.append(slot)
                    if not wide and (s % isa.packed_slots == 0 or s == first_slot):  # a pass may start mid-pack
                        pack = f"{layer.name}_PACKED[{s // isa.packed_slots}]"
                        lines.append(f"        idx = {isa.load_indices(f'{pack}.index')};\n")
                    chain = done[b] % chains
                    acc = f"c{chain}_{b}" if chain else f"a{b}"
                    done[b] += 1
                    i = index_vector(s)
                    gathered = isa.gather(i, "xl", "xh")
                    for other, mask in zip(slot.groups[1:], slot.masks[1:]):
                        gathered = isa.blend(gathered, mask, isa.gather(i, *group_registers(other)))
                    weights = isa.op("load_ps", f"{layer.name}_VAL[{s}]" if wide else
                                     f"{layer.name}_PACKED[{s // isa.packed_slots}].value[{s % isa.packed_slots}]")
                    lines.append(f"        {acc} = {isa.op('fmadd_ps', gathered, weights, acc)};\n")
            if lines:
                low, high = group_registers(g)
                code.append(f"        xl = {low};\n" + (f"        xh = {high};\n" if isa.pair else "") + "".join(lines))
        code += [d for d in (_dot_products(layer, dot_w, dot_rows, first + b, b, isa) for b in range(count)) if d]
        if not code:
            return ""
        extra = {b: [f"c{chain}_{b}" for chain in range(1, min(chains, done[b]))] for b in range(count)}
        declared = [c for chained in extra.values() for c in chained]
        gathers = f"        {isa.vec} xl{', xh' if isa.pair else ''};\n" + ("" if wide else (
            f"        const struct {layer.name}_pack *const {layer.name}_PACKED = {layer.name}_OPAQUE;\n"
            f"        {isa.vec}i idx;\n"))
        zero = isa.op("setzero_ps")
        return ((gathers if len(slots) > first_slot else "")
                + (f"        {isa.vec} {', '.join(f'{c} = {zero}' for c in declared)};\n" if declared else "")
                + "".join(code) + "".join(f"        a{b} = {_pairwise_sum([f'a{b}', *chained], isa)};\n"
                                          for b, chained in extra.items() if chained))

    blocks = layer.out // lanes
    passes = max(1, -(-blocks * ELL_CHAINS // isa.pass_accumulators))
    code = _vector_passes(layer, out, inputs, -(-blocks // passes))
    tables = _array("float", f"{layer.name}_BIAS", bias, aligned=True)
    if dot_rows:
        tables += _array("float", f"{layer.name}_DOT", dot_w, aligned=True)
    if dense_columns:
        tables += (_array("float", f"{layer.name}_DENSE", dense_w, aligned=True)
                   + _array(_index_type(layer.inputs), f"{layer.name}_COLUMNS", np.array(dense_columns), 16, _int))
    if slots:  # a layer without nonzeros has no slots to read them (and C has no empty arrays)
        index = np.array([t.index for t in slots], np.uint32)
        value = np.array([t.value for t in slots], np.float32)
        tables += ((_array("float", f"{layer.name}_VAL", value, aligned=True)
                    + _array("uint32_t", f"{layer.name}_IDX", index, 16, _int, aligned=True)) if wide
                   else _packed_table(layer.name, index, value, isa))
    return tables, code


def _dot_products(layer: _Layer, dot_w: np.ndarray, dot_rows: tuple[int, ...], block: int, acc: int,
                  isa: VectorIsa) -> str:
    """Statements adding the dot-product rows (`_dot_rows`) of `block` into accumulator a{acc}: each row's
    multiply-adds over the registers of inputs it uses, in DOT_PARTIALS chains, then the rows summed across lanes
    into their lanes of one register (`_lane_sums`)."""
    width = isa.lanes
    lanes, products = [""] * width, []
    for k, position in enumerate(dot_rows):
        if position // width != block:
            continue
        partials = [""] * DOT_PARTIALS
        used = [c for c in range(dot_w.shape[1] // width) if dot_w[k, width * c:width * (c + 1)].any()]
        for n, c in enumerate(used):
            product = (isa.op("load_ps", f"&{layer.name}_DOT[{k}][{width * c}]"),
                       _load(layer.src, width * c, layer.inputs, isa))
            chain = partials[n % DOT_PARTIALS]
            partials[n % DOT_PARTIALS] = isa.op("fmadd_ps", *product, chain) if chain else isa.op("mul_ps", *product)
        lanes[position % width] = f"d{k}"
        products.append(f"            const {isa.vec} d{k} = "
                        f"{_pairwise_sum([p for p in partials if p] or [isa.op('setzero_ps')], isa)};\n")
    if not products:
        return ""
    sums, total = _lane_sums(lanes, isa)
    return ("        {\n" + "".join(products) + sums.replace("    const", "            const")
            + f"            a{acc} = {isa.op('add_ps', f'a{acc}', total)};\n        }}\n")


def _packed_table(name: str, index: np.ndarray, value: np.ndarray, isa: VectorIsa) -> str:
    """Packs of packed_slots slots: their indices in one vector (slot k's in bits packed_bits k.. of each lane; the
    permute reads the low bits, an index within the group, and ignores the rest), then their weights. The kernel
    reads them through a volatile pointer: seeing the constants, gcc would shift them at compile time into a
    vector per slot."""
    lanes, per_pack = isa.lanes, isa.packed_slots
    packs = -(-len(index) // per_pack)
    fields = np.zeros((packs * per_pack, lanes), np.uint32)
    fields[:len(index)] = index
    shifts = (isa.packed_bits * np.arange(per_pack, dtype=np.uint32))[None, :, None]
    packed = (fields.reshape(packs, per_pack, lanes) << shifts).sum(1, dtype=np.uint32)
    weights = np.zeros((packs * per_pack, lanes), np.float32)
    weights[:len(value)] = value
    weights = weights.reshape(packs, per_pack, lanes)
    items = []
    for p in range(packs):
        rows = ",\n      ".join("{" + _initializer([_float(v) for v in row], 6, "       ") + "}" for row in weights[p])
        items.append(f"    {{{{{_initializer([_int(v) for v in packed[p]], 16, '      ')}}},\n     {{{rows}}}}}")
    return (f"struct {name}_pack {{\n    uint32_t index[{lanes}];\n    float value[{per_pack}][{lanes}];\n}};\n"
            f"static const struct {name}_pack {name}_PACKS[{packs}] TP_ALIGNED = {{\n" + ",\n".join(items) + "\n};\n"
            f"static const struct {name}_pack *const volatile {name}_OPAQUE = {name}_PACKS;\n")


def _lane_sums(accs: list[str], isa: VectorIsa) -> tuple[str, str]:
    """(statements, register) summing each of up to `lanes` registers across its lanes into lane
    r of one register, in registers: a tree of shuffles and adds (pairs of rows, then of 4-lane
    blocks), where scalar sums stored and reloaded as a vector stall store forwarding."""
    level = accs + [""] * (isa.lanes - len(accs))
    zero = isa.op("setzero_ps")
    code = []
    for depth, (low, high) in enumerate(isa.lane_sum_steps):
        merged = []
        for i in range(0, len(level), 2):
            a, b = level[i] or zero, level[i + 1] or zero
            name = f"r{depth}_{i // 2}"
            if level[i] or level[i + 1]:
                code.append(f"    const {isa.vec} {name} = "
                            f"{isa.op('add_ps', low.format(a=a, b=b), high.format(a=a, b=b))};\n")
            merged.append(name if level[i] or level[i + 1] else "")
        level = merged
    return "".join(code), level[0]


def _vector_rows(layer: _Layer, out: _VectorOut, bias: np.ndarray) -> tuple[str, str]:
    """Fewer outputs than lanes: each a dot product over registers of inputs, the rows'
    registers then summed across lanes into one, which goes through the activation. Each row
    keeps up to ROW_PARTIALS partial sums: one chain of multiply-adds per row would be as long
    as the input registers (16 x 4 cycles on a 256-input head, AVX-512), the head's critical path."""
    isa, lanes = out.isa, out.isa.lanes
    registers = -(-layer.inputs // lanes)
    w = np.zeros((layer.out, registers * lanes), np.float32)
    w[:, :layer.inputs] = layer.w
    rows = range(layer.out)
    partials = max(1, min(ROW_PARTIALS, registers, isa.row_registers // layer.out))

    zero = isa.op("setzero_ps")
    code = [f"    {isa.vec} {', '.join(f'a{r}_{p} = {zero}' for r in rows for p in range(partials))};\n"]
    for c in range(registers):
        partial = c % partials
        fmas = [isa.op("fmadd_ps", isa.op("load_ps", f"&{layer.name}_W[{r}][{lanes * c}]"), "xc", f"a{r}_{partial}")
                for r in rows]
        code.append(f"    {{\n        const {isa.vec} xc = {_load(layer.src, lanes * c, layer.inputs, isa)};\n"
                    + "".join(f"        a{r}_{partial} = {fmas[r]};\n" for r in rows) + "    }\n")
    code += [f"    const {isa.vec} a{r} = {_pairwise_sum([f'a{r}_{p}' for p in range(partials)], isa)};\n"
             for r in rows]
    sums, total = _lane_sums([f"a{r}" for r in rows], isa)
    biased = isa.op("add_ps", total, isa.op("loadu_ps", f"{layer.name}_BIAS"))
    code.append(sums + f"    {out.store(0, biased)}\n")
    padded = np.zeros(lanes, np.float32)
    padded[:layer.out] = bias
    return (_array("float", f"{layer.name}_BIAS", padded, aligned=True)
            + _array("float", f"{layer.name}_W", w, aligned=True)), "".join(code)


_ALIGNED = """#if defined(__GNUC__)
#define TP_ALIGNED __attribute__((aligned(64)))
#else
#define TP_ALIGNED
#endif
"""
_AVX512_PREAMBLE = """#include <immintrin.h>

/* x86 with AVX-512 (see c_codegen's docstring): hidden vectors are permuted and padded to
   whole registers; a sparse layer is ELL slots, each gathering 16 inputs from the register
   pair xl, xh of its group by index (32-bit where the tables still fit the L1 data cache,
   else 5-bit fields of a vector shared by 6 slots) and multiply-adding them into an
   accumulator. */
""" + _ALIGNED
_AVX2_PREAMBLE = """#include <immintrin.h>

/* x86 with AVX2 and FMA, without AVX-512 (see c_codegen's docstring): the AVX-512 branch's
   kernels in 8-float registers; an ELL slot gathers 8 inputs from the register xl of its group
   of 8 by index (32-bit where the tables still fit the L1 data cache, else 3-bit fields of a
   vector shared by 10 slots). */
""" + _ALIGNED

# libm's tanhf takes 10-35 ns a call, as long as the rest of a small actor's head; the vector tanh is the last step
# of a call, all latency: as exp by range reduction (1.4 ulp) it took 25 ns of the 98% Hopper actor's 84 (AVX-512).
# One rational function for both ISAs (VEC, MM: the register type and intrinsic prefix); they differ in how
# they form +-1 and pick it beyond |x| = 8 (SATURATE).
_TANH_TEMPLATE = """/* tanh of LANES floats, within 6.1 ulp of tanh in double on every float (checked exhaustively), NaN
   stays NaN: x P(x^2) / Q(x^2), both of degree 4 (a rational minimax fit on [0, 9], relative error
   2e-8 before float rounding), by Estrin's scheme: about 40 cycles from x to the result where an
   exp, a division and a blend of two branches took about 90. Beyond |x| = 8, where the fit could
   round past 1, the result is +-1 (tanh(8) is 1 - 3.8 ulp). */
static inline VEC tp_tanh(VEC x)
{
    const VEC t = MM_mul_ps(x, x), t2 = MM_mul_ps(t, t), t4 = MM_mul_ps(t2, t2);
    const VEC p01 = MM_fmadd_ps(MM_set1_ps(1.338102795e-01f), t, MM_set1_ps(1.0f));
    const VEC p23 = MM_fmadd_ps(MM_set1_ps(2.060912249e-05f), t, MM_set1_ps(3.495590784e-03f));
    const VEC q01 = MM_fmadd_ps(MM_set1_ps(4.671434355e-01f), t, MM_set1_ps(1.0f));
    const VEC q23 = MM_fmadd_ps(MM_set1_ps(3.285639006e-04f), t, MM_set1_ps(2.587699254e-02f));
    const VEC p = MM_fmadd_ps(MM_set1_ps(1.335471126e-08f), t4, MM_fmadd_ps(p23, t2, p01));
    const VEC q = MM_fmadd_ps(MM_set1_ps(7.776579872e-07f), t4, MM_fmadd_ps(q23, t2, q01));
SATURATE}

"""
_AVX512_TANH = _TANH_TEMPLATE.replace("LANES", "16").replace("VEC", "__m512").replace("MM", "_mm512").replace(
    "SATURATE", """    const __m512 one = _mm512_castsi512_ps(_mm512_ternarylogic_epi32( /* (x & sign bit) | 1.0f */
        _mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN), _mm512_castps_si512(_mm512_set1_ps(1.0f)), 0xea));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(8.0f), _CMP_GT_OQ),
                                _mm512_div_ps(_mm512_mul_ps(x, p), q), one);
""")
_AVX2_TANH = _TANH_TEMPLATE.replace("LANES", "8").replace("VEC", "__m256").replace("MM", "_mm256").replace(
    "SATURATE", """    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(x, sign), _mm256_set1_ps(1.0f)); /* (x & sign bit) | 1.0f */
    return _mm256_blendv_ps(_mm256_div_ps(_mm256_mul_ps(x, p), q), one,
                            _mm256_cmp_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(8.0f), _CMP_GT_OQ));
""")

AVX512 = VectorIsa(
    "AVX-512", ("__AVX512F__",), "_mm512", lanes=16, pair=True, masked=True,
    dense_blocks=16, pass_accumulators=16, row_registers=24,
    # first layers of the three benchmark actors on the dev box, either kernel: 0.63-0.65 ns a slot, 0.24-0.25 ns a
    # multiply-add of 16 lanes
    slot_cost=2.6, order_passes=4,
    # ELL indices stay wide while the tables fit most of the dev box's 48 KB L1 data cache: the 95% HalfCheetah
    # actor's (42 KB) ran 25% faster wide than with 8-bit indices and 6% faster than packed, the 90% one's (76 KB
    # wide, 56 KB 8-bit) 20% slower.
    l1_bytes=45056, packed_slots=6, packed_bits=5, preamble=_AVX512_PREAMBLE, tanh=_AVX512_TANH,
    lane_sum_steps=(("_mm512_unpacklo_ps({a}, {b})", "_mm512_unpackhi_ps({a}, {b})"),
                    ("_mm512_shuffle_ps({a}, {b}, 0x44)", "_mm512_shuffle_ps({a}, {b}, 0xee)"),
                    ("_mm512_shuffle_f32x4({a}, {b}, 0x88)", "_mm512_shuffle_f32x4({a}, {b}, 0xdd)"),
                    ("_mm512_shuffle_f32x4({a}, {b}, 0x88)", "_mm512_shuffle_f32x4({a}, {b}, 0xdd)")))
# 16 registers instead of 32: passes keep fewer accumulators. The L1 data cache of AVX2-only x86 cores is 32 KB.
AVX2 = VectorIsa(
    "AVX2", ("__AVX2__", "__FMA__"), "_mm256", lanes=8, pair=False, masked=False,
    dense_blocks=12, pass_accumulators=8, row_registers=12,
    # a slot is a permute, an FMA and an index load against the FMA of a dense register: on the AVX2 EPYC (Zen 3),
    # pricing it 3.5 took the three benchmark actors 137 -> 124 ns (98% Hopper: its first layer dense), 437 -> 427
    # and 806 -> 799 ns against 2.6 (chained latency, interleaved, median of 7 rounds); 1.8 was no better.
    slot_cost=3.5,
    # Four times as many (block, group) cells as AVX-512's make each pass of the searches slower: on the 90%
    # HalfCheetah actor one pass took the plan from 22 to 9 s (beside training), its cost within 1% on both HalfCheetah
    # actors.
    order_passes=1,
    l1_bytes=28672, packed_slots=10, packed_bits=3, preamble=_AVX2_PREAMBLE, tanh=_AVX2_TANH,
    lane_sum_steps=(("_mm256_unpacklo_ps({a}, {b})", "_mm256_unpackhi_ps({a}, {b})"),
                    ("_mm256_shuffle_ps({a}, {b}, 0x44)", "_mm256_shuffle_ps({a}, {b}, 0xee)"),
                    ("_mm256_permute2f128_ps({a}, {b}, 0x20)", "_mm256_permute2f128_ps({a}, {b}, 0x31)")))
# actor.c's and actor_dense.c's vector branches, in the order the preprocessor tries them.
VECTOR_ISAS = (AVX512, AVX2)


def _vector_kernel(policy: MLPPolicy, function: str, plan: list[_VectorLayer], isa: VectorIsa) -> str:
    """A vector branch of actor.c: tables, one function per layer, `function`."""
    normalise = _normalises(policy)
    width = max(len(v.order) for v in plan)
    wide = _table_bytes(plan, isa, wide=True) <= isa.l1_bytes
    tables, layers, calls = [], [], []
    source = "x"
    for k, (w, vector) in enumerate(zip(policy.weights, plan)):
        last = k == len(plan) - 1
        dst = f"h{k % 2}"
        out = (_VectorOut("actions", "tanh" if policy.output == "tanh" else "clip", policy.act_dim, isa) if last
               else _VectorOut(dst, policy.hidden_activation, len(vector.order), isa))
        layer = _Layer(f"V{k}", vector.w, "x", dst, skip_zero=False)
        if vector.kind == "ell":
            table, code = _vector_ell(layer, out, vector.bias, wide, vector.dense_columns, vector.dot_rows)
        else:
            table, code = {"rows": _vector_rows, "dense": _vector_dense}[vector.kind](layer, out, vector.bias)
        tables.append(table)
        details = ([f"{vector.slots} slots"] if vector.slots else []) + (
            [f"{len(vector.dense_columns)} dense inputs"] if vector.dense_columns else []) + (
            [f"{len(vector.dot_rows)} dot-product rows"] if vector.dot_rows else [])
        kind = f"{isa.name} {vector.kind}" + (f" ({', '.join(details)})" if details else "")
        # Inlined into the actor: the next layer's loads of the outputs just stored become register reads, and the
        # compiler may interleave the end of one layer with the start of the next (2-3% on the three actors).
        layers.append(f"static inline void layer{k}(const float *restrict x, float *restrict actions)\n{{\n"
                      + ("    int j;\n" if "for (j = 0;" in code else "") + "    (void)actions;\n"
                      + _comment(k, w, kind, policy.output if last else policy.hidden_activation) + code + "}\n\n")
        calls.append(f"    layer{k}({source}, actions);\n")
        source = dst
    tanh = "tanh" in (policy.output, policy.hidden_activation)
    buffers = ", ".join(f"h{k}[{width}] TP_ALIGNED" for k in range(min(2, len(plan) - 1)))
    return (isa.preamble + (isa.tanh if tanh else "") + "".join(tables)
            + (f"\nstatic float {buffers};\n\n" if buffers else "\n")
            + "".join(layers) + f"void {function}(const float *obs, float *actions)\n{{\n"
            + ("    int i;\n" if normalise else "") + _input(normalise) + "".join(calls) + "}\n")


# --- the int8 kernel -----------------------------------------------------------------------

@dataclass(frozen=True)
class _Gemm:
    weight: np.ndarray                 # float32 [out, in], or int8 codes when quantised
    bias: np.ndarray                   # float32 [out]: dequantised for a quantised layer
    quantised: bool
    input_scale: float = 0.0           # quantised: the uint8 codes of the input
    input_zero: int = 0
    input_range: tuple[int, int] = (0, 255)
    channel_scale: np.ndarray | None = None   # quantised: input scale x weight scale, per output


@dataclass(frozen=True)
class _Elementwise:
    op: str                            # relu, tanh, clip, qdq, mul, add, sub, div
    values: tuple = ()                 # constants: a vector, or (scale, zero, low, high) for qdq


class Int8GraphError(ValueError):
    """actor.int8.onnx has a node pattern the int8 C kernel does not implement."""


def _int8_program(model: onnx.ModelProto) -> list[_Gemm | _Elementwise]:
    """The int8 graph as a chain of Gemm layers and elementwise steps, from `obs` to
    `actions`, with every constant dequantised exactly as ONNX Runtime reads it."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def qparams(node: onnx.NodeProto) -> tuple[float, int, tuple[int, int]]:
        zero = inits[node.input[2]]
        info = np.iinfo(zero.dtype)
        return float(inits[node.input[1]]), int(zero), (int(info.min), int(info.max))

    def constant(name: str) -> np.ndarray:
        if name in inits:
            return inits[name].astype(np.float32)
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            raise Int8GraphError(f"{name} is not a constant")
        q, scale = inits[node.input[0]], inits[node.input[1]].astype(np.float32)
        zero = inits[node.input[2]] if len(node.input) > 2 else np.zeros_like(q)
        if q.ndim == 2 and scale.ndim == 1:
            scale, zero = scale[:, None], np.asarray(zero)[:, None]
        return ((q.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)

    def only_consumer(name: str) -> onnx.NodeProto:
        found = consumers.get(name, [])
        if len(found) != 1:
            raise Int8GraphError(f"{name} feeds {len(found)} nodes, expected a chain")
        return found[0]

    program: list[_Gemm | _Elementwise] = []
    current = "obs"
    while current != "actions":
        node = only_consumer(current)
        op = node.op_type
        if op == "QuantizeLinear":
            dq = only_consumer(node.output[0])
            if dq.op_type != "DequantizeLinear":
                raise Int8GraphError(f"QuantizeLinear {node.name} is not followed by DequantizeLinear")
            scale, zero, bounds = qparams(node)
            following = consumers.get(dq.output[0], [])
            if (len(following) == 1 and following[0].op_type == "Gemm" and following[0].input[0] == dq.output[0]
                    and producer.get(following[0].input[1]) is not None):
                gemm = following[0]
                wdq = producer[gemm.input[1]]
                codes, wscale = inits[wdq.input[0]], inits[wdq.input[1]].astype(np.float32)
                if np.any(inits[wdq.input[2]] != 0) or codes.dtype != np.int8:
                    raise Int8GraphError(f"{gemm.name}: weights are not symmetric int8")
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
                if attrs.get("transB") != 1:
                    raise Int8GraphError(f"{gemm.name}: expected transB=1")
                channel = (np.float32(scale) * np.broadcast_to(wscale, (codes.shape[0],))).astype(np.float32)
                program.append(_Gemm(codes, constant(gemm.input[2]), True, np.float32(scale), zero, bounds,
                                     channel))
                current = gemm.output[0]
            else:
                program.append(_Elementwise("qdq", (scale, zero, *bounds)))
                current = dq.output[0]
        elif op == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transB") != 1:
                raise Int8GraphError(f"{node.name}: expected transB=1")
            program.append(_Gemm(constant(node.input[1]), constant(node.input[2]), False))
            current = node.output[0]
        elif op in ("Relu", "Tanh"):
            program.append(_Elementwise(op.lower()))
            current = node.output[0]
        elif op == "Clip":
            program.append(_Elementwise("clip", (float(constant(node.input[1])), float(constant(node.input[2])))))
            current = node.output[0]
        elif op in ("Mul", "Add", "Sub", "Div"):
            if node.input[0] != current:
                raise Int8GraphError(f"{node.name}: the running value must be the first operand")
            program.append(_Elementwise(op.lower(), tuple(np.ravel(constant(node.input[1])).tolist())))
            current = node.output[0]
        else:
            raise Int8GraphError(f"unsupported node {op} ({node.name})")
    return program


_QUANTISE_HELPERS = """/* Round half to even, as QuantizeLinear does, without rintf (a library call on Cortex-M):
   adding and subtracting 1.5 * 2^23 leaves the nearest integer in float32 arithmetic for
   |v| < 2^22, which the clamp guarantees. */
static float tp_round(float v, float low, float high)
{
    if (v < low) v = low;
    if (v > high) v = high;
    return (v + 12582912.0f) - 12582912.0f;
}

/* QuantizeLinear then DequantizeLinear. */
static float tp_qdq(float v, float scale, float zero, float low, float high)
{
    return (tp_round(v / scale + zero, low, high) - zero) * scale;
}

"""


def _elementwise(step: _Elementwise, v: str, k: int) -> tuple[str, str]:
    """(tables, expression) of one elementwise step applied to value `v` at index i."""
    if step.op == "relu":
        return "", f"{v} > 0.0f ? {v} : 0.0f"
    if step.op == "tanh":
        return "", f"tanhf({v})"
    if step.op == "clip":
        low, high = (_float(c) for c in step.values)
        return "", f"{v} < {low} ? {low} : ({v} > {high} ? {high} : {v})"
    if step.op == "qdq":
        scale, zero, low, high = step.values
        return "", f"tp_qdq({v}, {_float(scale)}, {_float(zero)}, {_float(low)}, {_float(high)})"
    name = f"C{k}"
    values = np.asarray(step.values, np.float32)
    operand = f"{name}[i]" if values.size > 1 else _float(values[0])
    symbol = {"mul": "*", "add": "+", "sub": "-", "div": "/"}[step.op]
    return (_array("float", name, values) if values.size > 1 else ""), f"{v} {symbol} {operand}"


def int8_source(int8_onnx: onnx.ModelProto) -> str:
    """actor_int8.c: the computation of actor.int8.onnx, quantised layers sparse in int8."""
    program = _int8_program(int8_onnx)
    gemms = [s for s in program if isinstance(s, _Gemm)]
    width = max(g.weight.shape[0] for g in gemms)
    widest_input = max(g.weight.shape[1] for g in gemms)
    tables, body = [], []
    source, relu_before, n = "obs", False, None
    pending: list[str] = []

    def flush(buffer: str, target: str) -> None:
        if pending:
            statements = "".join(f"        v = {e};\n" for e in pending)
            body.append(f"    for (i = 0; i < {n}; ++i) {{\n        float v = {buffer}[i];\n{statements}"
                        f"        {target}[i] = v;\n    }}\n")
            pending.clear()
        elif target != buffer:
            body.append(f"    for (i = 0; i < {n}; ++i)\n        {target}[i] = {buffer}[i];\n")

    k = 0
    for index, step in enumerate(program):
        if isinstance(step, _Elementwise):
            n = n or gemms[0].weight.shape[1]  # steps on the observations (normalisation)
            table, expression = _elementwise(step, "v", index)
            tables.append(table)
            pending.append(expression)
            relu_before = step.op == "relu" or (relu_before and step.op == "qdq")
            continue
        dst = f"h{k % 2}"
        if source != "obs" or pending:
            target = "xin" if source == "obs" else source
            flush(source, target)
            source = target
        w = step.weight
        kind = layer_kind(w, compact=True) if not step.quantised else (
            "csr" if w.shape[0] <= ROW_WISE_MAX_ROWS else "csc")
        if step.quantised:
            low, high = step.input_range
            body.append(f"    for (i = 0; i < {w.shape[1]}; ++i)\n"
                        f"        q[i] = (int16_t)(tp_round({source}[i] / {_float(step.input_scale)} + "
                        f"{_float(step.input_zero)}, {_float(low)}, {_float(high)}) - {_float(step.input_zero)});\n")
            # Codes are zero-point-shifted, so a zero contributes nothing: skipping it is exact.
            layer = _Layer(f"L{k}", w.astype(np.int32), "q", dst, skip_zero=True, ctype="int8_t", acc="iacc")
            table, loop = _layer_code(layer, kind, step.bias)
            tables += [table, _array("float", f"L{k}_SCALE", step.channel_scale)]
            body += [_comment(k, w, kind, "int8 weights, uint8 inputs, int32 sums"), loop,
                     f"    for (i = 0; i < {w.shape[0]}; ++i)\n"
                     f"        {dst}[i] = (float)iacc[i] * L{k}_SCALE[i] + L{k}_BIAS[i];\n"]
        else:
            layer = _Layer(f"L{k}", w, source, dst, skip_zero=relu_before)
            table, loop = _layer_code(layer, kind, step.bias)
            tables.append(table)
            body += [_comment(k, w, kind, "float"), loop]
        source, n, relu_before, k = dst, w.shape[0], False, k + 1
    flush(source, "actions")
    nnz = sum(int(np.count_nonzero(g.weight)) for g in gemms)
    return ("/* Generated by tinypolicy: int8 sparse policy (actor.int8.onnx's quantisation), "
            f"{nnz} nonzero weights. */\n" + _PREAMBLE + _QUANTISE_HELPERS + "".join(tables) + "\n"
            f"void {KERNELS['int8'].function}(const float *obs, float *actions)\n{{\n"
            f"    static float h0[{width}], h1[{width}], xin[TP_OBS_DIM];\n"
            f"    static int16_t q[{widest_input}];\n    static int32_t iacc[{width}];\n"
            + _LOOP_VARIABLES + "    (void)q; (void)iacc; (void)xin;\n" + "".join(body) + "}\n")


def int8_output_step(int8_onnx: str | Path | onnx.ModelProto) -> float:
    """One quantisation step of the int8 model's actions: the scale of the DequantizeLinear
    that produces them (0 when the actions are not quantised)."""
    model = int8_onnx if isinstance(int8_onnx, onnx.ModelProto) else onnx.load(str(int8_onnx))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if "actions" in node.output and node.op_type == "DequantizeLinear":
            return float(numpy_helper.to_array(inits[node.input[1]]))
    return 0.0


def int8_parity_tolerance(step: float) -> float:
    """The largest |C int8 kernel - ONNX Runtime| accepted on actor.int8.onnx's actions, given
    their quantisation step (`int8_output_step`): one step. Actions that are not quantised
    (step 0) are not rounded to a grid that could split the two, so they must be equal."""
    return step * INT8_STEP_SLACK


# A hidden value within float round-off of a rounding tie (x.5 codes) is quantised one way by
# ONNX Runtime and the other by the C kernel when their float arithmetic differs in the last
# bit (fused multiply-add, summation order); the following layers can amplify that one code
# to several output steps. Such rows are rare (1 of 10,000 observations in the worst actor
# measured) while a wrong kernel misses on most rows, so parity allows this share of them.
INT8_TIE_ROWS = 1e-3


def int8_rows_apart(c_actions: np.ndarray, ort_actions: np.ndarray, step: float) -> dict[str, float | int | bool]:
    """Parity of the C int8 kernel with ONNX Runtime on actor.int8.onnx, row by row: the largest
    difference, how many rows differ by more than one quantisation step and whether that is
    within `INT8_TIE_ROWS` of them (rounding ties)."""
    diff = np.abs(c_actions.astype(np.float64) - ort_actions.astype(np.float64)).max(axis=1)
    beyond = int((diff > int8_parity_tolerance(step)).sum())
    return {"max_abs_error": float(diff.max()), "quantisation_step": step, "rows": len(diff),
            "rows_beyond_one_step": beyond, "passed": beyond <= INT8_TIE_ROWS * len(diff)}


def int8_steps_apart(diff: float, step: float) -> float | None:
    """`diff` in quantisation steps of the int8 actions; None when they are not quantised."""
    return diff / step if step > 0 else None


def int8_table_bytes(int8_onnx: onnx.ModelProto) -> int:
    """Bytes of actor_int8.c's tables: float layers as in actor.c, quantised layers int8
    values with their indices, a float scale and bias per output."""
    total = 0
    for step in _int8_program(int8_onnx):
        if not isinstance(step, _Gemm):
            continue
        w = step.weight
        if step.quantised:
            total += _sparse_bytes(w, "csr" if w.shape[0] <= ROW_WISE_MAX_ROWS else "csc", 1) + 8 * w.shape[0]
        else:
            total += _weight_bytes(w, layer_kind(w, compact=True)) + 4 * w.shape[0]
    return total


def _header(policy: MLPPolicy, int8: bool) -> str:
    sparse, dense, int8_kernel = (KERNELS[name].function for name in ("sparse", "dense", "int8"))
    int8_decl = ("\n/* The int8 policy of actor.int8.onnx (same quantisation), sparse. Not reentrant. */\n"
                 f"void {int8_kernel}(const float *obs, float *actions);\n" if int8 else "")
    return f"""/* Generated by tinypolicy: policy API. Do not edit. */
#ifndef TP_ACTOR_H
#define TP_ACTOR_H

#define TP_OBS_DIM {policy.obs_dim}
#define TP_ACT_DIM {policy.act_dim}

/* Sparse policy (dead neurons removed): TP_OBS_DIM observations in env units -> TP_ACT_DIM actions in
   env units. Uses static scratch buffers: not reentrant. */
void {sparse}(const float *obs, float *actions);

/* Dense reference of the same policy (before dead-neuron removal), vectorised. */
void {dense}(const float *obs, float *actions);
{int8_decl}
#endif
"""


def write_c_sources(sparse: MLPPolicy, out_dir: str | Path, dense: MLPPolicy | None = None,
                    int8_onnx: onnx.ModelProto | None = None) -> list[Path]:
    """Write actor.h, actor.c (sparse kernel of `sparse`), actor_dense.c (dense kernel of
    `dense`, default `sparse`) and, given the int8 model, actor_int8.c into `out_dir`;
    returns their paths."""
    dense = dense or sparse
    if (sparse.obs_dim, sparse.act_dim) != (dense.obs_dim, dense.act_dim):
        raise ValueError("the sparse and dense policies must have the same input and output dims")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {HEADER: _header(sparse, int8_onnx is not None), SPARSE: sparse_source(sparse),
             DENSE: dense_source(dense)}
    if int8_onnx is not None:
        texts[INT8] = int8_source(int8_onnx)
    paths = []
    for name, text in texts.items():
        write_text(out / name, text)
        paths.append(out / name)
    return paths


def host_compiler() -> str:
    """The host's C compiler (gcc, else cc); RuntimeError when there is none."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    return cc


def host_branch(cflags: tuple[str, ...] = HOST_CFLAGS) -> str:
    """Which branch of actor.c the host compiler takes with `cflags`: a `VectorIsa` name, or "portable"."""
    macros = subprocess.run([host_compiler(), *(f for f in cflags if not f.startswith("-W")), "-dM", "-E", "-x", "c",
                             "-"], input="", capture_output=True, text=True, check=True).stdout
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ")}
    return next((isa.name for isa in VECTOR_ISAS if set(isa.macros) <= defined), "portable")


def compile_shared(src_dir: str | Path, output: str | Path, extra_sources: tuple[Path, ...] = (),
                   cflags: tuple[str, ...] = HOST_CFLAGS) -> Path:
    """Compile the kernels in `src_dir` (actor.c, actor_dense.c and actor_int8.c where
    present, plus `extra_sources`) with the warning flags as errors into a shared library
    for ctypes; raises RuntimeError with gcc's message."""
    src = Path(src_dir)
    kernels = [str(src / k.source) for k in KERNELS.values() if (src / k.source).is_file()]
    cmd = [host_compiler(), *cflags, "-fPIC", "-shared", f"-I{src}", *kernels, *map(str, extra_sources),
           "-o", str(output), "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return Path(output)
