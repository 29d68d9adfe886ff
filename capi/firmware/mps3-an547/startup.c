/*
 * Reset and exception entry for the Cortex-M55 firmware: copy .data, zero .bss, give the
 * FPU and Helium (MVE) to the program, run main, and exit QEMU through semihosting with
 * main's return value. A fault prints its status registers on UART0 and exits 3.
 */
#include <stdint.h>

#include "board.h"

extern uint32_t __stack_top, __data_start, __data_end, __data_load, __bss_start, __bss_end;
int main(void);

void reset_handler(void);
static void fault_handler(void);
void systick_handler(void);

/* The vector table: initial stack, reset, the system exceptions up to SysTick. */
__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&__stack_top,
    reset_handler,
    fault_handler, /* NMI */
    fault_handler, /* HardFault */
    fault_handler, /* MemManage */
    fault_handler, /* BusFault */
    fault_handler, /* UsageFault */
    fault_handler, /* SecureFault */
    0, 0, 0,
    fault_handler, /* SVCall */
    fault_handler, /* DebugMonitor */
    0,
    fault_handler, /* PendSV */
    systick_handler,
};

void semihost_exit(int code) {
  /* SYS_EXIT_EXTENDED: {ADP_Stopped_ApplicationExit, code}. */
  volatile uint32_t block[2] = {0x20026u, (uint32_t)code};
  register uint32_t r0 __asm__("r0") = 0x20u;
  register volatile uint32_t *r1 __asm__("r1") = block;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  for (;;) {
  }
}

void reset_handler(void) {
  uint32_t *src = &__data_load, *dst = &__data_start;
  while (dst < &__data_end) *dst++ = *src++;
  for (dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;
  /* CPACR: full access to CP10/CP11 (the FPU and MVE). */
  *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
  __asm__ volatile("dsb\n\tisb" ::: "memory");
  semihost_exit(main());
}

static void fault_handler(void) {
  uart_init();
  uart_puts("fault: CFSR ");
  uart_put_u64(*(volatile uint32_t *)0xE000ED28u);
  uart_puts(" HFSR ");
  uart_put_u64(*(volatile uint32_t *)0xE000ED2Cu);
  uart_puts("\n");
  semihost_exit(3);
}
