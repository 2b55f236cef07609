#include "tswap_kernels.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Integer kernels get an AVX2 clone picked at load time (GCC/clang ifunc); the float kernels stay
 * on the baseline ISA so their rounding never depends on the CPU (and no FMA is ever formed). */
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(TSWAP_NO_MULTIVERSION)
#define TSWAP_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define TSWAP_MULTIVERSION
#endif

/* ---------------------------------------------------------------- arithmetic helpers (TFLite) */
void tswap_quantize_multiplier(double m, int single_rounding, int32_t* quantized, int* shift) {
  if (m == 0.0) {
    *quantized = 0;
    *shift = 0;
    return;
  }
  int exp = 0;
  double q = frexp(m, &exp);
  int64_t q_fixed = (int64_t)round(q * (double)(1ll << 31));
  if (q_fixed == (1ll << 31)) {
    q_fixed /= 2;
    ++exp;
  }
  if (exp < -31) {
    exp = 0;
    q_fixed = 0;
  }
  if (single_rounding && exp > 30) { /* the single-rounding multiply supports shifts up to 30 */
    exp = 30;
    q_fixed = (1ll << 31) - 1;
  }
  *quantized = (int32_t)q_fixed;
  *shift = exp;
}

static int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? (1ll << 30) : (1 - (1ll << 30));
  return (int32_t)((ab + nudge) / (1ll << 31));
}

static int32_t rounding_divide_by_pot(int32_t x, int exponent) {
  int32_t mask = (int32_t)((1ll << exponent) - 1);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier, single-rounding variant (builds with TFLITE_SINGLE_ROUNDING=1). */
static int32_t mbqm_single(int32_t x, int32_t multiplier, int shift) {
  const int total_shift = 31 - shift; /* 1..62 */
  const int64_t round = (int64_t)1 << (total_shift - 1);
  int64_t result = (int64_t)x * (int64_t)multiplier + round;
  return (int32_t)(result >> total_shift);
}

/* MultiplyByQuantizedMultiplier, double-rounding (gemmlowp) variant. */
static int32_t mbqm_double(int32_t x, int32_t multiplier, int shift) {
  int left = shift > 0 ? shift : 0;
  int right = shift > 0 ? 0 : -shift;
  int32_t shifted = (int32_t)(uint32_t)((uint32_t)x << left); /* x * (1 << left), wrapping */
  return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right);
}

int tswap_activation_range_int8(int activation, float scale, int32_t zero_point, int32_t* lo, int32_t* hi) {
  int32_t qmin = -128, qmax = 127;
  float bounds[2] = {0.f, 0.f};
  int use_lo = 0, use_hi = 0;
  if (activation == kTfLiteActRelu) {
    use_lo = 1;
  } else if (activation == kTfLiteActRelu6) {
    use_lo = use_hi = 1;
    bounds[1] = 6.f;
  } else if (activation == kTfLiteActReluN1To1) {
    use_lo = use_hi = 1;
    bounds[0] = -1.f;
    bounds[1] = 1.f;
  }
  for (int i = 0; i < 2; ++i) {
    if (!(i == 0 ? use_lo : use_hi)) continue;
    float t = roundf(bounds[i] / scale);
    if (!(t >= (float)INT32_MIN && t <= (float)INT32_MAX)) return -1;
    int32_t q = zero_point + (int32_t)t;
    if (i == 0) qmin = q > qmin ? q : qmin;
    else qmax = q < qmax ? q : qmax;
  }
  *lo = qmin;
  *hi = qmax;
  return 0;
}

void tswap_activation_range_float(int activation, float* lo, float* hi) {
  *lo = -FLT_MAX;
  *hi = FLT_MAX;
  if (activation == kTfLiteActRelu) *lo = 0.f;
  if (activation == kTfLiteActRelu6) { *lo = 0.f; *hi = 6.f; }
  if (activation == kTfLiteActReluN1To1) { *lo = -1.f; *hi = 1.f; }
}

/* std::min(std::max(x, lo), hi), NaN propagating exactly like the C++ templates. */
static inline float clamp_f(float x, float lo, float hi) {
  float y = (x < lo) ? lo : x;
  return (hi < y) ? hi : y;
}

static inline int8_t requantize(const TswapKernel* k, int64_t acc64, const int32_t* bias, int oc) {
  int32_t acc = (int32_t)(uint32_t)(uint64_t)acc64; /* TFLite sums in int32 (wrapping in practice) */
  if (bias) acc = (int32_t)((uint32_t)acc + (uint32_t)bias[oc]);
  acc = k->g.single_rounding ? mbqm_single(acc, k->multiplier[oc], k->shift[oc])
                             : mbqm_double(acc, k->multiplier[oc], k->shift[oc]);
  acc += k->g.output_offset;
  if (acc < k->g.act_min) acc = k->g.act_min;
  if (acc > k->g.act_max) acc = k->g.act_max;
  return (int8_t)acc;
}

