/* The options of the delegate, as load_delegate(path, options) passes them (string keys and
 * values): weights, table, tile_bytes, prefetch, ops, min_weight_bytes, rounding. See docs/DELEGATE.md. */
#ifndef TSWAP_OPTIONS_H_
#define TSWAP_OPTIONS_H_

#include <stddef.h>
#include <stdint.h>

#include "tswap_tflite_abi.h"

#define OP_FC (1u << 0)
#define OP_CONV (1u << 1)
#define OP_DW (1u << 2)

typedef struct TswapOptions {
  char weights[4096];
  char table[4096];
  uint64_t tile_bytes; /* 0: take the table's */
  int prefetch;
  unsigned ops;
  uint64_t min_weight_bytes;
  int single_rounding[3]; /* per operator: FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D */
} TswapOptions;

/* Index of an operator in TswapOptions.single_rounding. */
static inline int tswap_op_slot(int builtin) {
  return builtin == kTfLiteBuiltinFullyConnected ? 0 : builtin == kTfLiteBuiltinConv2d ? 1 : 2;
}

/* Parse the n options into o (defaults for those not given; table defaults to "<weights>.tiles").
 * Returns 0, or -1 with a message in err. */
int tswap_parse_options(char** keys, char** values, size_t n, TswapOptions* o, char* err, size_t err_len);

#endif /* TSWAP_OPTIONS_H_ */
