/* Double-buffered tile reader: a background thread preads the next tile of a weight tensor into
 * the free slot and checks its CRC32 while the kernel computes on the other slot. A tile of an
 * encoded (TFLM_DECODE) tensor is read into a scratch buffer, checked, and decoded into the slot. */
#ifndef TSWAP_READER_H_
#define TSWAP_READER_H_

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "tswap_decode.h"
#include "tswap_table.h"

typedef struct TswapReadRequest {
  uint64_t offset;
  size_t len;
  uint32_t crc;
  uint32_t tensor;
  uint32_t tile;
  const TswapLut* lut; /* NULL: the stored bytes are the weights; else decode them */
  uint64_t first_elem; /* with lut: the tile's first element and element count */
  size_t elems;
} TswapReadRequest;

typedef struct TswapReader {
  int fd;
  int prefetch;
  size_t capacity; /* bytes of each slot */
  uint8_t* slot[2];
  size_t raw_capacity; /* bytes of the scratch buffer encoded tiles are read into */
  uint8_t* raw;
  pthread_t thread;
  int thread_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int pending;      /* a request is posted and not yet taken */
  int busy;         /* the thread is reading */
  int stop;
  TswapReadRequest req;
  int req_slot;
  int done[2];
  int status[2];    /* 0 ok, -1 failed (message in msg) */
  char msg[2][TSWAP_ERR_LEN];
  /* statistics (written by the reading side under mu) */
  uint64_t bytes_read;
  uint64_t tiles_read;
  uint64_t wait_ns; /* time the compute thread spent waiting for tiles */
} TswapReader;

int tswap_reader_init(TswapReader* r, int fd, int prefetch, char* err, size_t err_len);
void tswap_reader_destroy(TswapReader* r);
/* Grow both slots to at least `bytes` and the scratch buffer to `raw_bytes` (only between invokes). */
int tswap_reader_reserve(TswapReader* r, size_t bytes, size_t raw_bytes);
/* Start reading a tile into `slot` (in the background when prefetching, else right away). */
void tswap_reader_submit(TswapReader* r, int slot, const TswapReadRequest* req);
/* Wait for `slot`; returns its data, or NULL with a message copied into err. */
const uint8_t* tswap_reader_wait(TswapReader* r, int slot, char* err, size_t err_len);
/* Wait until no read is outstanding and forget finished ones (after an aborted invoke). */
void tswap_reader_drain(TswapReader* r);

#endif /* TSWAP_READER_H_ */
