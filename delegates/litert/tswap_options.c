/* Parsing the options of load_delegate(path, options) into TswapOptions. */
#define _GNU_SOURCE
#include "tswap_options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int parse_u64(const char* s, uint64_t* out) {
  if (!s || !*s || *s == '-' || *s == '+') return -1;
  char* end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || !end || *end) return -1;
  *out = (uint64_t)v;
  return 0;
}

static int parse_bool(const char* s, int* out) {
  if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "on") || !strcasecmp(s, "yes")) *out = 1;
  else if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "off") || !strcasecmp(s, "no")) *out = 0;
  else return -1;
  return 0;
}

static int parse_ops(const char* s, unsigned* out, char* err, size_t err_len) {
  unsigned ops = 0;
  const char* p = s;
  while (*p) {
    const char* comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    while (n && (*p == ' ')) { ++p; --n; }
    while (n && p[n - 1] == ' ') --n;
    if (n == 15 && !strncasecmp(p, "FULLY_CONNECTED", n)) ops |= OP_FC;
    else if (n == 7 && !strncasecmp(p, "CONV_2D", n)) ops |= OP_CONV;
    else if (n == 17 && !strncasecmp(p, "DEPTHWISE_CONV_2D", n)) ops |= OP_DW;
    else {
      snprintf(err, err_len, "tflm_swap delegate: option ops: unknown operator '%.*s' (choose from "
               "FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D)", (int)n, p);
      return -1;
    }
    if (!comma) break;
    p = comma + 1;
  }
  if (!ops) {
    snprintf(err, err_len, "tflm_swap delegate: option ops is empty; name at least one operator");
    return -1;
  }
  *out = ops;
  return 0;
}

static int parse_mode(const char* s, size_t n, int* single) {
  if (n == 6 && !strncmp(s, "single", 6)) *single = 1;
  else if (n == 6 && !strncmp(s, "double", 6)) *single = 0;
  else return -1;
  return 0;
}

/* "single" / "double" for every operator, or e.g. "FULLY_CONNECTED=single,CONV_2D=double". */
static int parse_rounding(const char* v, int single[3], char* err, size_t err_len) {
  int mode;
  if (parse_mode(v, strlen(v), &mode) == 0) {
    single[0] = single[1] = single[2] = mode;
    return 0;
  }
  const char* p = v;
  while (*p) {
    const char* comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    const char* eq = memchr(p, '=', n);
    int slot = -1;
    if (eq) {
      size_t k = (size_t)(eq - p);
      if (k == 15 && !strncmp(p, "FULLY_CONNECTED", k)) slot = 0;
      else if (k == 7 && !strncmp(p, "CONV_2D", k)) slot = 1;
      else if (k == 17 && !strncmp(p, "DEPTHWISE_CONV_2D", k)) slot = 2;
    }
    if (slot < 0 || parse_mode(eq + 1, n - (size_t)(eq + 1 - p), &mode) != 0) {
      snprintf(err, err_len, "tflm_swap delegate: option rounding='%.200s' must be 'single', 'double' or a list "
               "like 'FULLY_CONNECTED=single,CONV_2D=double,DEPTHWISE_CONV_2D=double' (how the runtime's int8 "
               "kernels requantise; tflm_swap.delegate_options detects it)", v);
      return -1;
    }
    single[slot] = mode;
    if (!comma) break;
    p = comma + 1;
  }
  return 0;
}

int tswap_parse_options(char** keys, char** values, size_t n, TswapOptions* o, char* err, size_t err_len) {
  memset(o, 0, sizeof *o);
  o->prefetch = 1;
  o->ops = OP_FC | OP_CONV | OP_DW;
  /* LiteRT 2.3's reference kernels as measured: FULLY_CONNECTED single, convolutions double rounding */
  o->single_rounding[0] = 1;
  o->single_rounding[1] = 0;
  o->single_rounding[2] = 0;
  for (size_t i = 0; i < n; ++i) {
    const char* k = keys[i] ? keys[i] : "";
    const char* v = values[i] ? values[i] : "";
    if (!strcmp(k, "weights") || !strcmp(k, "table")) {
      char* dst = !strcmp(k, "weights") ? o->weights : o->table;
      if (!*v || strlen(v) >= sizeof o->weights) {
        snprintf(err, err_len, "tflm_swap delegate: option %s must be a non-empty path shorter than %zu bytes",
                 k, sizeof o->weights);
        return -1;
      }
      strcpy(dst, v);
    } else if (!strcmp(k, "tile_bytes")) {
      if (parse_u64(v, &o->tile_bytes) || o->tile_bytes < 4096 || o->tile_bytes % 16 || o->tile_bytes > (1ull << 31)) {
        snprintf(err, err_len, "tflm_swap delegate: option tile_bytes='%s' must be a multiple of 16 between "
                 "4096 and 2^31", v);
        return -1;
      }
    } else if (!strcmp(k, "prefetch")) {
      if (parse_bool(v, &o->prefetch)) {
        snprintf(err, err_len, "tflm_swap delegate: option prefetch='%s' must be true/false/1/0/on/off", v);
        return -1;
      }
    } else if (!strcmp(k, "ops")) {
      if (parse_ops(v, &o->ops, err, err_len)) return -1;
    } else if (!strcmp(k, "min_weight_bytes")) {
      if (parse_u64(v, &o->min_weight_bytes)) {
        snprintf(err, err_len, "tflm_swap delegate: option min_weight_bytes='%s' must be a non-negative integer", v);
        return -1;
      }
    } else if (!strcmp(k, "rounding")) {
      if (parse_rounding(v, o->single_rounding, err, err_len)) return -1;
    } else {
      snprintf(err, err_len, "tflm_swap delegate: unknown option '%s' (known: weights, table, tile_bytes, "
               "prefetch, ops, min_weight_bytes, rounding)", k);
      return -1;
    }
  }
  if (!o->weights[0]) {
    snprintf(err, err_len, "tflm_swap delegate: option 'weights' (path of the segmented .tflite) is required");
    return -1;
  }
  if (!o->table[0]) {
    if (strlen(o->weights) + 7 >= sizeof o->table) {
      snprintf(err, err_len, "tflm_swap delegate: weights path too long");
      return -1;
    }
    snprintf(o->table, sizeof o->table, "%s.tiles", o->weights);
  }
  return 0;
}
