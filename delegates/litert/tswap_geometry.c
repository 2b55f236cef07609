#include "tswap_geometry.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tswap_kernels.h"
#include "tswap_options.h"
#include "tswap_table.h"

static int dims_are(const TfLiteTensor* t, int rank) { return t->dims && t->dims->size == rank; }

static int64_t num_elements(const TfLiteTensor* t) {
  if (!t->dims) return -1;
  int64_t n = 1;
  for (int i = 0; i < t->dims->size; ++i) {
    if (t->dims->data[i] < 0) return -1;
    n *= t->dims->data[i];
    if (n > (1ll << 40)) return -1;
  }
  return n;
}

static const TfLiteAffineQuantization* affine(const TfLiteTensor* t) {
  if (t->quantization.type != kTfLiteAffineQuantization || !t->quantization.params) return NULL;
  return (const TfLiteAffineQuantization*)t->quantization.params;
}

static int tensor_index_ok(const TfLiteContext* ctx, int idx) { return idx >= 0 && (size_t)idx < ctx->tensors_size; }

/* TFLite's ComputePaddingWithOffset / ComputeOutSize. */
static int out_size(int padding, int in, int filter, int stride, int dil) {
  int eff = (filter - 1) * dil + 1;
  if (stride <= 0) return -1;
  if (padding == kTfLitePaddingSame) return (in + stride - 1) / stride;
  if (padding == kTfLitePaddingValid) return (in + stride - eff) / stride;
  return -1;
}

static int pad_of(int stride, int dil, int in, int filter, int out) {
  int eff = (filter - 1) * dil + 1;
  int total = (out - 1) * stride + eff - in;
  return total > 0 ? total / 2 : 0;
}

/* Fill the geometry of node n from tensor metadata (never tensor data). Returns 0, or -1 with a
 * reason (not claimable / invalid). */