/* ------------------------------------------------------------------------------ allocation */
int tswap_kernel_alloc(TswapKernel* k) {
  const TswapGeometry* g = &k->g;
  size_t elem = g->is_int8 ? sizeof(int64_t) : sizeof(float);
  size_t count;
  if (g->op == kTfLiteBuiltinFullyConnected) {
    count = (size_t)g->batches;
    k->filter_elems = (uint64_t)g->out_c * (uint64_t)g->depth;
  } else if (g->op == kTfLiteBuiltinConv2d) {
    count = (size_t)g->batches * g->out_h * g->out_w;
    k->filter_elems = (uint64_t)g->out_c * g->f_h * g->f_w * g->in_c;
  } else {
    count = (size_t)g->batches * g->out_h * g->out_w * g->out_c;
    k->filter_elems = (uint64_t)g->f_h * g->f_w * g->out_c;
  }
  k->acc = calloc(count ? count : 1, elem);
  k->acc_count = count;
  k->multiplier = (int32_t*)calloc((size_t)g->out_c, sizeof(int32_t));
  k->shift = (int*)calloc((size_t)g->out_c, sizeof(int));
  if (g->is_int8 && g->op == kTfLiteBuiltinFullyConnected) {
    k->xq = (int16_t*)malloc((size_t)g->batches * g->depth * sizeof(int16_t) + 1);
    if (!k->xq) return -1;
  }
  return (k->acc && k->multiplier && k->shift) ? 0 : -1;
}

void tswap_kernel_free(TswapKernel* k) {
  free(k->acc);
  free(k->multiplier);
  free(k->shift);
  free(k->xq);
  k->acc = NULL;
  k->multiplier = NULL;
  k->shift = NULL;
  k->xq = NULL;
}

void tswap_kernel_begin(TswapKernel* k, const TswapIo* io) {
  const TswapGeometry* g = &k->g;
  if (g->is_int8 && g->op == kTfLiteBuiltinFullyConnected) {
    const int8_t* x = (const int8_t*)io->input;
    size_t n = (size_t)g->batches * g->depth;
    for (size_t i = 0; i < n; ++i) k->xq[i] = (int16_t)((int32_t)x[i] + g->input_offset);
  }
}

/* -------------------------------------------------------------------------- FULLY_CONNECTED */
/* Float: one row part [d0, d1) of output channel oc. Four full rows at once when possible
 * (independent accumulators, each summed in TFLite's order). */
static void fc_f32(TswapKernel* k, const TswapIo* io, const float* w, uint64_t first, uint64_t count) {
  const TswapGeometry* g = &k->g;
  const float* x = (const float*)io->input;
  const float* bias = (const float*)io->bias;
  float* out = (float*)io->output;
  float* acc = (float*)k->acc;
  const int D = g->depth, OC = g->out_c;
  uint64_t e = first, end = first + count;
  while (e < end) {
    int oc = (int)(e / (uint64_t)D);
    int d0 = (int)(e % (uint64_t)D);
    if (d0 == 0 && end - e >= 4ull * (uint64_t)D) {
      const float* w0 = w + (e - first);
      const float *w1 = w0 + D, *w2 = w1 + D, *w3 = w2 + D;
      for (int b = 0; b < g->batches; ++b) {
        const float* xb = x + (size_t)b * D;
        float t0 = 0.f, t1 = 0.f, t2 = 0.f, t3 = 0.f;
        for (int d = 0; d < D; ++d) {
          float xd = xb[d];
          t0 += xd * w0[d];
          t1 += xd * w1[d];
          t2 += xd * w2[d];
          t3 += xd * w3[d];
        }
        float* o = out + (size_t)b * OC + oc;
        o[0] = clamp_f(t0 + (bias ? bias[oc] : 0.0f), g->act_min_f, g->act_max_f);
        o[1] = clamp_f(t1 + (bias ? bias[oc + 1] : 0.0f), g->act_min_f, g->act_max_f);
        o[2] = clamp_f(t2 + (bias ? bias[oc + 2] : 0.0f), g->act_min_f, g->act_max_f);
        o[3] = clamp_f(t3 + (bias ? bias[oc + 3] : 0.0f), g->act_min_f, g->act_max_f);
      }
      e += 4ull * (uint64_t)D;
      continue;
    }
    uint64_t avail = end - e;
    int d1 = (uint64_t)(D - d0) < avail ? D : d0 + (int)avail;
    const float* wr = w + (e - first) - d0; /* wr[d] is weight (oc, d) */
    for (int b = 0; b < g->batches; ++b) {
      const float* xb = x + (size_t)b * D;
      float t = d0 == 0 ? 0.f : acc[b];
      for (int d = d0; d < d1; ++d) t += xb[d] * wr[d];
      acc[b] = t;
      if (d1 == D) out[(size_t)b * OC + oc] = clamp_f(t + (bias ? bias[oc] : 0.0f), g->act_min_f, g->act_max_f);
    }
    e += (uint64_t)(d1 - d0);
  }
}

