#define _GNU_SOURCE
#include "tswap_table.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/tswap_crc32.h"

static uint32_t rd32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t* p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

int64_t tswap_pread_full(int fd, void* buf, size_t len, uint64_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, (uint8_t*)buf + done, len - done, (off_t)(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;
    done += (size_t)n;
  }
  return (int64_t)done;
}

static int read_whole(const char* path, uint8_t** out, size_t* out_len, char* err, size_t err_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, err_len, "cannot open tile table '%s': %s (build it with tflm_swap.delegate_options() or "
             "`tflm-swap delegate-table MODEL`)", path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > (1ull << 31)) {
    snprintf(err, err_len, "tile table '%s': cannot stat it or it is larger than 2 GiB", path);
    close(fd);
    return -1;
  }
  size_t len = (size_t)st.st_size;
  uint8_t* data = (uint8_t*)malloc(len ? len : 1);
  if (!data) {
    snprintf(err, err_len, "tile table '%s': out of memory reading %zu bytes", path, len);
    close(fd);
    return -1;
  }
  int64_t got = tswap_pread_full(fd, data, len, 0);
  close(fd);
  if (got != (int64_t)len) {
    snprintf(err, err_len, "tile table '%s': read failed", path);
    free(data);
    return -1;
  }
  *out = data;
  *out_len = len;
  return 0;
}

/* CRC32 of bytes [0, len) of fd, read in 64 KiB chunks. */
static int crc_prefix(int fd, uint64_t len, uint32_t* crc) {
  uint8_t chunk[65536];
  uint32_t c = 0;
  uint64_t pos = 0;
  while (pos < len) {
    size_t n = (size_t)((len - pos) < sizeof chunk ? (len - pos) : sizeof chunk);
    if (tswap_pread_full(fd, chunk, n, pos) != (int64_t)n) return -1;
    c = tswap_crc32_update(c, chunk, n);
    pos += n;
  }
  *crc = c;
  return 0;
}