int tswap_build_geometry(TfLiteContext* ctx, TswapNode* n, char* why, size_t why_len) {
  TswapGeometry* g = &n->kernel.g;
  memset(g, 0, sizeof *g);
  g->op = n->op;
  const TfLiteTensor* in = &ctx->tensors[n->input];
  const TfLiteTensor* f = &ctx->tensors[n->filter];
  const TfLiteTensor* out = &ctx->tensors[n->output];
  const TfLiteTensor* b = n->bias >= 0 ? &ctx->tensors[n->bias] : NULL;
  if (in->type == kTfLiteFloat32 && f->type == kTfLiteFloat32 && out->type == kTfLiteFloat32 &&
      (!b || b->type == kTfLiteFloat32)) {
    g->is_int8 = 0;
  } else if (in->type == kTfLiteInt8 && f->type == kTfLiteInt8 && out->type == kTfLiteInt8 &&
             (!b || b->type == kTfLiteInt32)) {
    g->is_int8 = 1;
  } else {
    snprintf(why, why_len, "types are not all float32 or int8 (with int32 bias)");
    return -1;
  }
  if (f->sparsity) { snprintf(why, why_len, "sparse weights"); return -1; }
  g->activation = n->activation;
  if (g->activation != kTfLiteActNone && g->activation != kTfLiteActRelu && g->activation != kTfLiteActRelu6 &&
      g->activation != kTfLiteActReluN1To1) {
    snprintf(why, why_len, "fused activation %d is not supported", g->activation);
    return -1;
  }
  int oc_dim = 0;
  if (n->op == kTfLiteBuiltinFullyConnected) {
    if (n->fc.weights_format != kTfLiteFullyConnectedWeightsFormatDefault) {
      snprintf(why, why_len, "shuffled weights format"); return -1;
    }
    if (!dims_are(f, 2)) { snprintf(why, why_len, "weights are not 2-D"); return -1; }
    g->out_c = f->dims->data[0];
    g->depth = f->dims->data[1];
    int64_t in_n = num_elements(in), out_n = num_elements(out);
    if (g->depth <= 0 || g->out_c <= 0 || in_n < 0 || in_n % g->depth) {
      snprintf(why, why_len, "input size is not a multiple of the weights' depth"); return -1;
    }
    g->batches = (int)(in_n / g->depth);
    if (out_n != (int64_t)g->batches * g->out_c || out->dims->size < 1 ||
        out->dims->data[out->dims->size - 1] != g->out_c) {
      snprintf(why, why_len, "output shape does not match batches x units (input resized?)"); return -1;
    }
  } else {
    if (!dims_are(in, 4) || !dims_are(f, 4) || !dims_are(out, 4)) {
      snprintf(why, why_len, "tensors are not 4-D"); return -1;
    }
    g->batches = in->dims->data[0];
    g->in_h = in->dims->data[1];
    g->in_w = in->dims->data[2];
    g->in_c = in->dims->data[3];
    g->f_h = f->dims->data[1];
    g->f_w = f->dims->data[2];
    int padding;
    if (n->op == kTfLiteBuiltinConv2d) {
      g->out_c = f->dims->data[0];
      if (f->dims->data[3] != g->in_c) { snprintf(why, why_len, "grouped convolution"); return -1; }
      padding = n->conv.padding;
      g->stride_h = n->conv.stride_height; g->stride_w = n->conv.stride_width;
      g->dil_h = n->conv.dilation_height_factor; g->dil_w = n->conv.dilation_width_factor;
    } else {
      g->out_c = f->dims->data[3];
      oc_dim = tswap_channel_axis(n->op);
      if (f->dims->data[0] != 1 || g->in_c <= 0 || g->out_c % g->in_c) {
        snprintf(why, why_len, "depthwise filter shape"); return -1;
      }
      g->depth_multiplier = g->out_c / g->in_c;
      padding = n->dw.padding;
      g->stride_h = n->dw.stride_height; g->stride_w = n->dw.stride_width;
      g->dil_h = n->dw.dilation_height_factor; g->dil_w = n->dw.dilation_width_factor;
    }
    if (g->dil_h < 1 || g->dil_w < 1 || g->stride_h < 1 || g->stride_w < 1 || g->f_h < 1 || g->f_w < 1 ||
        g->in_c < 1 || g->out_c < 1 || g->in_c > 65536 || g->dil_h > 65536 || g->dil_w > 65536 ||
        g->stride_h > 65536 || g->stride_w > 65536 || g->f_h > 65536 || g->f_w > 65536 || g->in_h < 1 ||
        g->in_w < 1 || g->in_h > (1 << 24) || g->in_w > (1 << 24) || g->batches < 1) {
      snprintf(why, why_len, "invalid strides, dilations or shapes"); return -1;
    }
    if ((uint64_t)g->f_h * (uint64_t)g->f_w * (uint64_t)(n->op == kTfLiteBuiltinConv2d ? g->in_c : g->out_c) >
        (1ull << 31)) {
      snprintf(why, why_len, "filter too large"); return -1;
    }
    g->out_h = out_size(padding, g->in_h, g->f_h, g->stride_h, g->dil_h);
    g->out_w = out_size(padding, g->in_w, g->f_w, g->stride_w, g->dil_w);
    if (g->out_h <= 0 || g->out_w <= 0 || out->dims->data[0] != g->batches || out->dims->data[1] != g->out_h ||
        out->dims->data[2] != g->out_w || out->dims->data[3] != g->out_c) {
      snprintf(why, why_len, "output shape does not match the convolution (input resized?)"); return -1;
    }
    g->pad_h = pad_of(g->stride_h, g->dil_h, g->in_h, g->f_h, g->out_h);
    g->pad_w = pad_of(g->stride_w, g->dil_w, g->in_w, g->f_w, g->out_w);
  }
  if (b && num_elements(b) != g->out_c) { snprintf(why, why_len, "bias size"); return -1; }
  if ((uint64_t)num_elements(f) * (g->is_int8 ? 1u : 4u) != f->bytes) {
    snprintf(why, why_len, "weights byte size"); return -1;
  }
  if (!g->is_int8) {
    tswap_activation_range_float(g->activation, &g->act_min_f, &g->act_max_f);
    return 0;
  }
  const TfLiteAffineQuantization* fq = affine(f);
  if (!fq || !fq->scale || fq->scale->size < 1 || in->params.scale <= 0.f || out->params.scale <= 0.f) {
    snprintf(why, why_len, "int8 tensors without quantization parameters"); return -1;
  }
  int per_channel = fq->scale->size > 1;
  if (per_channel && (fq->scale->size != g->out_c || fq->quantized_dimension != oc_dim)) {
    snprintf(why, why_len, "per-channel scales are not along the output channels"); return -1;
  }
  /* int8 weights are symmetric in TFLite's int8 spec; anything else stays with the interpreter */
  if (f->params.zero_point != 0) { snprintf(why, why_len, "asymmetric int8 weights"); return -1; }
  if (fq->zero_point) {
    for (int i = 0; i < fq->zero_point->size; ++i) {
      if (fq->zero_point->data[i] != 0) { snprintf(why, why_len, "asymmetric int8 weights"); return -1; }
    }
  }
  g->input_offset = -in->params.zero_point;
  g->output_offset = out->params.zero_point;
  g->single_rounding = n->d->opts.single_rounding[tswap_op_slot(n->op)];
  if (tswap_activation_range_int8(g->activation, out->params.scale, out->params.zero_point, &g->act_min,
                                  &g->act_max)) {
    snprintf(why, why_len, "activation range overflows"); return -1;
  }
  return 0;
}

/* Per-channel multipliers exactly as TFLite computes them. */
void tswap_node_multipliers(TfLiteContext* ctx, TswapNode* n) {
  TswapKernel* k = &n->kernel;
  const TfLiteTensor* in = &ctx->tensors[n->input];
  const TfLiteTensor* f = &ctx->tensors[n->filter];
  const TfLiteTensor* out = &ctx->tensors[n->output];
  const TfLiteAffineQuantization* fq = affine(f);
  int per_channel = fq->scale->size > 1;
  for (int c = 0; c < k->g.out_c; ++c) {
    double m;
    if (n->op == kTfLiteBuiltinFullyConnected && !per_channel) {
      /* GetQuantizedConvolutionMultipler: the scale product is taken in float */
      m = (double)(in->params.scale * f->params.scale) / (double)out->params.scale;
    } else {
      /* PopulateConvolutionQuantizationParams */
      float fs = per_channel ? fq->scale->data[c] : fq->scale->data[0];
      m = (double)in->params.scale * (double)fs / (double)out->params.scale;
    }
    tswap_quantize_multiplier(m, k->g.single_rounding, &k->multiplier[c], &k->shift[c]);
  }
}