TSWAP_MULTIVERSION static void fc_i8(TswapKernel* k, const TswapIo* io, const int8_t* w, uint64_t first, uint64_t count) {
  const TswapGeometry* g = &k->g;
  const int32_t* bias = (const int32_t*)io->bias;
  int8_t* out = (int8_t*)io->output;
  int64_t* acc = (int64_t*)k->acc;
  const int D = g->depth, OC = g->out_c;
  uint64_t e = first, end = first + count;
  while (e < end) {
    int oc = (int)(e / (uint64_t)D);
    int d0 = (int)(e % (uint64_t)D);
    uint64_t avail = end - e;
    int d1 = (uint64_t)(D - d0) < avail ? D : d0 + (int)avail;
    const int8_t* wr = w + (e - first) - d0;
    for (int b = 0; b < g->batches; ++b) {
      const int16_t* xb = k->xq + (size_t)b * D;
      int64_t a = d0 == 0 ? 0 : acc[b];
      for (int c0 = d0; c0 < d1; c0 += 32768) { /* |w| <= 128, |x + offset| <= 255: no int32 overflow in 32768 terms */
        int c1 = d1 - c0 > 32768 ? c0 + 32768 : d1;
        int32_t t = 0;
        for (int d = c0; d < c1; ++d) t += (int16_t)wr[d] * xb[d]; /* int16 x int16 -> int32 dot product */
        a += t;
      }
      acc[b] = a;
      if (d1 == D) out[(size_t)b * OC + oc] = requantize(k, a, bias, oc);
    }
    e += (uint64_t)(d1 - d0);
  }
}

/* --------------------------------------------------------------------------------- CONV_2D */
/* Filter [OC, FH, FW, IC]; per output pixel partial sums for the current output channel. */
static void conv(TswapKernel* k, const TswapIo* io, const void* wv, uint64_t first, uint64_t count) {
  const TswapGeometry* g = &k->g;
  const int IC = g->in_c, FW = g->f_w, OC = g->out_c;
  const uint64_t K = (uint64_t)g->f_h * FW * IC;
  const int P = g->batches * g->out_h * g->out_w;
  uint64_t e = first, end = first + count;
  while (e < end) {
    int oc = (int)(e / K);
    uint64_t kk = e % K;
    uint64_t k1 = (K - kk) < (end - e) ? K : kk + (end - e);
    if (kk == 0) memset(k->acc, 0, (size_t)P * (g->is_int8 ? sizeof(int64_t) : sizeof(float)));
    while (kk < k1) {
      int fy = (int)(kk / ((uint64_t)FW * IC));
      int fx = (int)((kk / (uint64_t)IC) % (uint64_t)FW);
      int ic0 = (int)(kk % (uint64_t)IC);
      int ic1 = (uint64_t)(IC - ic0) < (k1 - kk) ? IC : ic0 + (int)(k1 - kk);
      size_t woff = (size_t)(e - first) + (size_t)(kk - (e % K));
      int p = 0;
      for (int b = 0; b < g->batches; ++b) {
        for (int oy = 0; oy < g->out_h; ++oy) {
          int iy = oy * g->stride_h - g->pad_h + g->dil_h * fy;
          for (int ox = 0; ox < g->out_w; ++ox, ++p) {
            int ix = ox * g->stride_w - g->pad_w + g->dil_w * fx;
            if (iy < 0 || iy >= g->in_h || ix < 0 || ix >= g->in_w) continue;
            size_t xoff = (((size_t)b * g->in_h + iy) * g->in_w + ix) * IC;
            if (g->is_int8) {
              const int8_t* xin = (const int8_t*)io->input + xoff;
              const int8_t* wk = (const int8_t*)wv + woff - ic0;
              int32_t t = 0;
              for (int ic = ic0; ic < ic1; ++ic) t += (int32_t)wk[ic] * ((int32_t)xin[ic] + g->input_offset);
              ((int64_t*)k->acc)[p] += t;
            } else {
              const float* xin = (const float*)io->input + xoff;
              const float* wk = (const float*)wv + woff - ic0;
              float t = ((float*)k->acc)[p];
              for (int ic = ic0; ic < ic1; ++ic) t += xin[ic] * wk[ic];
              ((float*)k->acc)[p] = t;
            }
          }
        }
      }
      kk += (uint64_t)(ic1 - ic0);
    }
    if (k1 == K) {
      for (int q = 0; q < P; ++q) {
        if (g->is_int8) {
          ((int8_t*)io->output)[(size_t)q * OC + oc] = requantize(k, ((int64_t*)k->acc)[q], (const int32_t*)io->bias, oc);
        } else {
          float bv = io->bias ? ((const float*)io->bias)[oc] : 0.0f;
          ((float*)io->output)[(size_t)q * OC + oc] = clamp_f(((float*)k->acc)[q] + bv, g->act_min_f, g->act_max_f);
        }
      }
    }
    e += k1 - (e % K);
  }
}

