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
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/tswap_crc32_fast.h"
#include "tswap_delegate.h"
#include "tswap_geometry.h"
#include "tswap_kernels.h"
#include "tswap_options.h"
#include "tswap_reader.h"
#include "tswap_table.h"
#include "tswap_tflite_abi.h"

#define TSWAP_EXPORT __attribute__((visibility("default")))

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
  if (!tswap_node_claimable(d, ctx, node, reg->builtin_code, n)) {
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
  if (tswap_build_geometry(ctx, n, why, sizeof why) != 0) {
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
  if (n->kernel.g.is_int8) tswap_node_multipliers(ctx, n);
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
    if (tswap_node_claimable(d, ctx, node, reg->builtin_code, &probe)) nodes[n_claim++] = plan->data[i];
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
  if (tswap_parse_options(keys, values, n, &d->opts, err, err_len)) goto fail_early;
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
