/* Throughput of the instructions behind actor.c's AVX2 ELL slots, on this core (benchmarks/slot_cost.py).
 *
 * A slot gathers 8 inputs from one register by index (vpermps) and multiply-adds them into an
 * accumulator (vfmadd231ps); the dense kernel is multiply-adds alone. Each test runs 8 or 12
 * independent chains of straight-line inline assembly, so the compiler cannot fold or reorder
 * them and no chain waits on another: what is timed is how fast the core issues the mix.
 * Prints one JSON object: ns per instruction (per pair for the pair test). */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "slot_cost.c measures the AVX2 branch: compile with -mavx2 -mfma (or -march=native on an AVX2 host)"
#endif
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define CHAINS12 "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4), "+x"(x5), "+x"(x6), "+x"(x7), \
                 "+x"(x8), "+x"(x9), "+x"(x10), "+x"(x11)

int main(int argc, char **argv)
{
    const long n = argc > 1 ? atol(argv[1]) : 20000000L;
    const __m256 w = _mm256_set1_ps(1.0f);
    const __m256i idx = _mm256_setr_epi32(3, 1, 4, 1, 5, 2, 6, 7);
    __m256 x0 = w, x1 = w, x2 = w, x3 = w, x4 = w, x5 = w, x6 = w, x7 = w, x8 = w, x9 = w, x10 = w, x11 = w;
    double t0, fma, permute, pair;
    long i;

    t0 = now();
    for (i = 0; i < n; ++i)
        __asm__ volatile(
            "vfmadd231ps %12, %12, %0\n\tvfmadd231ps %12, %12, %1\n\tvfmadd231ps %12, %12, %2\n\t"
            "vfmadd231ps %12, %12, %3\n\tvfmadd231ps %12, %12, %4\n\tvfmadd231ps %12, %12, %5\n\t"
            "vfmadd231ps %12, %12, %6\n\tvfmadd231ps %12, %12, %7\n\tvfmadd231ps %12, %12, %8\n\t"
            "vfmadd231ps %12, %12, %9\n\tvfmadd231ps %12, %12, %10\n\tvfmadd231ps %12, %12, %11"
            : CHAINS12 : "x"(w));
    fma = (now() - t0) / (12.0 * (double)n);

    t0 = now();
    for (i = 0; i < n; ++i)
        __asm__ volatile(
            "vpermps %12, %13, %0\n\tvpermps %12, %13, %1\n\tvpermps %12, %13, %2\n\tvpermps %12, %13, %3\n\t"
            "vpermps %12, %13, %4\n\tvpermps %12, %13, %5\n\tvpermps %12, %13, %6\n\tvpermps %12, %13, %7"
            : CHAINS12 : "x"(w), "x"(idx));
    permute = (now() - t0) / (8.0 * (double)n);

    /* a slot: gather into a temporary, multiply-add it into one of 8 accumulators */
    t0 = now();
    for (i = 0; i < n; ++i)
        __asm__ volatile(
            "vpermps %12, %13, %%ymm14\n\tvfmadd231ps %%ymm14, %12, %0\n\t"
            "vpermps %12, %13, %%ymm15\n\tvfmadd231ps %%ymm15, %12, %1\n\t"
            "vpermps %12, %13, %%ymm14\n\tvfmadd231ps %%ymm14, %12, %2\n\t"
            "vpermps %12, %13, %%ymm15\n\tvfmadd231ps %%ymm15, %12, %3\n\t"
            "vpermps %12, %13, %%ymm14\n\tvfmadd231ps %%ymm14, %12, %4\n\t"
            "vpermps %12, %13, %%ymm15\n\tvfmadd231ps %%ymm15, %12, %5\n\t"
            "vpermps %12, %13, %%ymm14\n\tvfmadd231ps %%ymm14, %12, %6\n\t"
            "vpermps %12, %13, %%ymm15\n\tvfmadd231ps %%ymm15, %12, %7"
            : CHAINS12 : "x"(w), "x"(idx) : "ymm14", "ymm15");
    pair = (now() - t0) / (8.0 * (double)n);

    printf("{\"fma_ns\": %.5f, \"permute_ns\": %.5f, \"permute_fma_pair_ns\": %.5f}\n",
           1e9 * fma, 1e9 * permute, 1e9 * pair);
    return 0;
}