/* ----------------------------------------------------------------------- DEPTHWISE_CONV_2D */
/* Filter [1, FH, FW, OC]; partial sums for every (pixel, output channel). */
static void depthwise(TswapKernel* k, const TswapIo* io, const void* wv, uint64_t first, uint64_t count) {
  const TswapGeometry* g = &k->g;
  const int OC = g->out_c, IC = g->in_c, M = g->depth_multiplier;
  const int rows = g->f_h * g->f_w;
  const int P = g->batches * g->out_h * g->out_w;
  uint64_t e = first, end = first + count;
  while (e < end) {
    int row = (int)(e / (uint64_t)OC);
    int oc0 = (int)(e % (uint64_t)OC);
    int oc1 = (uint64_t)(OC - oc0) < (end - e) ? OC : oc0 + (int)(end - e);
    int fy = row / g->f_w, fx = row % g->f_w;
    size_t woff = (size_t)(e - first) - (size_t)oc0; /* wk[oc] is weight (fy, fx, oc) */
    if (row == 0) {
      for (int q = 0; q < P; ++q) {
        if (g->is_int8) memset((int64_t*)k->acc + (size_t)q * OC + oc0, 0, sizeof(int64_t) * (size_t)(oc1 - oc0));
        else memset((float*)k->acc + (size_t)q * OC + oc0, 0, sizeof(float) * (size_t)(oc1 - oc0));
      }
    }
    int p = 0;
    for (int b = 0; b < g->batches; ++b) {
      for (int oy = 0; oy < g->out_h; ++oy) {
        int iy = oy * g->stride_h - g->pad_h + g->dil_h * fy;
        for (int ox = 0; ox < g->out_w; ++ox, ++p) {
          int ix = ox * g->stride_w - g->pad_w + g->dil_w * fx;
          if (iy < 0 || iy >= g->in_h || ix < 0 || ix >= g->in_w) continue;
          size_t xoff = (((size_t)b * g->in_h + iy) * g->in_w + ix) * IC;
          if (g->is_int8) {
            const int8_t* xin = (const int8_t*)io->input + xoff;
            const int8_t* wk = (const int8_t*)wv + woff;
            int64_t* a = (int64_t*)k->acc + (size_t)p * OC;
            for (int oc = oc0; oc < oc1; ++oc) a[oc] += (int32_t)wk[oc] * ((int32_t)xin[oc / M] + g->input_offset);
          } else {
            const float* xin = (const float*)io->input + xoff;
            const float* wk = (const float*)wv + woff;
            float* a = (float*)k->acc + (size_t)p * OC;
            for (int oc = oc0; oc < oc1; ++oc) a[oc] += xin[oc / M] * wk[oc];
          }
        }
      }
    }
    if (row == rows - 1) {
      for (int q = 0; q < P; ++q) {
        for (int oc = oc0; oc < oc1; ++oc) {
          size_t i = (size_t)q * OC + oc;
          if (g->is_int8) {
            ((int8_t*)io->output)[i] = requantize(k, ((int64_t*)k->acc)[i], (const int32_t*)io->bias, oc);
          } else {
            float bv = io->bias ? ((const float*)io->bias)[oc] : 0.0f;
            ((float*)io->output)[i] = clamp_f(((float*)k->acc)[i] + bv, g->act_min_f, g->act_max_f);
          }
        }
      }
    }
    e += (uint64_t)(oc1 - oc0);
  }
}

void tswap_kernel_tile(TswapKernel* k, const TswapIo* io, const void* w, uint64_t first, uint64_t count) {
  switch (k->g.op) {
    case kTfLiteBuiltinFullyConnected:
      if (k->g.is_int8) fc_i8(k, io, (const int8_t*)w, first, count);
      else fc_f32(k, io, (const float*)w, first, count);
      break;
    case kTfLiteBuiltinConv2d:
      conv(k, io, w, first, count);
      break;
    default:
      depthwise(k, io, w, first, count);
      break;
  }
}
