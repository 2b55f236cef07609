/* tflm_swap LiteRT external delegate: claims FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D nodes
 * whose weights live in the segments of a tflm_swap model and streams those weights from the file
 * in CRC-checked tiles (double-buffered, read by a background thread) instead of touching the
 * mmapped tensor data. A filter produced by upstream TFLM's TFLM_DECODE operator is claimed with
 * that operator as one partition and decoded tile by tile, so it never exists whole.
 * Loaded with load_delegate(path, options); see docs/DELEGATE.md. */
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
static int is_decode(const TfLiteRegistration* reg) {
  return reg->builtin_code == kTfLiteBuiltinCustom && reg->custom_name &&
         strcmp(reg->custom_name, TSWAP_DECODE_OP) == 0;
}

/* A partition is one claimed node, or a TFLM_DECODE node and the node consuming its output as its
 * filter; its only output must be that node's output. */
static void* node_init(TfLiteContext* ctx, const char* buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams* params = (const TfLiteDelegateParams*)buffer;
  if (!params || !params->nodes_to_replace || params->nodes_to_replace->size < 1 ||
      params->nodes_to_replace->size > 2 || !params->output_tensors || params->output_tensors->size != 1)
    return NULL;
  TswapDelegate* d = (TswapDelegate*)params->delegate->data_;
  TfLiteNode* node = NULL;
  TfLiteNode* decode = NULL;
  int code = -1;
  for (int i = 0; i < params->nodes_to_replace->size; ++i) {
    TfLiteNode* nd = NULL;
    TfLiteRegistration* reg = NULL;
    if (ctx->GetNodeAndRegistration(ctx, params->nodes_to_replace->data[i], &nd, &reg) != kTfLiteOk) return NULL;
    if (is_decode(reg)) {
      decode = nd;
    } else {
      node = nd;
      code = reg->builtin_code;
    }
  }
  if (!node || (params->nodes_to_replace->size == 2) != (decode != NULL)) return NULL;
  TswapNode* n = (TswapNode*)calloc(1, sizeof *n);
  if (!n) return NULL;
  if (!tswap_node_claimable(d, ctx, node, code, decode, n) || params->output_tensors->data[0] != n->output) {
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
  tswap_lut_free(&n->lut);
  free(n->decoded);
  free(n->bias_copy);
  free(n);
}

/* Read a segment-resident tensor (a bias, ancillary data) from the file once into a new buffer
 * *out, checking its tiles' CRCs: touching it through the interpreter's mmap would fault in a whole
 * (up to 2 MiB) page-cache folio around it. */
static TfLiteStatus read_checked(TfLiteContext* ctx, TswapNode* n, const TswapTensorRecord* r, const char* what,
                                 void** out) {
  const TswapTable* t = &n->d->table;
  free(*out);
  *out = malloc((size_t)r->size);
  if (!*out) {
    ctx->ReportError(ctx, "tflm_swap delegate: out of memory reading %s of tensor %d", what, n->filter);
    return kTfLiteError;
  }
  for (uint32_t i = 0; i < r->n_tiles; ++i) {
    uint64_t off = (uint64_t)i * r->tile_len;
    size_t len = (size_t)(r->size - off < r->tile_len ? r->size - off : r->tile_len);
    uint8_t* dst = (uint8_t*)*out + off;
    if (tswap_pread_full(n->d->fd, dst, len, r->offset + off) != (int64_t)len) {
      ctx->ReportError(ctx, "tflm_swap delegate: cannot read %s (tensor %u) from the weights file", what, r->tensor);
      return kTfLiteError;
    }
    uint32_t crc = tswap_crc32_fast(0, dst, len);
    if (crc != t->tile_crc[r->first_tile + i]) {
      ctx->ReportError(ctx, "tflm_swap delegate: tile %u of tensor %u (%s, file bytes %llu..%llu) fails its "
                       "CRC32 check (computed %08x, table has %08x): the weights file is corrupt", i, r->tensor,
                       what, (unsigned long long)(r->offset + off), (unsigned long long)(r->offset + off + len), crc,
                       t->tile_crc[r->first_tile + i]);
      return kTfLiteError;
    }
  }
  return kTfLiteOk;
}

/* Read (segment: CRC-checked by tile; inline: covered by the graph CRC checked at load) and
 * validate the ancillary data of a decoded filter against the filter and the tile table. */
static TfLiteStatus prepare_decode(TfLiteContext* ctx, TswapNode* n) {
  const TfLiteTensor* f = &ctx->tensors[n->filter];
  const TfLiteTensor* anc = &ctx->tensors[n->ancillary];
  void* copy = NULL;
  const uint8_t* bytes = (const uint8_t*)anc->data.raw;
  if (n->anc_rec) {
    if (read_checked(ctx, n, n->anc_rec, "the TFLM_DECODE ancillary data", &copy) != kTfLiteOk) {
      free(copy);
      return kTfLiteError;
    }
    bytes = (const uint8_t*)copy;
  }
  char why[192];
  tswap_lut_free(&n->lut);
  int rc = bytes ? tswap_lut_parse(bytes, anc->bytes, f->dims->data, f->dims->size, tswap_channel_axis(n->op),
                                   &n->lut, why, sizeof why)
                 : (snprintf(why, sizeof why, "ancillary data is not allocated"), -1);
  free(copy);
  if (rc == 0 && n->rec && (uint32_t)n->lut.bits != n->rec->bits) {
    snprintf(why, sizeof why, "index bitwidth %d, but the tile table was built for %u", n->lut.bits, n->rec->bits);
    rc = -1;
  }
  uint64_t stored = ctx->tensors[n->encoded].bytes;
  if (rc == 0 && tswap_lut_encoded_bytes(&n->lut, n->kernel.filter_elems) != stored) {
    snprintf(why, sizeof why, "encoded tensor %d is %llu bytes, but %llu %d-bit indices need %llu", n->encoded,
             (unsigned long long)stored, (unsigned long long)n->kernel.filter_elems, n->lut.bits,
             (unsigned long long)tswap_lut_encoded_bytes(&n->lut, n->kernel.filter_elems));
    rc = -1;
  }
  if (rc == 0 && !n->rec && !ctx->tensors[n->encoded].data.raw) {
    snprintf(why, sizeof why, "encoded tensor %d has no data", n->encoded);
    rc = -1;
  }
  if (rc != 0) {
    ctx->ReportError(ctx, "tflm_swap delegate: TFLM_DECODE of filter tensor %d (encoded tensor %d, ancillary "
                     "tensor %d) is invalid: %s", n->filter, n->encoded, n->ancillary, why);
    return kTfLiteError;
  }
  return kTfLiteOk;
}

static TfLiteStatus node_prepare(TfLiteContext* ctx, TfLiteNode* node) {
  TswapNode* n = (TswapNode*)node->user_data;
  if (!n) {
    ctx->ReportError(ctx, "tflm_swap delegate: node was not initialised");
    return kTfLiteError;
  }
  /* the reader may be fetching (and decoding, with this node's value tables) a tile ahead: stop it */
  pthread_mutex_lock(&n->d->eval_mu);
  tswap_reader_drain(&n->d->reader);
  n->d->pending_node = NULL;
  n->prepared = 0;
  pthread_mutex_unlock(&n->d->eval_mu);
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
  uint64_t filter_bytes = n->kernel.filter_elems * (n->kernel.g.is_int8 ? 1u : 4u);
  if (n->encoded < 0 && filter_bytes != n->rec->size) {
    ctx->ReportError(ctx, "tflm_swap delegate: weights of tensor %d do not match the tile table", n->filter);
    return kTfLiteError;
  }
  if (n->encoded >= 0 && prepare_decode(ctx, n) != kTfLiteOk) return kTfLiteError;
  if (n->kernel.g.is_int8) tswap_node_multipliers(ctx, n);
  uint64_t slot = n->d->table.tile_bytes < filter_bytes ? n->d->table.tile_bytes : filter_bytes;
  if (!n->rec) { /* inline encoded tensor: decoded tile by tile into the node's own buffer */
    free(n->decoded);
    n->decoded = (int8_t*)malloc((size_t)slot);
    if (!n->decoded) {
      ctx->ReportError(ctx, "tflm_swap delegate: out of memory preparing tensor %d", n->filter);
      return kTfLiteError;
    }
    slot = 0;
  }
  uint64_t raw = n->encoded < 0 || !n->rec ? 0 : (n->rec->tile_len < n->rec->size ? n->rec->tile_len : n->rec->size);
  pthread_mutex_lock(&n->d->eval_mu);
  tswap_reader_drain(&n->d->reader);
  n->d->pending_node = NULL; /* slots may be reallocated */
  int rc = tswap_reader_reserve(&n->d->reader, (size_t)slot, (size_t)raw);
  pthread_mutex_unlock(&n->d->eval_mu);
  if (rc != 0) {
    ctx->ReportError(ctx, "tflm_swap delegate: cannot allocate two %llu-byte tile buffers",
                     (unsigned long long)slot);
    return kTfLiteError;
  }
  if (n->bias_rec && read_checked(ctx, n, n->bias_rec, "the bias", &n->bias_copy) != kTfLiteOk) return kTfLiteError;
  n->prepared = 1;
  return kTfLiteOk;
}

/* Tile t of node n's streamed tensor: stored bytes [t * tile_len, ...) and the filter elements
 * they hold (an encoded tile holds tile_bytes indices, decoded into tile_bytes int8 values). */
static void tile_request(const TswapNode* n, uint32_t t, TswapReadRequest* q) {
  const TswapTensorRecord* rec = n->rec;
  uint64_t off = (uint64_t)t * rec->tile_len;
  q->offset = rec->offset + off;
  q->len = (size_t)(rec->size - off < rec->tile_len ? rec->size - off : rec->tile_len);
  q->crc = n->d->table.tile_crc[rec->first_tile + t];
  q->tensor = rec->tensor;
  q->tile = t;
  q->lut = n->encoded >= 0 ? &n->lut : NULL;
  uint64_t per_tile = n->encoded >= 0 ? n->d->table.tile_bytes : rec->tile_len / (n->kernel.g.is_int8 ? 1u : 4u);
  q->first_elem = (uint64_t)t * per_tile;
  uint64_t left = n->kernel.filter_elems - q->first_elem;
  q->elems = (size_t)(left < per_tile ? left : per_tile);
}

/* The next claimed node whose weights are read from the file, or NULL. */
static TswapNode* next_streamed(const TswapNode* n) {
  TswapNode* m = n->next;
  while (m && !m->rec) m = m->next;
  return m && m->prepared ? m : NULL;
}

/* A filter whose encoded tensor sits inline in the (CRC-checked, mapped) graph: decode it tile by
 * tile into the node's buffer. The reader, and what it may be fetching ahead, are left alone. */
static TfLiteStatus decode_inline(TfLiteContext* ctx, TswapNode* n, const TswapIo* io, char* err, size_t err_len) {
  const uint8_t* enc = (const uint8_t*)ctx->tensors[n->encoded].data.raw;
  const uint64_t per_tile = n->d->table.tile_bytes, elems = n->kernel.filter_elems;
  for (uint64_t first = 0; first < elems; first += per_tile) {
    size_t count = (size_t)(elems - first < per_tile ? elems - first : per_tile);
    uint64_t bad = 0;
    if (tswap_lut_decode(&n->lut, enc + first / 8 * (uint64_t)n->lut.bits, first, count, n->decoded, &bad) != 0) {
      snprintf(err, err_len, "tflm_swap delegate: element %llu of encoded tensor %d has an index past its value "
               "table (%u entries): the TFLM_DECODE data is inconsistent", (unsigned long long)bad, n->encoded,
               n->lut.stride);
      return kTfLiteError;
    }
    tswap_kernel_tile(&n->kernel, io, n->decoded, first, count);
  }
  n->d->mapped_bytes += ctx->tensors[n->encoded].bytes;
  return kTfLiteOk;
}

/* Stream the node's tiles through the double buffer. With prefetch, tile t+1 is read while tile t
 * is computed, and during the last tile the reader starts on tile 0 of the next claimed node (in
 * execution order), which that node picks up if it is the next one to run. Called under eval_mu. */
static TfLiteStatus stream_tiles(TswapNode* n, const TswapIo* io, char* err, size_t err_len) {
  TswapDelegate* d = n->d;
  TswapReader* r = &d->reader;
  const TswapTensorRecord* rec = n->rec;
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
    TswapReadRequest cur;
    tile_request(n, t, &cur);
    if (!r->prefetch || (t == 0 && !have_first)) tswap_reader_submit(r, slot, &cur);
    const uint8_t* data = tswap_reader_wait(r, slot, err, err_len);
    if (!data) return kTfLiteError;
    if (r->prefetch) {
      int other = slot ^ 1;
      if (t + 1 < rec->n_tiles) {
        tile_request(n, t + 1, &q);
        tswap_reader_submit(r, other, &q);
      } else if (next_streamed(n)) {
        tile_request(next_streamed(n), 0, &q);
        tswap_reader_submit(r, other, &q);
        d->pending_node = next_streamed(n);
        d->pending_slot = other;
      }
    }
    tswap_kernel_tile(&n->kernel, io, data, cur.first_elem, cur.elems);
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
  TfLiteStatus st = n->rec ? stream_tiles(n, &io, err, sizeof err) : decode_inline(ctx, n, &io, err, sizeof err);
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

/* For every tensor: the TFLM_DECODE node (index) producing it, or -1; and how many node inputs read it. */
static int scan_decodes(TfLiteContext* ctx, const TfLiteIntArray* plan, int* producer, int* readers) {
  for (size_t t = 0; t < ctx->tensors_size; ++t) producer[t] = -1, readers[t] = 0;
  for (int i = 0; i < plan->size; ++i) {
    TfLiteNode* node = NULL;
    TfLiteRegistration* reg = NULL;
    if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk) return -1;
    for (int k = 0; node->inputs && k < node->inputs->size; ++k) {
      int t = node->inputs->data[k];
      if (t >= 0 && (size_t)t < ctx->tensors_size) readers[t]++;
    }
    if (!is_decode(reg) || !node->outputs) continue;
    for (int k = 0; k < node->outputs->size; ++k) {
      int t = node->outputs->data[k];
      if (t >= 0 && (size_t)t < ctx->tensors_size) producer[t] = plan->data[i];
    }
  }
  return 0;
}

/* The nodes to claim, as partitions of one node or of a (TFLM_DECODE, consumer) pair: part[2i],
 * part[2i+1] (-1 when single). Returns the number of partitions or -1. */
static int find_partitions(TswapDelegate* d, TfLiteContext* ctx, const TfLiteIntArray* plan, int* part) {
  size_t nt = ctx->tensors_size ? ctx->tensors_size : 1;
  int* producer = (int*)malloc(sizeof(int) * nt);
  int* readers = (int*)malloc(sizeof(int) * nt);
  int n_claim = -1;
  if (producer && readers && scan_decodes(ctx, plan, producer, readers) == 0) {
    n_claim = 0;
    for (int i = 0; i < plan->size; ++i) {
      TfLiteNode* node = NULL;
      TfLiteRegistration* reg = NULL;
      if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk) continue;
      int filter = node->inputs && node->inputs->size >= 2 ? node->inputs->data[1] : -1;
      int dec = filter >= 0 && (size_t)filter < ctx->tensors_size ? producer[filter] : -1;
      TfLiteNode* decode = NULL;
      TfLiteRegistration* dreg = NULL;
      if (dec >= 0 && (readers[filter] != 1 || ctx->GetNodeAndRegistration(ctx, dec, &decode, &dreg) != kTfLiteOk))
        continue; /* a decoded filter read elsewhere too stays with the interpreter */
      TswapNode probe;
      if (!tswap_node_claimable(d, ctx, node, reg->builtin_code, decode, &probe)) continue;
      part[2 * n_claim] = dec >= 0 ? dec : plan->data[i];
      part[2 * n_claim + 1] = dec >= 0 ? plan->data[i] : -1;
      n_claim++;
    }
  }
  free(producer);
  free(readers);
  return n_claim;
}

