/*
 * UART0 (CMSDK APB UART, secure alias 0x59303000) and an instruction counter from
 * SysTick, as the Rust firmware does it (ports/mps3-an547/src/{uart,counter}.rs): under
 * QEMU -icount shift=0 virtual time advances 1 ns per instruction and SysTick counts it
 * at the 32 MHz processor clock, so instructions = ticks * 1e9 / 32e6.
 */
#include "board.h"

#define UART_BASE 0x59303000u
#define UART_DATA (*(volatile uint32_t *)(UART_BASE + 0x00))
#define UART_STATE (*(volatile uint32_t *)(UART_BASE + 0x04))
#define UART_CTRL (*(volatile uint32_t *)(UART_BASE + 0x08))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART_BASE + 0x10))

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define CPU_HZ 32000000u
#define RELOAD 0x00FFFFFFu

void uart_init(void) {
  UART_BAUDDIV = CPU_HZ / 115200u;
  UART_CTRL = 1u; /* transmit enable */
}

static void uart_putc(char c) {
  for (uint32_t i = 0; i < 1000000u && (UART_STATE & 1u); i++) {
  }
  UART_DATA = (uint32_t)(uint8_t)c;
}

void uart_write(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++) uart_putc(s[i]);
}

void uart_puts(const char *s) {
  while (*s) uart_putc(*s++);
}

void uart_put_u64(uint64_t v) {
  char buf[21];
  int i = 20;
  buf[i] = 0;
  do {
    buf[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v && i > 0);
  uart_puts(&buf[i]);
}

static volatile uint32_t wraps;

void systick_handler(void) { wraps++; }

void counter_start(void) {
  wraps = 0;
  SYST_RVR = RELOAD;
  SYST_CVR = 0;
  SYST_CSR = 7u; /* enable, interrupt on wrap, processor clock */
}

uint64_t counter_instructions(void) {
  uint32_t w1, cvr, w2;
  do {
    w1 = wraps;
    cvr = SYST_CVR;
    w2 = wraps;
  } while (w1 != w2);
  uint64_t ticks = (uint64_t)w1 * (RELOAD + 1u) + (RELOAD - cvr);
  return ticks * 1000000000u / CPU_HZ;
}
