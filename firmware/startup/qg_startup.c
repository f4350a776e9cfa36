/*
 * Minimal Cortex-M start-up for the qgen harness: vector table, reset handler, fault handler.
 *
 * Works for ARMv6-M (M0+), ARMv7-M (M3/M4/M7) and ARMv8-M (M33/M55). Symbols come from the
 * linker script (qg_link.ld.in): _estack, _sidata/_sdata/_edata (.data load and run addresses),
 * _sbss/_ebss. No C library start files are used (link with -nostartfiles).
 */
#include <stdint.h>

#include "qg_semihost.h"

/* Exit status reported by the fault handler; see HARNESS_EXIT_* in qg_harness_main.c. */
#define QG_EXIT_FAULT 10

extern uint32_t _estack;
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss;

int main(void);
void Reset_Handler(void);
void Default_Handler(void);

typedef void (*qg_vector_t)(void);

/* The 16 system exception vectors; no peripheral interrupt is enabled, so none are listed. */
__attribute__((section(".vectors"), used)) const qg_vector_t qg_vector_table[16] = {
    (qg_vector_t)(uintptr_t)&_estack, /* initial main stack pointer */
    Reset_Handler,
    Default_Handler, /* NMI */
    Default_Handler, /* HardFault */
    Default_Handler, /* MemManage */
    Default_Handler, /* BusFault */
    Default_Handler, /* UsageFault */
    Default_Handler, /* SecureFault (ARMv8-M), reserved otherwise */
    0, 0, 0,         /* reserved */
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,               /* reserved */
    Default_Handler, /* PendSV */
    Default_Handler, /* SysTick */
};

/* Grant full access to coprocessors 10 and 11 (FPU and, on M55, MVE) before any FP instruction. */
static void enable_fpu(void)
{
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    volatile uint32_t *const cpacr = (volatile uint32_t *)0xE000ED88u;
    *cpacr |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
}

void Reset_Handler(void)
{
    enable_fpu(); /* first: the compiler may use FP registers anywhere in hard-float code */
    const uint32_t *from = &_sidata;
    for (uint32_t *to = &_sdata; to < &_edata;) {
        *to++ = *from++;
    }
    for (uint32_t *to = &_sbss; to < &_ebss;) {
        *to++ = 0u;
    }
    qg_semihost_exit(main());
}

static void put_hex(uint32_t value)
{
    char text[11] = "0x00000000";
    for (int i = 9; i >= 2; --i) {
        text[i] = "0123456789abcdef"[value & 0xFu];
        value >>= 4;
    }
    qg_semihost_puts(text);
}

/* Any exception means a bug (bad pointer, unaligned access on M0+, ...): report it and stop. */
void Default_Handler(void)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    const uint32_t *frame;
    __asm__ volatile("mrs %0, msp" : "=r"(frame));
    qg_semihost_puts("qgen harness: unexpected exception ");
    put_hex(ipsr & 0x1FFu);
    qg_semihost_puts(" at pc ");
    put_hex(frame[6]); /* stacked PC of the faulting code */
    qg_semihost_puts("\n");
    qg_semihost_exit(QG_EXIT_FAULT);
}