static int parse(const uint8_t* d, size_t len, TswapTable* t, const char* path, char* err, size_t err_len) {
  if (len < TSWAP_TABLE_HEADER_BYTES + 4 || memcmp(d, TSWAP_TABLE_MAGIC, 4) != 0) {
    snprintf(err, err_len, "tile table '%s' is not a tflm_swap tile table (bad magic or too short)", path);
    return -1;
  }
  uint32_t stored = rd32(d + len - 4), computed = tswap_crc32(d, len - 4);
  if (stored != computed) {
    snprintf(err, err_len, "tile table '%s' is corrupt: CRC32 %08x, expected %08x; rebuild it", path,
             computed, stored);
    return -1;
  }
  uint32_t version = rd32(d + 4);
  if (version != TSWAP_TABLE_VERSION) {
    snprintf(err, err_len, "tile table '%s' has version %u; this delegate reads version %u; rebuild it with tflm_swap.delegate_options()", path,
             version, TSWAP_TABLE_VERSION);
    return -1;
  }
  t->tile_bytes = rd64(d + 8);
  t->file_size = rd64(d + 16);
  t->graph_bytes = rd64(d + 24);
  t->graph_crc = rd32(d + 32);
  t->n_records = rd32(d + 36);
  t->n_tiles = rd32(d + 40);
  memcpy(t->manifest_header, d + 44, sizeof t->manifest_header);
  if (memcmp(t->manifest_header, "TSWP", 4) != 0) {
    snprintf(err, err_len, "tile table '%s' does not record the model's tflm_swap manifest; rebuild it", path);
    return -1;
  }
  uint64_t want = (uint64_t)TSWAP_TABLE_HEADER_BYTES + (uint64_t)t->n_records * TSWAP_TABLE_RECORD_BYTES +
                  (uint64_t)t->n_tiles * 4u + 4u;
  if (want != len) {
    snprintf(err, err_len, "tile table '%s' is %zu bytes but its header describes %llu", path, len,
             (unsigned long long)want);
    return -1;
  }
  if (t->tile_bytes < 16 || t->tile_bytes % 16 != 0 || t->tile_bytes > (1ull << 31) || t->graph_bytes > t->file_size) {
    snprintf(err, err_len, "tile table '%s' has an invalid header (tile_bytes %llu)", path,
             (unsigned long long)t->tile_bytes);
    return -1;
  }
  t->records = (TswapTensorRecord*)calloc(t->n_records ? t->n_records : 1, sizeof *t->records);
  t->tile_crc = (uint32_t*)calloc(t->n_tiles ? t->n_tiles : 1, sizeof *t->tile_crc);
  if (!t->records || !t->tile_crc) {
    snprintf(err, err_len, "tile table '%s': out of memory", path);
    return -1;
  }
  uint32_t next_tile = 0;
  for (uint32_t i = 0; i < t->n_records; ++i) {
    const uint8_t* r = d + TSWAP_TABLE_HEADER_BYTES + (size_t)i * TSWAP_TABLE_RECORD_BYTES;
    TswapTensorRecord* rec = &t->records[i];
    rec->tensor = rd32(r);
    rec->buffer = rd32(r + 4);
    rec->offset = rd64(r + 8);
    rec->size = rd64(r + 16);
    rec->first_tile = rd32(r + 24);
    rec->n_tiles = rd32(r + 28);
    rec->tile_len = rd32(r + 32);
    rec->bits = rd32(r + 36);
    uint64_t want_len = rec->bits ? t->tile_bytes / 8 * rec->bits : t->tile_bytes;
    uint64_t tiles = rec->tile_len ? (rec->size + rec->tile_len - 1) / rec->tile_len : 0;
    if (rec->size == 0 || rec->bits > 7 || rec->tile_len != want_len || rec->offset < t->graph_bytes || rec->offset > t->file_size ||
        rec->size > t->file_size - rec->offset || rec->n_tiles != tiles || rec->first_tile != next_tile ||
        (uint64_t)rec->first_tile + rec->n_tiles > t->n_tiles || (i > 0 && rec->tensor <= t->records[i - 1].tensor)) {
      snprintf(err, err_len, "tile table '%s': record %u (tensor %u) is inconsistent (offset %llu, size %llu, "
               "tiles %u of %u bytes, bits %u)", path, i, rec->tensor, (unsigned long long)rec->offset,
               (unsigned long long)rec->size, rec->n_tiles, rec->tile_len, rec->bits);
      return -1;
    }
    next_tile += rec->n_tiles;
  }
  if (next_tile != t->n_tiles) {
    snprintf(err, err_len, "tile table '%s': records cover %u tiles, header says %u", path, next_tile, t->n_tiles);
    return -1;
  }
  const uint8_t* crcs = d + TSWAP_TABLE_HEADER_BYTES + (size_t)t->n_records * TSWAP_TABLE_RECORD_BYTES;
  for (uint32_t i = 0; i < t->n_tiles; ++i) t->tile_crc[i] = rd32(crcs + 4u * i);
  return 0;
}

int tswap_table_load(const char* path, int model_fd, TswapTable* t, char* err, size_t err_len) {
  memset(t, 0, sizeof *t);
  uint8_t* data = NULL;
  size_t len = 0;
  if (read_whole(path, &data, &len, err, err_len) != 0) return -1;
  int rc = parse(data, len, t, path, err, err_len);
  free(data);
  if (rc != 0) {
    tswap_table_free(t);
    return -1;
  }
  struct stat st;
  uint32_t crc = 0;
  if (fstat(model_fd, &st) != 0 || (uint64_t)st.st_size != t->file_size) {
    snprintf(err, err_len, "tile table '%s' was built for a %llu-byte model file, but the weights file has "
             "%lld bytes; rebuild the table", path, (unsigned long long)t->file_size, (long long)st.st_size);
    tswap_table_free(t);
    return -1;
  }
  if (crc_prefix(model_fd, t->graph_bytes, &crc) != 0 || crc != t->graph_crc) {
    snprintf(err, err_len, "tile table '%s' does not belong to this weights file (CRC32 of its first %llu "
             "bytes is %08x, table says %08x); rebuild the table", path, (unsigned long long)t->graph_bytes,
             crc, t->graph_crc);
    tswap_table_free(t);
    return -1;
  }
  return 0;
}

void tswap_table_free(TswapTable* t) {
  free(t->records);
  free(t->tile_crc);
  t->records = NULL;
  t->tile_crc = NULL;
  t->n_records = t->n_tiles = 0;
}

const TswapTensorRecord* tswap_table_find(const TswapTable* t, uint32_t tensor) {
  uint32_t lo = 0, hi = t->n_records;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (t->records[mid].tensor == tensor) return &t->records[mid];
    if (t->records[mid].tensor < tensor) lo = mid + 1; else hi = mid;
  }
  return NULL;
}
