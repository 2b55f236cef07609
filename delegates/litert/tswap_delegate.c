/* tflm_swap LiteRT external delegate: claims FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D nodes
 * whose weights live in the segments of a tflm_swap model and streams those weights from the file
 * in CRC-checked tiles (double-buffered, read by a background thread) instead of touching the
 * mmapped tensor data. Loaded with load_delegate(path, options); see docs/DELEGATE.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tswap_crc32_fast.h"
#include "tswap_kernels.h"
#include "tswap_reader.h"
#include "tswap_table.h"
#include "tswap_tflite_abi.h"

#define TSWAP_EXPORT __attribute__((visibility("default")))
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

typedef struct TswapDelegate {
  TfLiteDelegate base;
  TswapOptions opts;
  int fd;
  TswapTable table;
  TswapReader reader;
  pthread_mutex_t eval_mu;
  uint64_t claimed;
  uint64_t invokes;
  struct TswapNode* first; /* claimed nodes in execution order (the order they were initialised) */
  struct TswapNode* last;
  struct TswapNode* pending_node; /* node whose tile 0 the reader is fetching ahead, or NULL */
  int pending_slot;
} TswapDelegate;

typedef struct TswapNode {
  TswapDelegate* d;
  int op;
  int input, filter, bias, output;
  int activation;
  TfLiteConvParams conv;
  TfLiteDepthwiseConvParams dw;
  TfLiteFullyConnectedParams fc;
  const TswapTensorRecord* rec;
  const TswapTensorRecord* bias_rec; /* bias stored in a segment: read from the file, not the mmap */
  void* bias_copy;
  TswapKernel kernel;
  int prepared;
  struct TswapNode* prev;
  struct TswapNode* next;
} TswapNode;

/* ----------------------------------------------------------------------------------- options */
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