static TfLiteStatus delegate_prepare(TfLiteContext* ctx, TfLiteDelegate* base) {
  TswapDelegate* d = (TswapDelegate*)base->data_;
  if (check_same_model(ctx, d) != kTfLiteOk) return kTfLiteError;
  TfLiteIntArray* plan = NULL;
  if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk || !plan) return kTfLiteError;
  int n_plan = plan->size;
  int* nodes = (int*)malloc(sizeof(int) * 2 * (size_t)(n_plan > 0 ? n_plan : 1));
  if (!nodes) return kTfLiteError;
  int n_claim = find_partitions(d, ctx, plan, nodes); /* before replacing: that rewrites the plan */
  if (n_claim < 0) {
    free(nodes);
    return kTfLiteError;
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
  struct { int size; int data[2]; } one;
  for (int i = 0; i < n_claim && st == kTfLiteOk; ++i) {
    /* one partition per node (or decode pair): the only intermediate tensor that may live inside a
     * partition is a decoded filter, which the delegate decodes tile by tile */
    one.size = nodes[2 * i + 1] >= 0 ? 2 : 1;
    one.data[0] = nodes[2 * i];
    one.data[1] = nodes[2 * i + 1];
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
  /* Without this flag LiteRT allocates (prepares) the whole graph before asking the delegate, which
   * fails on TFLM_DECODE, a custom operator only the delegate resolves. The claimed nodes check their
   * shapes in their own prepare. */
  d->base.flags = kTfLiteDelegateFlagsAllowDynamicTensors;
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
 * ns the compute thread waited for tiles, bytes of each tile slot, number of slots, encoded bytes
 * decoded from the mapped graph. */
TSWAP_EXPORT int tflm_swap_delegate_stats(const TfLiteDelegate* delegate, uint64_t* out, int n) {
  if (!delegate || !out || n < 8) return -1;
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
  out[7] = d->mapped_bytes;
  pthread_mutex_unlock(&d->reader.mu);
  pthread_mutex_unlock(&d->eval_mu);
  return 8;
}

/* zlib-compatible CRC32 as the delegate computes it (exported for tests). */
TSWAP_EXPORT uint32_t tflm_swap_crc32(uint32_t crc, const void* data, size_t len) {
  return tswap_crc32_fast(crc, data, len);
}
