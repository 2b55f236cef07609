/* Tiled FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D kernels whose arithmetic replicates
 * TFLite's reference kernels (reference_ops / reference_integer_ops) bit for bit: float sums are
 * accumulated in the same order with separate multiply and add (built with -ffp-contract=off),
 * int8 uses the same int32 accumulation, requantisation (single- or double-rounding, matching how
 * the runtime was built: option `rounding`) and clamps.
 * The weights arrive as consecutive byte ranges (tiles) of the filter tensor in its TFLite layout;
 * partial sums live in accumulators sized at prepare time, so a tile may end anywhere. */
#ifndef TSWAP_KERNELS_H_
#define TSWAP_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#include "tswap_tflite_abi.h"

typedef struct TswapGeometry {
  int op;          /* kTfLiteBuiltin* */
  int is_int8;     /* else float32 */
  int activation;  /* TfLiteFusedActivation */
  /* FULLY_CONNECTED: batches x depth -> batches x out_c */
  int batches, depth;
  /* convolutions (NHWC) */
  int in_h, in_w, in_c, out_h, out_w, out_c, f_h, f_w;
  int stride_h, stride_w, dil_h, dil_w, pad_h, pad_w, depth_multiplier;
  /* int8 */
  int32_t input_offset, output_offset, act_min, act_max; /* weights are symmetric (zero point 0) */
  int single_rounding; /* TFLITE_SINGLE_ROUNDING requantisation (LiteRT 2.x) or gemmlowp double rounding */
  /* float */
  float act_min_f, act_max_f;
} TswapGeometry;

typedef struct TswapKernel {
  TswapGeometry g;
  int32_t* multiplier; /* per output channel */
  int* shift;
  void* acc;           /* float or int64 partial sums */
  size_t acc_count;
  int16_t* xq;         /* int8 FC: input + input_offset (fits int16), batches x depth */
  uint64_t filter_elems;
} TswapKernel;

/* Tensor pointers at invoke time. */
typedef struct TswapIo {
  const void* input;
  const void* bias; /* may be NULL */
  void* output;
} TswapIo;

/* Allocate accumulators for a prepared geometry; 0 or -1 (out of memory). */
int tswap_kernel_alloc(TswapKernel* k);
void tswap_kernel_free(TswapKernel* k);
/* Called once per invoke before the first tile. */
void tswap_kernel_begin(TswapKernel* k, const TswapIo* io);
/* Consume filter elements [first, first + count) held in `w`. Outputs are written when the
 * last filter element of an output channel has been consumed. */
void tswap_kernel_tile(TswapKernel* k, const TswapIo* io, const void* w, uint64_t first, uint64_t count);

/* TFLite's QuantizeMultiplier (quantization_util.cc). */
void tswap_quantize_multiplier(double m, int single_rounding, int32_t* quantized, int* shift);
/* TFLite's CalculateActivationRangeQuantized for int8; -1 if the bounds overflow int32. */
int tswap_activation_range_int8(int activation, float scale, int32_t zero_point, int32_t* lo, int32_t* hi);
void tswap_activation_range_float(int activation, float* lo, float* hi);

#endif /* TSWAP_KERNELS_H_ */
