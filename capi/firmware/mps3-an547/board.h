/* The board services the firmware uses: UART0 output and the SysTick instruction count. */
#ifndef BOARD_H
#define BOARD_H
#include <stddef.h>
#include <stdint.h>

void uart_init(void);
void uart_write(const char *s, size_t len);
void uart_puts(const char *s);
void uart_put_u64(uint64_t v);
void semihost_exit(int code);
void counter_start(void);
/* Instructions executed since counter_start (exact under QEMU -icount shift=0). */
uint64_t counter_instructions(void);

#endif
