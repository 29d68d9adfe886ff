/*
 * caption: caption pictures with a Glimpse model through the C API.
 *
 *   caption MODEL.glim PICTURE.ppm... [-p "question"] [-t threads] [-n max_tokens]
 *
 * Pictures are binary PPM (P6, 8 bits), which any image tool writes
 * (`convert in.png out.ppm`, `pnmtopng`'s siblings, Python's PIL). Prints one line per
 * picture, "NAME: caption", then the arena size and the first picture's timings.
 *
 * It does what firmware does, with a file system: the model bytes and the session arena
 * are the program's own memory (aligned as glimpse.h asks), the library allocates
 * nothing.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glimpse.h"

/* A picture read from a PPM file. */
typedef struct {
  const char *name;
  uint32_t width, height;
  uint8_t *rgb;
  size_t len;
} picture;

static void die(const char *what, int code) {
  fprintf(stderr, "caption: %s: %s (%s)\n", what, glimpse_strerror(code), glimpse_last_error());
  exit(1);
}

/* `len` bytes of `path` in memory aligned to `align` (zero-padded to a multiple of it). */
static uint8_t *read_file(const char *path, size_t align, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "caption: %s: %s\n", path, strerror(errno));
    exit(1);
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = NULL;
  size_t cap = ((size_t)size + align - 1) / align * align;
  if (size < 0 || posix_memalign(&buf, align, cap ? cap : align) != 0) {
    fprintf(stderr, "caption: %s: cannot hold %ld bytes\n", path, size);
    exit(1);
  }
  memset(buf, 0, cap);
  if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
    fprintf(stderr, "caption: %s: short read\n", path);
    exit(1);
  }
  fclose(f);
  *len = (size_t)size;
  return buf;
}

/* Skip whitespace and # comments in a PPM header. */
static const uint8_t *ppm_skip(const uint8_t *p, const uint8_t *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '#')) {
    if (*p == '#')
      while (p < end && *p != '\n') p++;
    else
      p++;
  }
  return p;
}

static const uint8_t *ppm_number(const uint8_t *p, const uint8_t *end, unsigned long *v) {
  p = ppm_skip(p, end);
  *v = 0;
  int digits = 0;
  while (p < end && *p >= '0' && *p <= '9' && digits < 9) {
    *v = *v * 10 + (unsigned long)(*p++ - '0');
    digits++;
  }
  return digits ? p : NULL;
}

static picture read_ppm(const char *path) {
  size_t len;
  uint8_t *data = read_file(path, 16, &len);
  const uint8_t *p = data, *end = data + len;
  unsigned long w, h, maxval;
  if (len < 2 || p[0] != 'P' || p[1] != '6' || !(p = ppm_number(p + 2, end, &w)) ||
      !(p = ppm_number(p, end, &h)) || !(p = ppm_number(p, end, &maxval)) || maxval != 255 ||
      p >= end) {
    fprintf(stderr, "caption: %s: not a binary 8-bit PPM (P6)\n", path);
    exit(1);
  }
  p++; /* the single whitespace byte before the pixels */
  size_t need = (size_t)w * (size_t)h * 3;
  if ((size_t)(end - p) < need) {
    fprintf(stderr, "caption: %s: %lux%lu needs %zu pixel bytes\n", path, w, h, need);
    exit(1);
  }
  picture pic = {path, (uint32_t)w, (uint32_t)h, malloc(need), need};
  memcpy(pic.rgb, p, need);
  free(data);
  const char *slash = strrchr(path, '/');
  pic.name = slash ? slash + 1 : path;
  return pic;
}

/* The token callback: append the text to the caption buffer. */
typedef struct {
  char text[1024];
  size_t len;
} caption_text;

static int32_t on_token(void *user, uint32_t token, const char *text, size_t len) {
  (void)token;
  caption_text *c = user;
  if (c->len + len < sizeof c->text) {
    memcpy(c->text + c->len, text, len);
    c->len += len;
    c->text[c->len] = 0;
  }
  return 0; /* go on */
}

