/*
 * Minimal Cortex-M start-up: vector table, .data/.bss initialisation, FPU enable,
 * semihosting file handles, then main(). Faults end the run through semihosting
 * with status 3 instead of hanging QEMU.
 */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start__[], __bss_end__[];
extern uint32_t __stack_top[];
extern int main(void);
extern void initialise_monitor_handles(void);

void Reset_Handler(void);

static void Fault_Handler(void) { _exit(3); }

__attribute__((section(".isr_vector"), used))
static void (*const vector_table[16])(void) = {
    /* The initial stack pointer is data in a table of handlers: outside ISO C, on purpose. */
    __extension__ (void (*)(void))__stack_top, Reset_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler,
};

void Reset_Handler(void)
{
    uint32_t *src = __data_load, *dst = __data_start;
    while (dst < __data_end) *dst++ = *src++;
    for (dst = __bss_start__; dst < __bss_end__;) *dst++ = 0;
    /* CPACR: full access to CP10/CP11 before the first floating-point instruction. */
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    initialise_monitor_handles();
    exit(main());
}
