/*
 * Misuse of the C API from C: every check glimpse.h promises returns its error code and
 * leaves the library usable (the next correct call works).
 *
 *   misuse MODEL.glim PICTURE.ppm
 *
 * Prints one line per check and "misuse: N checks passed"; exits 1 at the first failure.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glimpse.h"

static int checks = 0;

#define EXPECT(call, want)                                                                 \
  do {                                                                                     \
    int got_ = (call);                                                                     \
    checks++;                                                                              \
    if (got_ != (want)) {                                                                  \
      printf("FAIL %s:%d: %s gave %d (%s: %s), wanted %d (%s)\n", __FILE__, __LINE__, #call, \
             got_, glimpse_strerror(got_), glimpse_last_error(), (want), glimpse_strerror(want)); \
      exit(1);                                                                             \
    }                                                                                      \
    printf("ok  %-28s %s\n", glimpse_strerror(want), got_ != GLIMPSE_OK ? glimpse_last_error() : ""); \
  } while (0)

#define CHECK(cond)                                                          \
  do {                                                                       \
    checks++;                                                                \
    if (!(cond)) {                                                           \
      printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
      exit(1);                                                               \
    }                                                                        \
    printf("ok  %s\n", #cond);                                               \
  } while (0)

static void *aligned(size_t align, size_t len) {
  void *p = NULL;
  if (posix_memalign(&p, align, len ? len : align) != 0) exit(2);
  memset(p, 0, len);
  return p;
}

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) exit(2);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = aligned(GLIMPSE_ALIGN, *len + GLIMPSE_ALIGN);
  if (fread(b, 1, *len, f) != *len) exit(2);
  fclose(f);
  return b;
}

/* A P6 file's pixels (the header is "P6\n<w> <h>\n255\n"). */
static uint8_t *read_ppm(const char *path, uint32_t *w, uint32_t *h, size_t *len) {
  size_t n;
  uint8_t *b = read_all(path, &n);
  unsigned ww, hh;
  int off = 0;
  if (sscanf((const char *)b, "P6 %u %u 255%n", &ww, &hh, &off) != 2 || off == 0) exit(2);
  *w = ww;
  *h = hh;
  *len = (size_t)ww * hh * 3;
  uint8_t *px = malloc(*len);
  memcpy(px, b + off + 1, *len);
  free(b);
  return px;
}

static int32_t count_tokens(void *user, uint32_t token, const char *text, size_t len) {
  (void)token, (void)text, (void)len;
  ++*(int *)user;
  return 0;
}

static int32_t stop_at_first(void *user, uint32_t token, const char *text, size_t len) {
  (void)token, (void)text, (void)len;
  ++*(int *)user;
  return 1;
}