int tswap_channel_axis(int op) { return op == kTfLiteBuiltinDepthwiseConv2d ? 3 : 0; }

static int is_mmapped(const TfLiteContext* ctx, int idx, TfLiteType type) {
  return ctx->tensors[idx].allocation_type == kTfLiteMmapRo && ctx->tensors[idx].type == type;
}

/* The filter is the output of a TFLM_DECODE node: its encoded input must be a uint8 constant, in a
 * segment the tile table lists as encoded or inline in the graph, its ancillary input a uint8 constant. */
static int decoded_filter_claimable(TswapDelegate* d, TfLiteContext* ctx, const TfLiteNode* decode, TswapNode* n) {
  if (!decode->inputs || decode->inputs->size != 2 || !decode->outputs || decode->outputs->size != 1 ||
      decode->outputs->data[0] != n->filter)
    return 0;
  n->encoded = decode->inputs->data[0];
  n->ancillary = decode->inputs->data[1];
  if (!tensor_index_ok(ctx, n->encoded) || !tensor_index_ok(ctx, n->ancillary) ||
      !is_mmapped(ctx, n->encoded, kTfLiteUInt8) || !is_mmapped(ctx, n->ancillary, kTfLiteUInt8) ||
      ctx->tensors[n->filter].type != kTfLiteInt8)
    return 0;
  n->rec = tswap_table_find(&d->table, (uint32_t)n->encoded); /* NULL: a small encoded tensor inline in the graph */
  if (n->rec && (!n->rec->bits || n->rec->size != ctx->tensors[n->encoded].bytes)) return 0;
  n->anc_rec = tswap_table_find(&d->table, (uint32_t)n->ancillary);
  return !n->anc_rec || n->anc_rec->size == ctx->tensors[n->ancillary].bytes;
}

/* Can the delegate take this node? Fills n (tensor indices, params) when it can. */
int tswap_node_claimable(TswapDelegate* d, TfLiteContext* ctx, const TfLiteNode* node, int code,
                         const TfLiteNode* decode, TswapNode* n) {
  memset(n, 0, sizeof *n);
  n->encoded = n->ancillary = -1;
  n->d = d;
  n->op = code;
  if (code == kTfLiteBuiltinFullyConnected && (d->opts.ops & OP_FC)) {
    if (!node->builtin_data) return 0;
    n->fc = *(const TfLiteFullyConnectedParams*)node->builtin_data;
    n->activation = n->fc.activation;
  } else if (code == kTfLiteBuiltinConv2d && (d->opts.ops & OP_CONV)) {
    if (!node->builtin_data) return 0;
    n->conv = *(const TfLiteConvParams*)node->builtin_data;
    n->activation = n->conv.activation;
  } else if (code == kTfLiteBuiltinDepthwiseConv2d && (d->opts.ops & OP_DW)) {
    if (!node->builtin_data) return 0;
    n->dw = *(const TfLiteDepthwiseConvParams*)node->builtin_data;
    n->activation = n->dw.activation;
  } else {
    return 0;
  }
  if (!node->inputs || node->inputs->size < 2 || node->inputs->size > 3 || !node->outputs ||
      node->outputs->size != 1)
    return 0;
  n->input = node->inputs->data[0];
  n->filter = node->inputs->data[1];
  n->bias = node->inputs->size == 3 ? node->inputs->data[2] : -1;
  n->output = node->outputs->data[0];
  if (!tensor_index_ok(ctx, n->input) || !tensor_index_ok(ctx, n->filter) || !tensor_index_ok(ctx, n->output) ||
      (n->bias != -1 && !tensor_index_ok(ctx, n->bias)))
    return 0;
  const TfLiteTensor* f = &ctx->tensors[n->filter];
  /* a decoded filter is always claimed: nothing else can run its TFLM_DECODE */
  if (!decode && f->bytes < d->opts.min_weight_bytes) return 0;
  if (n->bias >= 0 && ctx->tensors[n->bias].allocation_type != kTfLiteMmapRo) return 0;
  if (decode) {
    if (!decoded_filter_claimable(d, ctx, decode, n)) return 0;
  } else {
    if (f->allocation_type != kTfLiteMmapRo) return 0;
    n->rec = tswap_table_find(&d->table, (uint32_t)n->filter);
    if (!n->rec || n->rec->bits || n->rec->size != f->bytes) return 0;
  }
  n->bias_rec = n->bias >= 0 ? tswap_table_find(&d->table, (uint32_t)n->bias) : NULL;
  if (n->bias_rec && n->bias_rec->size != ctx->tensors[n->bias].bytes) return 0;
  char why[128];
  return tswap_build_geometry(ctx, n, why, sizeof why) == 0;
}