static int op_slot(int builtin) {
  return builtin == kTfLiteBuiltinFullyConnected ? 0 : builtin == kTfLiteBuiltinConv2d ? 1 : 2;
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

static int parse_options(char** keys, char** values, size_t n, TswapOptions* o, char* err, size_t err_len) {
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

/* ------------------------------------------------------------------------------ node checks */
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
static int build_geometry(TfLiteContext* ctx, TswapNode* n, char* why, size_t why_len) {
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
      oc_dim = 3;
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
  g->single_rounding = n->d->opts.single_rounding[op_slot(n->op)];
  if (tswap_activation_range_int8(g->activation, out->params.scale, out->params.zero_point, &g->act_min,
                                  &g->act_max)) {
    snprintf(why, why_len, "activation range overflows"); return -1;
  }
  return 0;
}

/* Per-channel multipliers exactly as TFLite computes them. */
static void quantize_multipliers(TfLiteContext* ctx, TswapNode* n) {
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

/* Can the delegate take this node? Fills n (tensor indices, params) when it can. */
static int claimable(TswapDelegate* d, TfLiteContext* ctx, const TfLiteNode* node, int code, TswapNode* n) {
  memset(n, 0, sizeof *n);
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
  if (f->allocation_type != kTfLiteMmapRo || f->bytes < d->opts.min_weight_bytes) return 0;
  if (n->bias >= 0 && ctx->tensors[n->bias].allocation_type != kTfLiteMmapRo) return 0;
  n->rec = tswap_table_find(&d->table, (uint32_t)n->filter);
  if (!n->rec || n->rec->size != f->bytes) return 0;
  n->bias_rec = n->bias >= 0 ? tswap_table_find(&d->table, (uint32_t)n->bias) : NULL;
  if (n->bias_rec && n->bias_rec->size != ctx->tensors[n->bias].bytes) return 0;
  char why[128];
  return build_geometry(ctx, n, why, sizeof why) == 0;
}

/* ------------------------------------------------------------------------- kernel callbacks */
static void* node_init(TfLiteContext* ctx, const char* buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams* params = (const TfLiteDelegateParams*)buffer;
  if (!params || !params->nodes_to_replace || params->nodes_to_replace->size != 1) return NULL;
  TswapDelegate* d = (TswapDelegate*)params->delegate->data_;
  TfLiteNode* node = NULL;
  TfLiteRegistration* reg = NULL;
  if (ctx->GetNodeAndRegistration(ctx, params->nodes_to_replace->data[0], &node, &reg) != kTfLiteOk) return NULL;
  TswapNode* n = (TswapNode*)calloc(1, sizeof *n);
  if (!n) return NULL;
  if (!claimable(d, ctx, node, reg->builtin_code, n)) {
    free(n);
    return NULL;
  }
  pthread_mutex_lock(&d->eval_mu);
  n->prev = d->last;
  if (d->last) d->last->next = n;
  else d->first = n;
  d->last = n;
  pthread_mutex_unlock(&d->eval_mu);
  return n;
}

static void node_free(TfLiteContext* ctx, void* buffer) {
  (void)ctx;
  TswapNode* n = (TswapNode*)buffer;
  if (!n) return;
  TswapDelegate* d = n->d;
  pthread_mutex_lock(&d->eval_mu);
  if (d->pending_node == n) {
    tswap_reader_drain(&d->reader);
    d->pending_node = NULL;
  }
  if (n->prev) n->prev->next = n->next;
  else d->first = n->next;
  if (n->next) n->next->prev = n->prev;
  else d->last = n->prev;
  pthread_mutex_unlock(&d->eval_mu);
  tswap_kernel_free(&n->kernel);
  free(n->bias_copy);
  free(n);
}

/* Read a segment-resident bias from the file once, checking its tiles' CRCs: touching it through
 * the interpreter's mmap would fault in a whole (up to 2 MiB) page-cache folio around it. */
static TfLiteStatus read_bias(TfLiteContext* ctx, TswapNode* n) {
  const TswapTensorRecord* r = n->bias_rec;
  const TswapTable* t = &n->d->table;
  free(n->bias_copy);
  n->bias_copy = malloc((size_t)r->size);
  if (!n->bias_copy) {
    ctx->ReportError(ctx, "tflm_swap delegate: out of memory reading the bias of tensor %d", n->filter);
    return kTfLiteError;
  }
  for (uint32_t i = 0; i < r->n_tiles; ++i) {
    uint64_t off = (uint64_t)i * t->tile_bytes;
    size_t len = (size_t)(r->size - off < t->tile_bytes ? r->size - off : t->tile_bytes);
    uint8_t* dst = (uint8_t*)n->bias_copy + off;
    if (tswap_pread_full(n->d->fd, dst, len, r->offset + off) != (int64_t)len) {
      ctx->ReportError(ctx, "tflm_swap delegate: cannot read the bias (tensor %u) from the weights file", r->tensor);
      return kTfLiteError;
    }
    uint32_t crc = tswap_crc32_fast(0, dst, len);
    if (crc != t->tile_crc[r->first_tile + i]) {
      ctx->ReportError(ctx, "tflm_swap delegate: tile %u of tensor %u (the bias, file bytes %llu..%llu) fails its "
                       "CRC32 check (computed %08x, table has %08x): the weights file is corrupt", i, r->tensor,
                       (unsigned long long)(r->offset + off), (unsigned long long)(r->offset + off + len), crc,
                       t->tile_crc[r->first_tile + i]);
      return kTfLiteError;
    }
  }
  return kTfLiteOk;
}

static TfLiteStatus node_prepare(TfLiteContext* ctx, TfLiteNode* node) {
  TswapNode* n = (TswapNode*)node->user_data;
  if (!n) {
    ctx->ReportError(ctx, "tflm_swap delegate: node was not initialised");
    return kTfLiteError;
  }
  char why[128];
  if (build_geometry(ctx, n, why, sizeof why) != 0) {
    ctx->ReportError(ctx, "tflm_swap delegate: cannot run node on tensor %d: %s", n->filter, why);
    return kTfLiteError;
  }
  tswap_kernel_free(&n->kernel);
  if (tswap_kernel_alloc(&n->kernel) != 0) {
    ctx->ReportError(ctx, "tflm_swap delegate: out of memory preparing tensor %d", n->filter);
    return kTfLiteError;
  }
  if (n->kernel.filter_elems * (n->kernel.g.is_int8 ? 1u : 4u) != n->rec->size) {
    ctx->ReportError(ctx, "tflm_swap delegate: weights of tensor %d do not match the tile table", n->filter);
    return kTfLiteError;
  }
  if (n->kernel.g.is_int8) quantize_multipliers(ctx, n);
  uint64_t slot = n->d->table.tile_bytes < n->rec->size ? n->d->table.tile_bytes : n->rec->size;
  pthread_mutex_lock(&n->d->eval_mu);
  tswap_reader_drain(&n->d->reader);
  n->d->pending_node = NULL; /* slots may be reallocated */
  int rc = tswap_reader_reserve(&n->d->reader, (size_t)slot);
  pthread_mutex_unlock(&n->d->eval_mu);
  if (rc != 0) {
    ctx->ReportError(ctx, "tflm_swap delegate: cannot allocate two %llu-byte tile buffers",
                     (unsigned long long)slot);
    return kTfLiteError;
  }
  if (n->bias_rec && read_bias(ctx, n) != kTfLiteOk) return kTfLiteError;
  n->prepared = 1;
  return kTfLiteOk;
}

static void tile_request(const TswapDelegate* d, const TswapTensorRecord* rec, uint32_t t, TswapReadRequest* q) {
  uint64_t off = (uint64_t)t * d->table.tile_bytes;
  q->offset = rec->offset + off;
  q->len = (size_t)(rec->size - off < d->table.tile_bytes ? rec->size - off : d->table.tile_bytes);
  q->crc = d->table.tile_crc[rec->first_tile + t];
  q->tensor = rec->tensor;
  q->tile = t;
}

/* Stream the node's tiles through the double buffer. With prefetch, tile t+1 is read while tile t
 * is computed, and during the last tile the reader starts on tile 0 of the next claimed node (in
 * execution order), which that node picks up if it is the next one to run. Called under eval_mu. */
static TfLiteStatus stream_tiles(TswapNode* n, const TswapIo* io, char* err, size_t err_len) {
  TswapDelegate* d = n->d;
  TswapReader* r = &d->reader;
  const TswapTensorRecord* rec = n->rec;
  const unsigned esize = n->kernel.g.is_int8 ? 1u : 4u;
  TswapReadRequest q;
  int base = 0;
  int have_first = 0;
  if (d->pending_node == n && r->prefetch) {
    base = d->pending_slot;
    have_first = 1;
  } else if (d->pending_node) {
    tswap_reader_drain(r); /* fetched ahead for a node that did not run next */
  }
  d->pending_node = NULL;
  for (uint32_t t = 0; t < rec->n_tiles; ++t) {
    int slot = r->prefetch ? (int)((t + (uint32_t)base) & 1u) : 0;
    if (!r->prefetch || (t == 0 && !have_first)) {
      tile_request(d, rec, t, &q);
      tswap_reader_submit(r, slot, &q);
    }
    const uint8_t* data = tswap_reader_wait(r, slot, err, err_len);
    if (!data) return kTfLiteError;
    if (r->prefetch) {
      int other = slot ^ 1;
      if (t + 1 < rec->n_tiles) {
        tile_request(d, rec, t + 1, &q);
        tswap_reader_submit(r, other, &q);
      } else if (n->next && n->next->prepared) {
        tile_request(d, n->next->rec, 0, &q);
        tswap_reader_submit(r, other, &q);
        d->pending_node = n->next;
        d->pending_slot = other;
      }
    }
    uint64_t off = (uint64_t)t * d->table.tile_bytes;
    uint64_t len = rec->size - off < d->table.tile_bytes ? rec->size - off : d->table.tile_bytes;
    tswap_kernel_tile(&n->kernel, io, data, off / esize, len / esize);
  }
  return kTfLiteOk;
}

static TfLiteStatus node_invoke(TfLiteContext* ctx, TfLiteNode* node) {
  TswapNode* n = (TswapNode*)node->user_data;
  if (!n || !n->prepared) {
    ctx->ReportError(ctx, "tflm_swap delegate: node invoked before it was prepared");
    return kTfLiteError;
  }
  TswapIo io;
  io.input = ctx->tensors[n->input].data.data;
  io.bias = n->bias_copy ? n->bias_copy : (n->bias >= 0 ? ctx->tensors[n->bias].data.data : NULL);
  io.output = ctx->tensors[n->output].data.data;
  if (!io.input || !io.output || (n->bias >= 0 && !io.bias)) {
    ctx->ReportError(ctx, "tflm_swap delegate: tensors of node on tensor %d are not allocated", n->filter);
    return kTfLiteError;
  }
  char err[TSWAP_ERR_LEN];
  err[0] = '\0';
  pthread_mutex_lock(&n->d->eval_mu);
  tswap_kernel_begin(&n->kernel, &io);
  TfLiteStatus st = stream_tiles(n, &io, err, sizeof err);
  if (st != kTfLiteOk) {
    tswap_reader_drain(&n->d->reader);
    n->d->pending_node = NULL;
  }
  n->d->invokes++;
  pthread_mutex_unlock(&n->d->eval_mu);
  if (st != kTfLiteOk) ctx->ReportError(ctx, "%s", err);
  return st;
}

static const char* node_profiling_string(const TfLiteContext* ctx, const TfLiteNode* node) {
  (void)ctx;
  (void)node;
  return "tflm_swap streamed weights";
}

/* --------------------------------------------------------------------------- delegate hooks */
/* The interpreter must run the model the tile table describes: its `tflm_swap` metadata header
 * (which carries the CRC32 of the manifest, and so of every segment's CRC) must equal the table's. */
static TfLiteStatus check_same_model(TfLiteContext* ctx, const TswapDelegate* d) {
  if (!ctx->GetModelMetadata) return kTfLiteOk; /* runtimes without the accessor: nothing to compare */
  const char* ptr = NULL;
  size_t bytes = 0;
  if (ctx->GetModelMetadata(ctx, "tflm_swap", &ptr, &bytes) != kTfLiteOk || !ptr || bytes < 16) {
    ctx->ReportError(ctx, "tflm_swap delegate: the interpreter's model has no tflm_swap manifest, so it is not "
                     "the segmented model '%s' the delegate streams weights from", d->opts.weights);
    return kTfLiteError;
  }
  if (memcmp(ptr, d->table.manifest_header, sizeof d->table.manifest_header) != 0) {
    ctx->ReportError(ctx, "tflm_swap delegate: the interpreter's model is not '%s' (its tflm_swap manifest "
                     "differs); load the interpreter from the same file as the delegate's 'weights' option",
                     d->opts.weights);
    return kTfLiteError;
  }
  return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext* ctx, TfLiteDelegate* base) {
  TswapDelegate* d = (TswapDelegate*)base->data_;
  if (check_same_model(ctx, d) != kTfLiteOk) return kTfLiteError;
  TfLiteIntArray* plan = NULL;
  if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk || !plan) return kTfLiteError;
  int n_plan = plan->size;
  int* nodes = (int*)malloc(sizeof(int) * (size_t)(n_plan > 0 ? n_plan : 1));
  if (!nodes) return kTfLiteError;
  int n_claim = 0;
  for (int i = 0; i < n_plan; ++i) { /* copy first: replacing nodes rewrites the plan */
    TfLiteNode* node = NULL;
    TfLiteRegistration* reg = NULL;
    if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk) continue;
    TswapNode probe;
    if (claimable(d, ctx, node, reg->builtin_code, &probe)) nodes[n_claim++] = plan->data[i];
  }
  TswapPaddedRegistration padded;
  memset(&padded, 0, sizeof padded);
  TfLiteRegistration* r = &padded.registration;
  r->init = node_init;
  r->free = node_free;
  r->prepare = node_prepare;
  r->invoke = node_invoke;
  r->profiling_string = node_profiling_string;
  r->custom_name = "TflmSwapStreamedWeights";
  r->version = 1;
  TfLiteStatus st = kTfLiteOk;
  struct { int size; int data[1]; } one;
  for (int i = 0; i < n_claim && st == kTfLiteOk; ++i) {
    /* one partition per node: no intermediate tensor ever lives inside a delegate partition */
    one.size = 1;
    one.data[0] = nodes[i];
    st = ctx->ReplaceNodeSubsetsWithDelegateKernels(ctx, *(TfLiteRegistration*)&padded, (const TfLiteIntArray*)&one,
                                                    base);
    if (st == kTfLiteOk) d->claimed++;
  }
  free(nodes);
  return st;
}

static void delegate_free(TswapDelegate* d) {
  if (!d) return;
  tswap_reader_destroy(&d->reader);
  tswap_table_free(&d->table);
  if (d->fd >= 0) close(d->fd);
  pthread_mutex_destroy(&d->eval_mu);
  free(d);
}

static TswapDelegate* delegate_create(char** keys, char** values, size_t n, char* err, size_t err_len) {
  TswapDelegate* d = (TswapDelegate*)calloc(1, sizeof *d);
  if (!d) {
    snprintf(err, err_len, "tflm_swap delegate: out of memory");
    return NULL;
  }
  d->fd = -1;
  pthread_mutex_init(&d->eval_mu, NULL);
  if (parse_options(keys, values, n, &d->opts, err, err_len)) goto fail_early;
  d->fd = open(d->opts.weights, O_RDONLY | O_CLOEXEC);
  if (d->fd < 0) {
    snprintf(err, err_len, "tflm_swap delegate: cannot open weights file '%s': %s", d->opts.weights, strerror(errno));
    goto fail_early;
  }
  struct stat st;
  if (fstat(d->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, err_len, "tflm_swap delegate: weights '%.300s' is not a regular file", d->opts.weights);
    goto fail_early;
  }
  if (tswap_table_load(d->opts.table, d->fd, &d->table, err, err_len)) goto fail_early;
  if (d->opts.tile_bytes && d->opts.tile_bytes != d->table.tile_bytes) {
    snprintf(err, err_len, "tflm_swap delegate: option tile_bytes=%llu but the tile table '%.200s' was built with "
             "%llu-byte tiles; rebuild it with tflm_swap.delegate_options(..., tile_bytes=%llu)",
             (unsigned long long)d->opts.tile_bytes, d->opts.table, (unsigned long long)d->table.tile_bytes,
             (unsigned long long)d->opts.tile_bytes);
    goto fail_early;
  }
  if (tswap_reader_init(&d->reader, d->fd, d->opts.prefetch, err, err_len)) goto fail_early;
  d->base.data_ = d;
  d->base.Prepare = delegate_prepare;
  d->base.flags = 0;
  return d;
fail_early:
  tswap_table_free(&d->table);
  if (d->fd >= 0) close(d->fd);
  pthread_mutex_destroy(&d->eval_mu);
  free(d);
  return NULL;
}

/* ----------------------------------------------------------------- external delegate ABI */
TSWAP_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(char** options_keys, char** options_values,
                                                           size_t num_options,
                                                           void (*report_error)(const char*)) {
  char err[TSWAP_ERR_LEN];
  err[0] = '\0';
  TswapDelegate* d = delegate_create(options_keys, options_values, num_options, err, sizeof err);
  if (!d) {
    if (report_error) report_error(err);
    return NULL;
  }
  return &d->base;
}

TSWAP_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (delegate) delegate_free((TswapDelegate*)delegate->data_);
}

/* Counters for tests and benchmarks: claimed nodes, node invocations, tiles read, bytes read,
 * ns the compute thread waited for tiles, bytes of each tile slot, number of slots. */
TSWAP_EXPORT int tflm_swap_delegate_stats(const TfLiteDelegate* delegate, uint64_t* out, int n) {
  if (!delegate || !out || n < 7) return -1;
  TswapDelegate* d = (TswapDelegate*)delegate->data_;
  pthread_mutex_lock(&d->eval_mu);
  pthread_mutex_lock(&d->reader.mu);
  out[0] = d->claimed;
  out[1] = d->invokes;
  out[2] = d->reader.tiles_read;
  out[3] = d->reader.bytes_read;
  out[4] = d->reader.wait_ns;
  out[5] = d->reader.capacity;
  out[6] = d->reader.prefetch ? 2 : 1;
  pthread_mutex_unlock(&d->reader.mu);
  pthread_mutex_unlock(&d->eval_mu);
  return 7;
}

/* zlib-compatible CRC32 as the delegate computes it (exported for tests). */
TSWAP_EXPORT uint32_t tflm_swap_crc32(uint32_t crc, const void* data, size_t len) {
  return tswap_crc32_fast(crc, data, len);
}