static glimpse_session *reentered;
static int inner_code = 0;
static int32_t reenter(void *user, uint32_t token, const char *text, size_t len) {
  (void)user, (void)token, (void)text, (void)len;
  inner_code = glimpse_ask(reentered, NULL, "x", 1, NULL, NULL, NULL);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: misuse MODEL.glim PICTURE.ppm\n");
    return 2;
  }
  size_t len;
  uint8_t *bytes = read_all(argv[1], &len);
  uint32_t w, h;
  size_t px_len;
  uint8_t *px = read_ppm(argv[2], &w, &h, &px_len);
  const char *q = "Describe the image.";
  size_t msize = glimpse_model_size();
  void *mstore = aligned(GLIMPSE_ALIGN, msize + GLIMPSE_ALIGN);
  glimpse_model *model = NULL;

  /* Opening a model. */
  EXPECT(glimpse_model_open(NULL, len, mstore, msize, &model), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_model_open(bytes, len, NULL, msize, &model), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_model_open(bytes, len, mstore, msize, NULL), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_model_open(bytes, len, mstore, msize - 1, &model), GLIMPSE_ERR_ARENA);
  EXPECT(glimpse_model_open(bytes, len, (uint8_t *)mstore + 8, msize, &model), GLIMPSE_ERR_ALIGNMENT);
  uint8_t *shifted = aligned(GLIMPSE_ALIGN, len + GLIMPSE_ALIGN);
  memcpy(shifted + 1, bytes, len);
  EXPECT(glimpse_model_open(shifted + 1, len, mstore, msize, &model), GLIMPSE_ERR_ALIGNMENT);
  EXPECT(glimpse_model_open(bytes, len / 2, mstore, msize, &model), GLIMPSE_ERR_MODEL);
  EXPECT(glimpse_model_open(bytes, 0, mstore, msize, &model), GLIMPSE_ERR_MODEL);
  memcpy(shifted, bytes, len);
  shifted[len / 2] ^= 0x10; /* one flipped bit in the weights */
  EXPECT(glimpse_model_open(shifted, len, mstore, msize, &model), GLIMPSE_ERR_MODEL);
  CHECK(model == NULL);
  EXPECT(glimpse_model_open(bytes, len, mstore, msize, &model), GLIMPSE_OK);

  /* Planning and creating a session. */
  glimpse_session_params p = glimpse_session_default_params();
  p.max_frame_side = w > h ? w : h;
  p.max_prompt_bytes = 64;
  p.max_new_tokens = 16;
  size_t need = 0;
  EXPECT(glimpse_session_arena_size(NULL, &p, &need), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_session_arena_size(model, NULL, &need), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_session_arena_size(model, &p, NULL), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_session_arena_size((const glimpse_model *)(void *)px, &p, &need), GLIMPSE_ERR_HANDLE);
  EXPECT(glimpse_session_arena_size(model, &p, &need), GLIMPSE_OK);
  uint8_t *arena = aligned(GLIMPSE_ALIGN, need + GLIMPSE_ALIGN);
  size_t ssize = glimpse_session_size();
  CHECK(ssize <= GLIMPSE_SESSION_STORAGE_BYTES && msize <= GLIMPSE_MODEL_STORAGE_BYTES);
  uint8_t *sstore = aligned(GLIMPSE_ALIGN, ssize + GLIMPSE_ALIGN);
  glimpse_session *s = NULL;
  EXPECT(glimpse_session_create(model, &p, sstore, ssize, arena, need - 1, &s), GLIMPSE_ERR_ARENA);
  EXPECT(glimpse_session_create(model, &p, sstore, ssize, arena, 16, &s), GLIMPSE_ERR_ARENA);
  EXPECT(glimpse_session_create(model, &p, sstore, ssize - 1, arena, need, &s), GLIMPSE_ERR_ARENA);
  EXPECT(glimpse_session_create(model, &p, sstore, ssize, arena + 8, need, &s), GLIMPSE_ERR_ALIGNMENT);
  EXPECT(glimpse_session_create(model, &p, sstore + 8, ssize, arena, need, &s), GLIMPSE_ERR_ALIGNMENT);
  EXPECT(glimpse_session_create(model, &p, sstore, ssize, NULL, need, &s), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_session_create(model, &p, NULL, ssize, arena, need, &s), GLIMPSE_ERR_NULL);
  /* A context too short for the turn: refused before any work. */
  glimpse_session_params tiny = p;
  tiny.max_context = 24; /* the prompt and the picture need about 40 positions */
  size_t tiny_need;
  EXPECT(glimpse_session_arena_size(model, &tiny, &tiny_need), GLIMPSE_OK);
  uint8_t *tiny_arena = aligned(GLIMPSE_ALIGN, tiny_need);
  uint8_t *tiny_store = aligned(GLIMPSE_ALIGN, ssize);
  glimpse_session *ts = NULL;
  EXPECT(glimpse_session_create(model, &tiny, tiny_store, ssize, tiny_arena, tiny_need, &ts), GLIMPSE_OK);
  {
    glimpse_frame tf = {px, px_len, w, h, GLIMPSE_RGB888};
    EXPECT(glimpse_ask(ts, &tf, q, strlen(q), NULL, NULL, NULL), GLIMPSE_ERR_CONTEXT);
  }
  EXPECT(glimpse_session_close(ts), GLIMPSE_OK);
  free(tiny_arena);
  free(tiny_store);
  EXPECT(glimpse_session_create(model, &p, sstore, ssize, arena, need, &s), GLIMPSE_OK);

  /* Asking with bad arguments: refused, and the session still works afterwards. */
  glimpse_frame f = {px, px_len, w, h, GLIMPSE_RGB888};
  int n = 0;
  glimpse_report r;
  EXPECT(glimpse_ask(NULL, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_ask(s, &f, NULL, 3, count_tokens, &n, &r), GLIMPSE_ERR_NULL);
  glimpse_frame bad = f;
  bad.len -= 1;
  EXPECT(glimpse_ask(s, &bad, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_LENGTH);
  bad = f;
  bad.data = NULL;
  EXPECT(glimpse_ask(s, &bad, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_NULL);
  bad = f;
  bad.format = 7;
  EXPECT(glimpse_ask(s, &bad, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_FRAME);
  bad = f;
  bad.width = 0;
  bad.len = 0;
  EXPECT(glimpse_ask(s, &bad, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_FRAME);
  /* A frame larger than planned (twice the side, same bytes per row doubled). */
  size_t big_len = (size_t)w * 2 * h * 2 * 3;
  uint8_t *big = calloc(1, big_len);
  glimpse_frame large = {big, big_len, w * 2, h * 2, GLIMPSE_RGB888};
  EXPECT(glimpse_ask(s, &large, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_FRAME);
  EXPECT(glimpse_ask(s, &f, "\xff\xfe", 2, count_tokens, &n, &r), GLIMPSE_ERR_PROMPT);
  char longq[200];
  memset(longq, 'a', sizeof longq);
  EXPECT(glimpse_ask(s, &f, longq, sizeof longq, count_tokens, &n, &r), GLIMPSE_ERR_PROMPT);
  EXPECT(glimpse_stream_frame(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_PARAMS);

  n = 0;
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_OK);
  CHECK(n > 0 && (int)r.generated == n && r.image_tokens > 0);
  int first_n = n;

  /* A follow-up turn keeps the picture and the conversation. */
  n = 0;
  EXPECT(glimpse_ask(s, NULL, "And again?", 10, count_tokens, &n, &r), GLIMPSE_OK);
  CHECK(r.reused_positions > 0 && r.image_tokens == 0);

  /* The callback stops generation after one token; the session goes on. */
  n = 0;
  EXPECT(glimpse_ask(s, &f, q, strlen(q), stop_at_first, &n, &r), GLIMPSE_STOPPED);
  CHECK(n == 1 || first_n == 1);
  EXPECT(glimpse_reset(s), GLIMPSE_OK);
  n = 0;
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_OK);
  CHECK(n == first_n);

  /* Calling the session from its own callback. */
  reentered = s;
  EXPECT(glimpse_ask(s, &f, q, strlen(q), reenter, NULL, &r), GLIMPSE_OK);
  EXPECT(inner_code, GLIMPSE_ERR_HANDLE);

  /* A frame stream skips an unchanged frame. */
  EXPECT(glimpse_stream_begin(s, 0.01f), GLIMPSE_OK);
  EXPECT(glimpse_stream_frame(s, NULL, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_stream_frame(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_OK);
  EXPECT(r.skipped, 0);
  EXPECT(glimpse_stream_frame(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_OK);
  CHECK(r.skipped);

  /* Closing the model ends its sessions; handles are checked. */
  EXPECT(glimpse_model_close(model), GLIMPSE_OK);
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_CLOSED);
  EXPECT(glimpse_reset(s), GLIMPSE_ERR_CLOSED);
  EXPECT(glimpse_session_arena_size(model, &p, &need), GLIMPSE_ERR_HANDLE);
  EXPECT(glimpse_model_close(model), GLIMPSE_ERR_HANDLE);
  /* A model opened again in the same storage is another model to the old session. */
  EXPECT(glimpse_model_open(bytes, len, mstore, msize, &model), GLIMPSE_OK);
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_CLOSED);
  EXPECT(glimpse_session_close(s), GLIMPSE_OK);
  EXPECT(glimpse_session_close(s), GLIMPSE_ERR_HANDLE);
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_HANDLE);
  EXPECT(glimpse_session_close((glimpse_session *)(void *)px), GLIMPSE_ERR_HANDLE);
  EXPECT(glimpse_session_close(NULL), GLIMPSE_OK);
  EXPECT(glimpse_model_close(NULL), GLIMPSE_OK);

  /* A new session on the reopened model works. */
  EXPECT(glimpse_session_create(model, &p, sstore, ssize, arena, need, &s), GLIMPSE_OK);
  n = 0;
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_OK);
  CHECK(n == first_n);
  EXPECT(glimpse_session_close(s), GLIMPSE_OK);
  EXPECT(glimpse_model_close(model), GLIMPSE_OK);

  CHECK(glimpse_strerror(-999) != NULL && glimpse_strerror(GLIMPSE_OK) != NULL);

#ifdef GLIMPSE_HOST
  /* The host helper: the library maps the file and allocates the handle. */
  glimpse_model *fm = NULL;
  EXPECT(glimpse_model_open_file(NULL, &fm), GLIMPSE_ERR_NULL);
  EXPECT(glimpse_model_open_file("/nonexistent/model.glim", &fm), GLIMPSE_ERR_MODEL);
  EXPECT(glimpse_model_open_file(argv[1], &fm), GLIMPSE_OK);
  EXPECT(glimpse_session_create(fm, &p, sstore, ssize, arena, need, &s), GLIMPSE_OK);
  n = 0;
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_OK);
  CHECK(n == first_n);
  EXPECT(glimpse_model_close(fm), GLIMPSE_OK);
  EXPECT(glimpse_ask(s, &f, q, strlen(q), count_tokens, &n, &r), GLIMPSE_ERR_CLOSED);
  EXPECT(glimpse_session_close(s), GLIMPSE_OK);
#endif
  printf("misuse: %d checks passed\n", checks);
  free(big);
  free(arena);
  free(sstore);
  free(shifted);
  free(mstore);
  free(bytes);
  free(px);
  return 0;
}
