/* The tile table: where each streamed weight tensor lives in the segmented model file and the
 * CRC32 of each of its tiles. Written by tflm_swap.delegate.build_tile_table (Python); format in
 * docs/DELEGATE.md. */
#ifndef TSWAP_TABLE_H_
#define TSWAP_TABLE_H_

#include <stddef.h>
#include <stdint.h>

#define TSWAP_TABLE_MAGIC "TSWT"
#define TSWAP_TABLE_VERSION 2u
#define TSWAP_TABLE_HEADER_BYTES 64u
#define TSWAP_TABLE_RECORD_BYTES 40u
#define TSWAP_ERR_LEN 512

typedef struct TswapTensorRecord {
  uint32_t tensor;      /* tensor index in subgraph 0 */
  uint32_t buffer;      /* Model.buffers index */
  uint64_t offset;      /* absolute file offset of the tensor's bytes */
  uint64_t size;        /* bytes */
  uint32_t first_tile;  /* index of its first tile in the CRC array */
  uint32_t n_tiles;     /* ceil(size / tile_len) */
  uint32_t tile_len;    /* stored bytes per tile: tile_bytes, or tile_bytes * bits / 8 for an encoded tensor */
  uint32_t bits;        /* 0, or the index bitwidth of a TFLM_DECODE encoded tensor (tiles of tile_bytes indices) */
} TswapTensorRecord;

typedef struct TswapTable {
  uint64_t tile_bytes;
  uint64_t file_size;
  uint64_t graph_bytes;
  uint32_t graph_crc;
  uint32_t n_records;
  uint32_t n_tiles;
  uint8_t manifest_header[16]; /* the model's `tflm_swap` metadata header: magic, version, length, CRC32 */
  TswapTensorRecord* records; /* sorted by tensor index */
  uint32_t* tile_crc;
} TswapTable;

/* Read and validate `path` against the open model file `model_fd` (size and CRC32 of its first
 * graph_bytes bytes). On failure returns -1 with a message in err. */
int tswap_table_load(const char* path, int model_fd, TswapTable* table, char* err, size_t err_len);
void tswap_table_free(TswapTable* table);
/* Record of a tensor index, or NULL. */
const TswapTensorRecord* tswap_table_find(const TswapTable* table, uint32_t tensor);

/* pread that retries on EINTR and short reads; returns bytes read (< len only at end of file) or -1. */
int64_t tswap_pread_full(int fd, void* buf, size_t len, uint64_t offset);

#endif /* TSWAP_TABLE_H_ */
