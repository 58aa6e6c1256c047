/*
 * Measurement harness around the exported actor, the same source for Cortex-M
 * firmware (newlib + semihosting) and aarch64 Linux.
 *
 * Reads observations (float32, TP_OBS_DIM per record) from obs.bin, runs the kernel
 * named by TP_KERNEL on each, and writes the actions to actions.bin. Without
 * TP_KERNEL it builds the harness alone, whose size is subtracted from the firmware's.
 *
 * Each kernel call sits between tp_window_begin() and tp_window_end(), whose entry
 * addresses the instruction-counting QEMU plugin watches; one empty window first
 * measures the markers' own instructions. The stack below main's frame is painted before
 * each call and scanned after it, giving the call's stack high-water mark (neither Arm
 * ABI has a red zone, so nothing of main's lives below its stack pointer).
 */
#include <stdint.h>
#include <stdio.h>

#include "actor.h"

#define STACK_PAINT 0x5AA5C33Cu

volatile uint32_t tp_marker;

__attribute__((noinline, noipa)) void tp_window_begin(void) { tp_marker = 1; }
__attribute__((noinline, noipa)) void tp_window_end(void) { tp_marker = 2; }

static inline uintptr_t stack_pointer(void)
{
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

/* Paints up to its own stack pointer: a leaf with no frame, so everything the next call can use. */
__attribute__((noinline, noipa)) static void paint(volatile uint32_t *lo)
{
    volatile uint32_t *hi = (volatile uint32_t *)(stack_pointer() & ~(uintptr_t)3);
    while (lo < hi) *lo++ = STACK_PAINT;
}

/* Bytes of stack used below `top` since paint(), or -1 if the whole window was used. */
__attribute__((noinline, noipa)) static long high_water(volatile uint32_t *lo, volatile uint32_t *hi, uintptr_t top)
{
    volatile uint32_t *p = lo;
    while (p < hi && *p == STACK_PAINT) p++;
    return p == lo ? -1 : (long)(top - (uintptr_t)p);
}

static float obs[TP_OBS_DIM];
static float actions[TP_ACT_DIM];

int main(void)
{
    FILE *in = fopen("obs.bin", "rb");
    FILE *out = fopen("actions.bin", "wb");
    if (!in || !out) {
        printf("harness: cannot open obs.bin or actions.bin\n");
        return 1;
    }
    uintptr_t top = stack_pointer() & ~(uintptr_t)7;
    volatile uint32_t *lo = (volatile uint32_t *)(top - TP_STACK_WINDOW);
    volatile uint32_t *hi = (volatile uint32_t *)top;

    tp_window_begin();
    tp_window_end();

    long stack_bytes = 0;
    int count = 0;
    while (fread(obs, sizeof obs, 1, in) == 1) {
        paint(lo);
        tp_window_begin();
#ifdef TP_KERNEL
        TP_KERNEL(obs, actions);
#endif
        tp_window_end();
        long used = high_water(lo, hi, top);
        if (used < 0 || stack_bytes < 0) stack_bytes = -1;
        else if (used > stack_bytes) stack_bytes = used;
        if (fwrite(actions, sizeof actions, 1, out) != 1) {
            printf("harness: cannot write actions.bin\n");
            return 1;
        }
        count++;
    }
    fclose(in);
    fclose(out);
    printf("harness: inferences %d stack_bytes %ld\n", count, stack_bytes);
    return 0;
}
