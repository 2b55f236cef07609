#define _GNU_SOURCE
#include "tswap_reader.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../runtime/tswap_crc32_fast.h"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Read and check one tile (into `raw` first when it is encoded, then decoded into dst); returns 0
 * or -1 with a message. Runs without the lock. */
static int read_tile(int fd, uint8_t* dst, uint8_t* raw, const TswapReadRequest* q, char* msg) {
  uint8_t* stored = q->lut ? raw : dst;
  int64_t got = tswap_pread_full(fd, stored, q->len, q->offset);
  if (got < 0) {
    snprintf(msg, TSWAP_ERR_LEN, "tflm_swap delegate: reading tile %u of tensor %u (file bytes %llu..%llu) "
             "failed: %s", q->tile, q->tensor, (unsigned long long)q->offset,
             (unsigned long long)(q->offset + q->len), strerror(errno));
    return -1;
  }
  if ((size_t)got != q->len) {
    snprintf(msg, TSWAP_ERR_LEN, "tflm_swap delegate: tile %u of tensor %u (file bytes %llu..%llu) is "
             "truncated: the weights file ends after %lld of its bytes", q->tile, q->tensor,
             (unsigned long long)q->offset, (unsigned long long)(q->offset + q->len), (long long)got);
    return -1;
  }
  uint32_t crc = tswap_crc32_fast(0, stored, q->len);
  if (crc != q->crc) {
    snprintf(msg, TSWAP_ERR_LEN, "tflm_swap delegate: tile %u of tensor %u (file bytes %llu..%llu) fails "
             "its CRC32 check (computed %08x, table has %08x): the weights file is corrupt", q->tile,
             q->tensor, (unsigned long long)q->offset, (unsigned long long)(q->offset + q->len), crc, q->crc);
    return -1;
  }
  uint64_t bad = 0;
  if (q->lut && tswap_lut_decode(q->lut, raw, q->first_elem, q->elems, (int8_t*)dst, &bad) != 0) {
    snprintf(msg, TSWAP_ERR_LEN, "tflm_swap delegate: element %llu of encoded tensor %u has an index past its "
             "value table (%u entries): the TFLM_DECODE data is inconsistent", (unsigned long long)bad, q->tensor,
             q->lut->stride);
    return -1;
  }
  return 0;
}

static void* reader_main(void* arg) {
  TswapReader* r = (TswapReader*)arg;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    while (!r->pending && !r->stop) pthread_cond_wait(&r->cv, &r->mu);
    if (r->stop) break;
    TswapReadRequest q = r->req;
    int slot = r->req_slot;
    r->pending = 0;
    r->busy = 1;
    uint8_t* dst = r->slot[slot];
    pthread_mutex_unlock(&r->mu);
    char msg[TSWAP_ERR_LEN];
    msg[0] = '\0';
    int status = read_tile(r->fd, dst, r->raw, &q, msg);
    pthread_mutex_lock(&r->mu);
    r->status[slot] = status;
    memcpy(r->msg[slot], msg, sizeof msg);
    r->done[slot] = 1;
    r->busy = 0;
    r->bytes_read += q.len;
    r->tiles_read += 1;
    pthread_cond_broadcast(&r->cv);
  }
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

int tswap_reader_init(TswapReader* r, int fd, int prefetch, char* err, size_t err_len) {
  memset(r, 0, sizeof *r);
  r->fd = fd;
  r->prefetch = prefetch;
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  if (prefetch) {
    int rc = pthread_create(&r->thread, NULL, reader_main, r);
    if (rc != 0) {
      snprintf(err, err_len, "tflm_swap delegate: cannot start the reader thread: %s", strerror(rc));
      pthread_mutex_destroy(&r->mu);
      pthread_cond_destroy(&r->cv);
      return -1;
    }
    r->thread_started = 1;
  }
  return 0;
}

void tswap_reader_destroy(TswapReader* r) {
  if (r->thread_started) {
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    r->thread_started = 0;
  }
  free(r->slot[0]);
  free(r->slot[1]);
  free(r->raw);
  r->slot[0] = r->slot[1] = r->raw = NULL;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

static int grow(uint8_t** buf, size_t bytes) {
  uint8_t* p = NULL;
  if (posix_memalign((void**)&p, 64, bytes) != 0) return -1;
  free(*buf);
  *buf = p;
  return 0;
}

int tswap_reader_reserve(TswapReader* r, size_t bytes, size_t raw_bytes) {
  if (bytes <= r->capacity && raw_bytes <= r->raw_capacity) return 0;
  tswap_reader_drain(r);
  if (bytes > r->capacity) {
    for (int i = 0; i < (r->prefetch ? 2 : 1); ++i) {
      if (grow(&r->slot[i], bytes) != 0) return -1;
    }
    r->capacity = bytes;
  }
  if (raw_bytes > r->raw_capacity) {
    if (grow(&r->raw, raw_bytes) != 0) return -1;
    r->raw_capacity = raw_bytes;
  }
  return 0;
}

void tswap_reader_submit(TswapReader* r, int slot, const TswapReadRequest* q) {
  if (!r->prefetch) {
    r->status[slot] = read_tile(r->fd, r->slot[slot], r->raw, q, r->msg[slot]);
    r->done[slot] = 1;
    r->bytes_read += q->len;
    r->tiles_read += 1;
    return;
  }
  pthread_mutex_lock(&r->mu);
  while (r->pending || r->busy) pthread_cond_wait(&r->cv, &r->mu);
  r->req = *q;
  r->req_slot = slot;
  r->done[slot] = 0;
  r->pending = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

const uint8_t* tswap_reader_wait(TswapReader* r, int slot, char* err, size_t err_len) {
  int status;
  if (r->prefetch) {
    uint64_t t0 = now_ns();
    pthread_mutex_lock(&r->mu);
    while (!r->done[slot]) pthread_cond_wait(&r->cv, &r->mu);
    r->done[slot] = 0;
    status = r->status[slot];
    if (status != 0) snprintf(err, err_len, "%s", r->msg[slot]);
    r->wait_ns += now_ns() - t0;
    pthread_mutex_unlock(&r->mu);
  } else {
    r->done[slot] = 0;
    status = r->status[slot];
    if (status != 0) snprintf(err, err_len, "%s", r->msg[slot]);
  }
  return status == 0 ? r->slot[slot] : NULL;
}

void tswap_reader_drain(TswapReader* r) {
  if (r->prefetch) {
    pthread_mutex_lock(&r->mu);
    while (r->pending || r->busy) pthread_cond_wait(&r->cv, &r->mu);
    r->done[0] = r->done[1] = 0;
    pthread_mutex_unlock(&r->mu);
  } else {
    r->done[0] = r->done[1] = 0;
  }
}
