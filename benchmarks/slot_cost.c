/* Issue rates of the instructions behind actor.c's AVX2 ELL slots, on this core (benchmarks/slot_cost.py).
 *
 * A slot gathers 8 inputs by index (vpermps) from one register, or from several merged by blends,
 * and multiply-adds them with a register of weights into an accumulator (vfmadd231ps); the dense
 * kernel is multiply-adds alone. Each test is straight-line inline assembly over 8 or 12
 * independent accumulators, so the compiler cannot fold or reorder it and no chain waits on
 * another: what is timed is how fast the core issues the mix.
 * Prints one JSON object: ns per instruction, per slot of 1-4 gathers (`slot_ns`), and per slot of 1
 * followed by 2 plain multiply-adds (`slot_and_2_fma_ns`), and per slot on the hardware gather. */
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

#define CHAINS8 "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4), "+x"(x5), "+x"(x6), "+x"(x7)
#define CHAINS12 CHAINS8, "+x"(x8), "+x"(x9), "+x"(x10), "+x"(x11)

int main(int argc, char **argv)
{
    const long n = argc > 1 ? atol(argv[1]) : 20000000L;
    const __m256 w = _mm256_set1_ps(1.0f);
    const __m256i idx = _mm256_setr_epi32(3, 1, 4, 1, 5, 2, 6, 7);
    __m256 x0 = w, x1 = w, x2 = w, x3 = w, x4 = w, x5 = w, x6 = w, x7 = w, x8 = w, x9 = w, x10 = w, x11 = w;
    double t0, fma, permute, slot[6];
    long i;
    int k = 0;
    static float inputs[32] __attribute__((aligned(32))), weights[256] __attribute__((aligned(32)));
    const __m256i packed = _mm256_set1_epi32(0x1234567), shift = _mm256_set1_epi32(3);
    const __m256 inputs_in_hand = _mm256_set1_ps(0.5f);
    const __m256i anywhere = _mm256_setr_epi32(3, 9, 14, 17, 22, 26, 29, 31);

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

    /* slots as actor.c's AVX2 branch compiles them: the slot's index lanes shifted out of a packed
     * vector (vpsrlvd), K gathers (the first from the register of inputs in hand, the others straight
     * from the input vector in memory) merged by K - 1 blends, multiply-added with a register of
     * weights read from memory into one of 8 accumulators. K = 1 is a plain slot. The tables here
     * sit in the L1 cache: this is the issue rate, not the rate of streaming the actor's tables. */
#define SHIFT "vpsrlvd %9, %8, %%ymm15\n\t"
#define GATHER_REG "vpermps %10, %%ymm15, %%ymm12\n\t"
#define GATHER_MEM(offset) "vpermps " #offset "(%11), %%ymm15, %%ymm13\n\t"
#define BLEND "vblendps $0x0f, %%ymm13, %%ymm12, %%ymm12\n\t"
#define FMA(acc) "vfmadd231ps " #acc "*32(%12), %%ymm12, %" #acc "\n\t"
#define SLOT1(acc) SHIFT GATHER_REG FMA(acc)
#define SLOT2(acc) SHIFT GATHER_REG GATHER_MEM(32) BLEND FMA(acc)
#define SLOT3(acc) SHIFT GATHER_REG GATHER_MEM(32) BLEND GATHER_MEM(64) BLEND FMA(acc)
#define SLOT4(acc) SHIFT GATHER_REG GATHER_MEM(32) BLEND GATHER_MEM(64) BLEND GATHER_MEM(96) BLEND FMA(acc)
/* a slot of 1 gather, then 2 multiply-adds of a dense layer: whether those hide behind the slot */
#define MIXED(acc) SLOT1(acc) "vfmadd231ps " #acc "*32+256(%12), %%ymm13, %" #acc "\n\t" \
    "vfmadd231ps " #acc "*32+512(%12), %%ymm13, %" #acc "\n\t"
/* the same slot with AVX2's hardware gather (vgatherdps: 8 inputs from anywhere in memory, under a mask
 * it clears, so the mask is set again each time) instead of a shifted index and vpermps */
#define HARDWARE(acc) "vpcmpeqd %%ymm13, %%ymm13, %%ymm13\n\tvgatherdps %%ymm13, (%11,%13,4), %%ymm12\n\t" FMA(acc)
#define SLOTS(S) \
    t0 = now(); \
    for (i = 0; i < n; ++i) \
        __asm__ volatile(S(0) S(1) S(2) S(3) S(4) S(5) S(6) S(7) \
                         : CHAINS8 : "x"(packed), "x"(shift), "x"(inputs_in_hand), "r"(inputs), "r"(weights), \
                           "x"(anywhere) : "ymm12", "ymm13", "ymm15", "memory"); \
    slot[k++] = (now() - t0) / (8.0 * (double)n)
    SLOTS(SLOT1);
    SLOTS(SLOT2);
    SLOTS(SLOT3);
    SLOTS(SLOT4);
    SLOTS(MIXED);
    SLOTS(HARDWARE);

    printf("{\"fma_ns\": %.5f, \"permute_ns\": %.5f, \"slot_ns\": [%.5f, %.5f, %.5f, %.5f], "
           "\"slot_and_2_fma_ns\": %.5f, \"hardware_gather_slot_ns\": %.5f}\n", 1e9 * fma, 1e9 * permute,
           1e9 * slot[0], 1e9 * slot[1], 1e9 * slot[2], 1e9 * slot[3], 1e9 * slot[4], 1e9 * slot[5]);
    return 0;
}
