/*
 * Glimpse C firmware for the Arm MPS3 AN547 (Cortex-M55 with Helium), in QEMU
 * (-M mps3-an547) or on the board: captions one frame through glimpse.h and prints the
 * caption, its token ids and the instruction counts on UART0.
 *
 * Memory (link.ld): the model at 0x60000000 and the frame blob at 0x9F000000, both put
 * there by QEMU's loader (or by flashing); the arena is a static array in DDR whose size
 * comes from `glimpse plan --emit c` at build time (arena_plan.h), so the link fails when
 * it does not fit, and main checks that the library plans the same size.
 */
#include <stddef.h>
#include <stdint.h>

#include "arena_plan.h"
#include "board.h"
#include "glimpse.h"

#define MODEL_ADDR 0x60000000u
#define FRAME_ADDR 0x9F000000u
#define FRAME_MAGIC 0x4D524647u /* "GFRM" */

/* What the host puts at FRAME_ADDR: this header, then the pixels. */
typedef struct {
  uint32_t magic;
  uint32_t width, height, format;
  uint32_t model_len;
  uint32_t pixels_len;
} frame_blob;

static uint8_t arena[GLIMPSE_ARENA_BYTES] __attribute__((aligned(GLIMPSE_ARENA_ALIGN), section(".arena")));
static _Alignas(GLIMPSE_ALIGN) uint8_t model_storage[GLIMPSE_MODEL_STORAGE_BYTES];
static _Alignas(GLIMPSE_ALIGN) uint8_t session_storage[GLIMPSE_SESSION_STORAGE_BYTES];

static const char prompt[] = PROMPT;

/* Token ids as they arrive (printed after the caption). */
static uint32_t ids[MAX_TOKENS];
static uint32_t n_ids;

static int32_t on_token(void *user, uint32_t token, const char *text, size_t len) {
  (void)user;
  if (n_ids < MAX_TOKENS) ids[n_ids++] = token;
  uart_write(text, len);
  return 0;
}

static int fail(const char *what, int code) {
  uart_puts("error: ");
  uart_puts(what);
  uart_puts(": ");
  uart_puts(glimpse_strerror(code));
  uart_puts(" (");
  uart_puts(glimpse_last_error());
  uart_puts(")\n");
  return 1;
}

int main(void) {
  uart_init();
  uart_puts("glimpse C firmware: mps3-an547, Cortex-M55 (Helium), glimpse ");
  uart_puts(glimpse_version());
  uart_puts("\n");
  const frame_blob *fb = (const frame_blob *)FRAME_ADDR;
  if (fb->magic != FRAME_MAGIC) {
    uart_puts("error: no frame blob at 0x9F000000\n");
    return 1;
  }
  counter_start();

  glimpse_model *model;
  int rc = glimpse_model_open((const uint8_t *)MODEL_ADDR, fb->model_len, model_storage,
                              sizeof model_storage, &model);
  if (rc != GLIMPSE_OK) return fail("opening the model", rc);
  uint64_t opened = counter_instructions();

  glimpse_session_params params = glimpse_session_default_params();
  params.max_frame_side = MAX_FRAME;
  params.max_prompt_bytes = sizeof prompt - 1;
  params.max_new_tokens = MAX_TOKENS;
  size_t need;
  rc = glimpse_session_arena_size(model, &params, &need);
  if (rc != GLIMPSE_OK) return fail("planning", rc);
  if (need != sizeof arena) {
    uart_puts("error: arena_plan.h says ");
    uart_put_u64(sizeof arena);
    uart_puts(" bytes, the library plans ");
    uart_put_u64(need);
    uart_puts(" (rebuild arena_plan.h with the same parameters)\n");
    return 1;
  }
  glimpse_session *session;
  rc = glimpse_session_create(model, &params, session_storage, sizeof session_storage, arena,
                              sizeof arena, &session);
  if (rc != GLIMPSE_OK) return fail("creating the session", rc);

  glimpse_frame frame = {(const uint8_t *)(fb + 1), fb->pixels_len, fb->width, fb->height,
                         fb->format};
  glimpse_report report;
  uart_puts("text: ");
  uint64_t before = counter_instructions();
  rc = glimpse_ask(session, &frame, prompt, sizeof prompt - 1, on_token, NULL, &report);
  uint64_t after = counter_instructions();
  uart_puts("\n");
  if (rc != GLIMPSE_OK) return fail("captioning", rc);
  uart_puts("tokens:");
  for (uint32_t i = 0; i < n_ids; i++) {
    uart_puts(" ");
    uart_put_u64(ids[i]);
  }
  uart_puts("\nstats: arena ");
  uart_put_u64(sizeof arena);
  uart_puts(" bytes, model open+verify ");
  uart_put_u64(opened);
  uart_puts(" instructions, caption ");
  uart_put_u64(after - before);
  uart_puts(" instructions, ");
  uart_put_u64(report.generated);
  uart_puts(" tokens\n");
  glimpse_session_close(session);
  glimpse_model_close(model);
  return 0;
}