int main(int argc, char **argv) {
  const char *prompt = "Describe the image.";
  const char *model_path = NULL;
  unsigned threads = 1, max_tokens = 32;
  picture pics[64];
  int npics = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-p") && i + 1 < argc)
      prompt = argv[++i];
    else if (!strcmp(argv[i], "-t") && i + 1 < argc)
      threads = (unsigned)atoi(argv[++i]);
    else if (!strcmp(argv[i], "-n") && i + 1 < argc)
      max_tokens = (unsigned)atoi(argv[++i]);
    else if (!model_path)
      model_path = argv[i];
    else if (npics < 64)
      pics[npics++] = read_ppm(argv[i]);
  }
  if (!model_path || npics == 0) {
    fprintf(stderr, "usage: caption MODEL.glim PICTURE.ppm... [-p question] [-t threads] [-n max_tokens]\n");
    return 2;
  }

  /* 1. The model: bytes the program owns (a mapped file or flash on a board). */
  size_t model_len;
  uint8_t *model_bytes = read_file(model_path, GLIMPSE_ALIGN, &model_len);
  static _Alignas(GLIMPSE_ALIGN) uint8_t model_storage[GLIMPSE_MODEL_STORAGE_BYTES];
  glimpse_model *model;
  int rc = glimpse_model_open(model_bytes, model_len, model_storage, sizeof model_storage, &model);
  if (rc != GLIMPSE_OK) die(model_path, rc);

  /* 2. A session sized for these pictures and this prompt. */
  glimpse_session_params params = glimpse_session_default_params();
  params.max_frame_side = 0;
  for (int i = 0; i < npics; i++) {
    uint32_t side = pics[i].width > pics[i].height ? pics[i].width : pics[i].height;
    if (side > params.max_frame_side) params.max_frame_side = side;
  }
  params.max_prompt_bytes = (uint32_t)strlen(prompt);
  params.max_new_tokens = max_tokens;
  params.threads = threads;
  size_t arena_len;
  rc = glimpse_session_arena_size(model, &params, &arena_len);
  if (rc != GLIMPSE_OK) die("planning the session", rc);
  void *arena = NULL;
  if (posix_memalign(&arena, GLIMPSE_ALIGN, arena_len) != 0) return 1;
  static _Alignas(GLIMPSE_ALIGN) uint8_t session_storage[GLIMPSE_SESSION_STORAGE_BYTES];
  glimpse_session *session;
  rc = glimpse_session_create(model, &params, session_storage, sizeof session_storage, arena,
                              arena_len, &session);
  if (rc != GLIMPSE_OK) die("creating the session", rc);

  /* 3. One question per picture, the caption streamed to the callback. */
  glimpse_report first = {0};
  for (int i = 0; i < npics; i++) {
    glimpse_frame frame = {pics[i].rgb, pics[i].len, pics[i].width, pics[i].height, GLIMPSE_RGB888};
    caption_text c = {{0}, 0};
    glimpse_report report;
    rc = glimpse_ask(session, &frame, prompt, strlen(prompt), on_token, &c, &report);
    if (rc != GLIMPSE_OK) die(pics[i].name, rc);
    if (i == 0) first = report;
    printf("%s: %s\n", pics[i].name, c.text);
  }
  printf("arena %zu bytes; first picture: TTFT %.1f ms (encoder %.1f ms, prefill %.1f ms), %u tokens\n",
         arena_len, first.ttft_us / 1000.0, first.encoder_us / 1000.0, first.prefill_us / 1000.0,
         first.generated);

  /* 4. Done: close the session, then the model; the memory is the program's again. */
  glimpse_session_close(session);
  glimpse_model_close(model);
  free(arena);
  free(model_bytes);
  for (int i = 0; i < npics; i++) free(pics[i].rgb);
  return 0;
}
