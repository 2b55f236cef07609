/* Unit tests of the tflm_swap micro core (tswap_micro.c) and the file flash driver
 * (tswap_file_flash.c). Built with -fsanitize=address,undefined by tests/test_micro_native.py, and
 * for Cortex-M4 (32-bit long, semihosted file I/O) under QEMU by tests/test_mcu.py.
 * Usage: test_tswap_micro SCRATCH_FILE (the file driver tests write and read it).
 * Prints one line per failed check; exit status = failures. */
#include <stdio.h>
#include <string.h>

#include "tswap_crc32.h"
#include "tswap_file_flash.h"
#include "tswap_micro.h"

static int failures = 0;
#define CHECK_EQ(got, want)                                                                      \
  do {                                                                                           \
    long g_ = (long)(got), w_ = (long)(want);                                                    \
    if (g_ != w_) {                                                                              \
      printf("FAIL %s:%d: %s = %ld, expected %ld\n", __FILE__, __LINE__, #got, g_, w_);         \
      ++failures;                                                                                \
    }                                                                                            \
  } while (0)

#define CHECK_NE_OK(got)                                                                         \
  do {                                                                                           \
    if ((got) == TSWAP_OK) {                                                                     \
      printf("FAIL %s:%d: %s accepted\n", __FILE__, __LINE__, #got);                            \
      ++failures;                                                                                \
    }                                                                                            \
  } while (0)

static void put_u32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

/* Re-seal the header and table CRCs after a test edited the header fields. */
static void seal(uint8_t* img) {
  uint32_t n = img[12] | (img[13] << 8);
  put_u32(img + 24, tswap_crc32(img + 32, 16u * n));
  put_u32(img + 28, tswap_crc32(img, 28));
}

/* Three segments of 40, 7 and 64 bytes, 16-byte alignment; returns the image size. */
static uint32_t make_image(uint8_t* img, uint32_t cap) {
  const uint32_t sizes[3] = {40, 7, 64};
  uint32_t offset = 32 + 3 * 16, i, j;
  memset(img, 0, cap);
  memcpy(img, "TSWI", 4);
  put_u32(img + 4, 1);
  put_u32(img + 8, 32 + 3 * 16);
  put_u32(img + 12, 3);
  put_u32(img + 20, 16);
  for (i = 0; i < 3; ++i) {
    offset = (offset + 15u) & ~15u;
    for (j = 0; j < sizes[i]; ++j) img[offset + j] = (uint8_t)(i * 50 + j + 1);
    put_u32(img + 32 + 16 * i, offset);
    put_u32(img + 36 + 16 * i, sizes[i]);
    put_u32(img + 40 + 16 * i, tswap_crc32(img + offset, sizes[i]));
    offset += sizes[i];
  }
  put_u32(img + 16, offset);
  seal(img);
  return offset;
}

static int open_mem(tswap_image* im, tswap_flash* fl, tswap_memory_flash* mem, const uint8_t* img,
                    uint32_t len, tswap_segment* table, uint32_t cap) {
  tswap_flash_from_memory(fl, mem, img, len);
  return tswap_image_open(im, fl, table, cap);
}

static void test_valid(void) {
  uint8_t img[512], dst[64];
  tswap_segment table[8];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  uint32_t size = make_image(img, sizeof(img)), i;
  CHECK_EQ(open_mem(&im, &fl, &mem, img, size, table, 8), TSWAP_OK);
  CHECK_EQ(im.segment_count, 3);
  CHECK_EQ(im.image_size, size);
  for (i = 0; i < 3; ++i) {
    CHECK_EQ(tswap_load(&im, i, 0, dst, table[i].size, 1), TSWAP_OK);
    CHECK_EQ(memcmp(dst, img + table[i].offset, table[i].size), 0);
  }
  CHECK_EQ(im.bytes_read, 40 + 7 + 64);
  CHECK_EQ(tswap_load(&im, 2, 10, dst, 20, 0), TSWAP_OK);
  CHECK_EQ(dst[0], img[table[2].offset + 10]);
  CHECK_EQ(tswap_image_verify(&im, dst, 5), TSWAP_OK);
  CHECK_EQ(tswap_load(&im, 1, 0, dst, 0, 0), TSWAP_OK);
  /* exactly as many table slots as segments is enough */
  CHECK_EQ(open_mem(&im, &fl, &mem, img, size, table, 3), TSWAP_OK);
  CHECK_EQ(open_mem(&im, &fl, &mem, img, size, table, 2), TSWAP_ERR_CAPACITY);
}

static void test_truncated(void) {
  uint8_t img[512];
  tswap_segment table[8];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  uint32_t size = make_image(img, sizeof(img)), len;
  for (len = 1; len < size; ++len) {
    int rc = open_mem(&im, &fl, &mem, img, len, table, 8);
    if (rc != TSWAP_ERR_TRUNCATED) {
      printf("FAIL truncated to %u bytes: %s\n", (unsigned)len, tswap_strerror(rc));
      ++failures;
    }
  }
  /* an empty memory flash has size 0 (= unknown): the driver's own bounds check refuses the read */
  CHECK_EQ(open_mem(&im, &fl, &mem, NULL, 0, table, 8), TSWAP_ERR_FLASH);
}

static void test_corrupt(void) {
  uint8_t img[512], bad[512], dst[64];
  tswap_segment table[8];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  uint32_t size = make_image(img, sizeof(img)), i;
  memcpy(bad, img, size); bad[0] = 'X';
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_MAGIC);
  memcpy(bad, img, size); put_u32(bad + 4, 4); seal(bad);
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_VERSION);
  memcpy(bad, img, size); put_u32(bad + 4, 3); seal(bad); /* a container: open it as one */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_CONTAINER);
  memcpy(bad, img, size); put_u32(bad + 4, 2); seal(bad); /* a version-1 layout claiming version 2 */
  CHECK_NE_OK(open_mem(&im, &fl, &mem, bad, size, table, 8));
  /* every single-bit flip in header or table is caught */
  for (i = 8 * 8; i < 8 * (32 + 48); ++i) {
    int rc;
    memcpy(bad, img, size);
    bad[i / 8] ^= (uint8_t)(1u << (i % 8));
    rc = open_mem(&im, &fl, &mem, bad, size, table, 8);
    if (rc == TSWAP_OK) {
      printf("FAIL bit flip %u in the header/table went unnoticed\n", (unsigned)i);
      ++failures;
    }
  }
  memcpy(bad, img, size);
  bad[table[1].offset + 3] ^= 0x40;
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_OK);
  CHECK_EQ(tswap_load(&im, 1, 0, dst, 7, 1), TSWAP_ERR_CRC);
  CHECK_EQ(tswap_load(&im, 1, 0, dst, 7, 0), TSWAP_OK); /* unchecked read succeeds */
  CHECK_EQ(tswap_image_verify(&im, dst, 64), TSWAP_ERR_CRC);
}

/* Tables with valid CRCs but inconsistent contents. */
static void test_inconsistent(void) {
  uint8_t img[512], bad[512];
  tswap_segment table[8];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  uint32_t size = make_image(img, sizeof(img));
  memcpy(bad, img, size); put_u32(bad + 32 + 16 + 0, 96); seal(bad); /* overlaps segment 0 */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  memcpy(bad, img, size); put_u32(bad + 32 + 16 * 2, 168); seal(bad); /* misaligned segment 2 */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_ALIGN);
  memcpy(bad, img, size); put_u32(bad + 36 + 16 * 2, 65); seal(bad); /* past image_size */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  memcpy(bad, img, size); put_u32(bad + 36 + 16 * 2, 0xFFFFFFF0u); seal(bad); /* offset+size wraps */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  memcpy(bad, img, size); put_u32(bad + 44, 1); seal(bad); /* reserved field */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  memcpy(bad, img, size); put_u32(bad + 8, 64); seal(bad); /* header_size != 32 + 16 n */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  memcpy(bad, img, size); put_u32(bad + 12, 0x10000001u); put_u32(bad + 8, 32u + 16u * 0x10000001u);
  put_u32(bad + 28, tswap_crc32(bad, 28)); /* header_size arithmetic overflows */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  memcpy(bad, img, size); put_u32(bad + 20, 24); seal(bad); /* alignment not a power of two */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_ALIGN);
  memcpy(bad, img, size); put_u32(bad + 16, 40); seal(bad); /* image_size < header_size */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  memcpy(bad, img, size); put_u32(bad + 16, size + 100); seal(bad); /* larger than the flash */
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TRUNCATED);
}

static void test_requests(void) {
  uint8_t img[512];
  uint32_t words[32];
  uint8_t* dst = (uint8_t*)words;
  tswap_segment table[8];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  uint32_t size = make_image(img, sizeof(img));
  CHECK_EQ(open_mem(&im, &fl, &mem, img, size, table, 8), TSWAP_OK);
  CHECK_EQ(tswap_load(&im, 3, 0, dst, 1, 0), TSWAP_ERR_SEGMENT_ID);
  CHECK_EQ(tswap_load(&im, 0xFFFFFFFFu, 0, dst, 1, 0), TSWAP_ERR_SEGMENT_ID);
  CHECK_EQ(tswap_load(&im, 1, 0, dst, 8, 0), TSWAP_ERR_RANGE);
  CHECK_EQ(tswap_load(&im, 1, 8, dst, 0, 0), TSWAP_ERR_RANGE);
  CHECK_EQ(tswap_load(&im, 0, 0xFFFFFFFFu, dst, 2, 0), TSWAP_ERR_RANGE);
  CHECK_EQ(tswap_load(&im, 0, 1, dst, 0xFFFFFFFFu, 0), TSWAP_ERR_RANGE);
  CHECK_EQ(tswap_load(&im, 0, 4, dst, 8, 1), TSWAP_ERR_RANGE); /* CRC needs the whole segment */
  CHECK_EQ(tswap_load(&im, 0, 0, NULL, 8, 0), TSWAP_ERR_ARG);
  CHECK_EQ(tswap_load(NULL, 0, 0, dst, 8, 0), TSWAP_ERR_ARG);
  /* a driver that needs word alignment */
  fl.align = 4;
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_OK);
  CHECK_EQ(tswap_load(&im, 0, 1, dst, 4, 0), TSWAP_ERR_ALIGN);
  CHECK_EQ(tswap_load(&im, 0, 0, dst + 2, 4, 0), TSWAP_ERR_ALIGN);
  CHECK_EQ(tswap_check_request(&im, 0, 4, 4, NULL), TSWAP_OK);
  CHECK_EQ(tswap_load(&im, 0, 4, dst, 4, 0), TSWAP_OK);
  fl.base = 2; /* image placed at a misaligned flash address */
  CHECK_EQ(tswap_load(&im, 0, 0, dst, 4, 0), TSWAP_ERR_ALIGN);
  fl.base = 0;
  fl.align = 32; /* image aligned to 16 only */
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_ERR_ALIGN);
  fl.align = 3;
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_ERR_ARG);
  CHECK_EQ(tswap_image_open(&im, NULL, table, 8), TSWAP_ERR_ARG);
  CHECK_EQ(tswap_image_open(&im, &fl, NULL, 8), TSWAP_ERR_ARG);
}

/* A DMA-like driver: start records, poll copies; counts polls; can fail. */
typedef struct {
  const uint8_t* img;
  uint32_t len, addr, n;
  void* dst;
  int pending, polls, fail_read, fail_poll;
} fake_dma;

static int dma_read(void* ctx, uint32_t addr, void* dst, uint32_t len) {
  fake_dma* d = (fake_dma*)ctx;
  if (d->fail_read || addr > d->len || len > d->len - addr) return -1;
  memcpy(dst, d->img + addr, len);
  return 0;
}
static int dma_start(void* ctx, uint32_t addr, void* dst, uint32_t len) {
  fake_dma* d = (fake_dma*)ctx;
  d->addr = addr; d->dst = dst; d->n = len; d->pending = 1; d->polls = 0;
  return 0;
}
static int dma_poll(void* ctx) {
  fake_dma* d = (fake_dma*)ctx;
  if (d->fail_poll) return -1;
  if (++d->polls < 3) return 0;
  d->pending = 0;
  return dma_read(ctx, d->addr, d->dst, d->n) == 0 ? 1 : -1;
}

static void test_async_and_driver_errors(void) {
  uint8_t img[512], dst[64];
  tswap_segment table[8];
  tswap_flash fl;
  tswap_image im;
  fake_dma d;
  uint32_t size = make_image(img, sizeof(img));
  memset(&d, 0, sizeof(d));
  d.img = img; d.len = size;
  memset(&fl, 0, sizeof(fl));
  fl.read = dma_read; fl.start = dma_start; fl.poll = dma_poll; fl.ctx = &d; fl.size = size;
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_OK);
  CHECK_EQ(tswap_load_wait(&im), TSWAP_ERR_IDLE);
  CHECK_EQ(tswap_load_start(&im, 2, 0, dst, 64), TSWAP_OK);
  CHECK_EQ(tswap_load_start(&im, 0, 0, dst, 8), TSWAP_ERR_BUSY);
  CHECK_EQ(tswap_load(&im, 0, 0, dst, 8, 0), TSWAP_ERR_BUSY);
  CHECK_EQ(tswap_load_wait(&im), TSWAP_OK);
  CHECK_EQ(d.polls, 3);
  CHECK_EQ(memcmp(dst, img + table[2].offset, 64), 0);
  d.fail_poll = 1;
  CHECK_EQ(tswap_load_start(&im, 0, 0, dst, 40), TSWAP_OK);
  CHECK_EQ(tswap_load_wait(&im), TSWAP_ERR_FLASH);
  d.fail_poll = 0;
  d.fail_read = 1;
  CHECK_EQ(tswap_load(&im, 0, 0, dst, 40, 0), TSWAP_ERR_FLASH);
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_ERR_FLASH);
  fl.poll = NULL; /* start without poll is a configuration error */
  d.fail_read = 0;
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_ERR_ARG);
  /* without start/poll, start falls back to a blocking read and wait is a no-op */
  fl.start = NULL;
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_OK);
  CHECK_EQ(tswap_load_start(&im, 1, 0, dst, 7), TSWAP_OK);
  CHECK_EQ(tswap_load_wait(&im), TSWAP_OK);
  CHECK_EQ(memcmp(dst, img + table[1].offset, 7), 0);
  CHECK_EQ(strcmp(tswap_strerror(TSWAP_ERR_CRC), "segment CRC mismatch"), 0);
  CHECK_EQ(strcmp(tswap_strerror(12345), "unknown tswap status"), 0);
}

/* Version 2: three segments (40, 7, 64 bytes) and two tile entries {first, tiles, channels,
 * tile_channels}: {0, 2, 7, 4} and {2, 1, 3, 3}. Returns the image size. */
static uint32_t make_tiled_image(uint8_t* img, uint32_t cap, const uint32_t tiles[2][4]) {
  const uint32_t sizes[3] = {40, 7, 64}, header = 48 + 16 * (3 + 2);
  uint32_t offset = header, i, j;
  memset(img, 0, cap);
  memcpy(img, "TSWI", 4);
  put_u32(img + 4, 2);
  put_u32(img + 8, header);
  put_u32(img + 12, 3);
  put_u32(img + 20, 16);
  put_u32(img + 28, 2);
  for (i = 0; i < 3; ++i) {
    offset = (offset + 15u) & ~15u;
    for (j = 0; j < sizes[i]; ++j) img[offset + j] = (uint8_t)(i * 50 + j + 1);
    put_u32(img + 48 + 16 * i, offset);
    put_u32(img + 52 + 16 * i, sizes[i]);
    put_u32(img + 56 + 16 * i, tswap_crc32(img + offset, sizes[i]));
    offset += sizes[i];
  }
  for (i = 0; i < 2; ++i) {
    for (j = 0; j < 4; ++j) put_u32(img + 48 + 16 * (3 + i) + 4 * j, tiles[i][j]);
  }
  put_u32(img + 16, offset);
  put_u32(img + 24, tswap_crc32(img + 48, 16u * 5u));
  put_u32(img + 44, tswap_crc32(img, 44));
  return offset;
}

static void test_tile_table(void) {
  static const uint32_t good[2][4] = {{0, 2, 7, 4}, {2, 1, 3, 3}};
  static const uint32_t bad_entries[][4] = {
      {0, 0, 0, 4}, {0, 2, 7, 0}, {2, 2, 7, 4}, {0, 2, 9, 4}, {0, 2, 4, 4}, {4, 1, 3, 3}, {0, 2, 7, 0x80000000u}};
  uint8_t img[1024], bad[1024];
  uint32_t entries[2][4];
  tswap_segment table[8];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  tswap_tile tile;
  uint32_t size = make_tiled_image(img, sizeof(img), good), i, len;
  CHECK_EQ(open_mem(&im, &fl, &mem, img, size, table, 8), TSWAP_OK);
  CHECK_EQ(im.segment_count, 3);
  CHECK_EQ(im.tile_count, 2);
  CHECK_EQ(tswap_tile_get(&im, 0, &tile), TSWAP_OK);
  CHECK_EQ(tile.first_segment, 0);
  CHECK_EQ(tile.tiles, 2);
  CHECK_EQ(tile.channels, 7);
  CHECK_EQ(tile.tile_channels, 4);
  CHECK_EQ(tswap_tile_get(&im, 1, &tile), TSWAP_OK);
  CHECK_EQ(tile.first_segment, 2);
  CHECK_EQ(tswap_tile_get(&im, 2, &tile), TSWAP_ERR_TILE);
  CHECK_EQ(tswap_tile_get(NULL, 0, &tile), TSWAP_ERR_ARG);
  CHECK_EQ(tswap_load(&im, 2, 0, bad, 64, 1), TSWAP_OK);
  CHECK_EQ(strcmp(tswap_strerror(TSWAP_ERR_TILE), "tile-table entry out of range or inconsistent"), 0);
  for (len = 0; len < size; ++len) CHECK_NE_OK(open_mem(&im, &fl, &mem, img, len, table, 8));
  for (i = 0; i < 8 * (48 + 16 * 5); ++i) { /* every single-bit flip of header and tables is caught */
    memcpy(bad, img, size);
    bad[i / 8] ^= (uint8_t)(1u << (i % 8));
    if (open_mem(&im, &fl, &mem, bad, size, table, 8) == TSWAP_OK) {
      printf("FAIL bit flip %u in the v2 header/tables went unnoticed\n", (unsigned)i);
      ++failures;
    }
  }
  for (i = 0; i < sizeof(bad_entries) / sizeof(bad_entries[0]); ++i) { /* valid CRCs, inconsistent entry */
    memcpy(entries[0], bad_entries[i], sizeof(entries[0]));
    memcpy(entries[1], good[1], sizeof(entries[1]));
    size = make_tiled_image(bad, sizeof(bad), (const uint32_t(*)[4])entries);
    CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TILE);
  }
  size = make_tiled_image(bad, sizeof(bad), good);
  put_u32(bad + 36, 1); /* reserved word */
  put_u32(bad + 44, tswap_crc32(bad, 44));
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  size = make_tiled_image(bad, sizeof(bad), good);
  put_u32(bad + 28, 0x0fffffffu); /* tile count overflowing the header size */
  put_u32(bad + 44, tswap_crc32(bad, 44));
  CHECK_EQ(open_mem(&im, &fl, &mem, bad, size, table, 8), TSWAP_ERR_TABLE);
  size = make_tiled_image(bad, sizeof(bad), good); /* a version-1 image has no tile table */
  CHECK_EQ(open_mem(&im, &fl, &mem, img, make_image(img, sizeof(img)), table, 8), TSWAP_OK);
  CHECK_EQ(im.tile_count, 0);
  CHECK_EQ(tswap_tile_get(&im, 0, &tile), TSWAP_ERR_TILE);
}

/* The file-backed driver opens an image file, reports its size and reads it, blocking and deferred. */
static void test_file_flash(const char* path) {
  uint8_t img[512], dst[64];
  tswap_segment table[8];
  tswap_flash fl;
  tswap_file_flash ff;
  tswap_image im;
  uint32_t size = make_image(img, sizeof(img));
  FILE* f = fopen(path, "wb");
  CHECK_EQ(f != NULL, 1);
  if (f == NULL) return;
  CHECK_EQ(fwrite(img, 1, size, f), size);
  CHECK_EQ(fclose(f), 0);
  CHECK_EQ(tswap_file_flash_open(&fl, &ff, path, 0), 0);
  CHECK_EQ(fl.size, size);
  CHECK_EQ(fl.start == NULL, 1);
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_OK);
  CHECK_EQ(tswap_load(&im, 2, 0, dst, 64, 1), TSWAP_OK);
  CHECK_EQ(memcmp(dst, img + table[2].offset, 64), 0);
  tswap_file_flash_close(&ff);
  CHECK_EQ(tswap_file_flash_open(&fl, &ff, path, 1), 0);
  CHECK_EQ(tswap_image_open(&im, &fl, table, 8), TSWAP_OK);
  CHECK_EQ(tswap_load_start(&im, 0, 0, dst, 40), TSWAP_OK);
  CHECK_EQ(tswap_load_wait(&im), TSWAP_OK);
  CHECK_EQ(memcmp(dst, img + table[0].offset, 40), 0);
  tswap_file_flash_close(&ff);
  /* a missing file fails cleanly */
  CHECK_EQ(remove(path), 0);
  CHECK_EQ(tswap_file_flash_open(&fl, &ff, path, 0), -1);
  CHECK_EQ(ff.file == NULL, 1);
}

/* A version-3 container of two copies of make_image's image, named "router" and "spec_1", at
 * 64-byte alignment; returns the container size. */
static uint32_t make_container(uint8_t* img, uint32_t cap) {
  static const char* const names[2] = {"router", "spec_1"};
  uint8_t member[512];
  const uint32_t size = make_image(member, sizeof(member));
  uint32_t offset = 48 + 2 * 32, i;
  memset(img, 0, cap);
  memcpy(img, "TSWI", 4);
  put_u32(img + 4, 3);
  put_u32(img + 8, 48 + 2 * 32);
  put_u32(img + 12, 2);
  put_u32(img + 20, 64);
  for (i = 0; i < 2; ++i) {
    offset = (offset + 63u) & ~63u;
    memcpy(img + offset, member, size);
    put_u32(img + 48 + 32 * i, offset);
    put_u32(img + 52 + 32 * i, size);
    put_u32(img + 56 + 32 * i, 0x1234u + i);
    put_u32(img + 60 + 32 * i, 100u + i);
    memcpy(img + 64 + 32 * i, names[i], strlen(names[i]));
    offset += size;
  }
  put_u32(img + 16, offset);
  put_u32(img + 24, tswap_crc32(img + 48, 2 * 32));
  put_u32(img + 44, tswap_crc32(img, 44));
  return offset;
}

static void reseal_container(uint8_t* img) {
  put_u32(img + 24, tswap_crc32(img + 48, 2 * 32));
  put_u32(img + 44, tswap_crc32(img, 44));
}

static int open_container(tswap_container* c, tswap_flash* fl, tswap_memory_flash* mem, const uint8_t* img,
                          uint32_t len) {
  tswap_flash_from_memory(fl, mem, img, len);
  return tswap_container_open(c, fl);
}

static void test_container(void) {
  uint8_t img[1024], bad[1024], dst[64];
  tswap_segment table[4];
  tswap_flash fl, member_flash;
  tswap_memory_flash mem;
  tswap_container c;
  tswap_member m;
  tswap_image im;
  uint32_t size = make_container(img, sizeof(img)), i, cut;
  CHECK_EQ(open_container(&c, &fl, &mem, img, size), TSWAP_OK);
  CHECK_EQ(c.member_count, 2);
  for (i = 0; i < 2; ++i) {
    CHECK_EQ(tswap_container_member(&c, i, &m), TSWAP_OK);
    CHECK_EQ(m.offset % 64u, 0);
    CHECK_EQ(m.graph_crc32, 0x1234u + i);
    CHECK_EQ(m.graph_size, 100u + i);
    CHECK_EQ(strcmp(m.name, i ? "spec_1" : "router"), 0);
    CHECK_EQ(tswap_member_flash(&c, &m, &member_flash), TSWAP_OK);
    CHECK_EQ(tswap_image_open(&im, &member_flash, table, 4), TSWAP_OK);
    CHECK_EQ(tswap_load(&im, 2, 0, dst, table[2].size, 1), TSWAP_OK); /* read through the moved base */
    CHECK_EQ(memcmp(dst, img + m.offset + table[2].offset, table[2].size), 0);
  }
  CHECK_EQ(tswap_container_member(&c, 2, &m), TSWAP_ERR_MEMBER);
  /* a container is not one model's image, and one model's image is not a container */
  CHECK_EQ(open_mem(&im, &fl, &mem, img, size, table, 4), TSWAP_ERR_CONTAINER);
  CHECK_EQ(tswap_container_member(&c, 0, &m), TSWAP_OK);
  CHECK_EQ(open_container(&c, &fl, &mem, img + m.offset, m.size), TSWAP_ERR_VERSION);
  for (cut = 0; cut < size; cut += 7) CHECK_NE_OK(open_container(&c, &fl, &mem, img, cut));
  for (i = 0; i < 112 * 8; ++i) { /* every single-bit flip of the header and member table */
    memcpy(bad, img, size);
    bad[i / 8] ^= (uint8_t)(1u << (i % 8));
    CHECK_NE_OK(open_container(&c, &fl, &mem, bad, size));
  }
  /* inconsistent tables with valid CRCs */
  memcpy(bad, img, size);
  put_u32(bad + 48 + 32, 96); /* member 1 overlaps member 0 */
  reseal_container(bad);
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_ERR_ALIGN);
  memcpy(bad, img, size);
  put_u32(bad + 48 + 32, 128); /* aligned, but overlapping member 0 */
  reseal_container(bad);
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_ERR_MEMBER);
  memcpy(bad, img, size);
  put_u32(bad + 52 + 32, size); /* past the container's end */
  reseal_container(bad);
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_ERR_MEMBER);
  memcpy(bad, img, size);
  bad[64 + 32 + 2] = '-'; /* a name character outside [A-Za-z0-9_] */
  reseal_container(bad);
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_ERR_MEMBER);
  memcpy(bad, img, size);
  memset(bad + 64, 'a', 16); /* no terminating NUL */
  reseal_container(bad);
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_ERR_MEMBER);
  memcpy(bad, img, size);
  bad[64 + 8] = 'x'; /* a character after the NUL */
  reseal_container(bad);
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_ERR_MEMBER);
  memcpy(bad, img, size);
  put_u32(bad + 32, 1); /* reserved word */
  reseal_container(bad);
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_ERR_TABLE);
  /* a corrupt member image fails when the member is opened */
  CHECK_EQ(open_container(&c, &fl, &mem, img, size), TSWAP_OK);
  CHECK_EQ(tswap_container_member(&c, 1, &m), TSWAP_OK);
  memcpy(bad, img, size);
  bad[m.offset + 40] ^= 1u;
  CHECK_EQ(open_container(&c, &fl, &mem, bad, size), TSWAP_OK);
  CHECK_EQ(tswap_member_flash(&c, &m, &member_flash), TSWAP_OK);
  CHECK_EQ(tswap_image_open(&im, &member_flash, table, 4), TSWAP_ERR_HEADER_CRC);
  CHECK_EQ(tswap_container_open(NULL, &fl), TSWAP_ERR_ARG);
  CHECK_EQ(tswap_member_flash(&c, NULL, &member_flash), TSWAP_ERR_ARG);
}

/* ------------------------------------------------------------------------------ palette segments */
/* A palette entry: `channels` tables of `entries` values (table c: c * 3 - 40 + k), element i of
 * channel (i / inner) % channels using index (i * 7 + 3) % entries, packed MSB first. */
static uint32_t make_palette(uint8_t* blob, uint32_t bits, uint32_t entries, uint32_t count, uint32_t channels,
                             uint32_t inner, int8_t* expect) {
  uint32_t i, t = TSWAP_PALETTE_HEADER_BYTES + channels * entries, bit = 0;
  memset(blob, 0, t + (count * bits + 7u) / 8u);
  memcpy(blob, "TSWC", 4);
  blob[4] = 1;
  blob[5] = (uint8_t)bits;
  blob[6] = (uint8_t)entries;
  blob[7] = (uint8_t)(entries >> 8);
  put_u32(blob + 8, count);
  put_u32(blob + 12, channels);
  put_u32(blob + 16, inner);
  for (i = 0; i < channels * entries; ++i) blob[TSWAP_PALETTE_HEADER_BYTES + i] = (uint8_t)(int8_t)((i / entries) * 3u + i % entries - 40u);
  for (i = 0; i < count; ++i) {
    uint32_t index = (i * 7u + 3u) % entries, channel = (i / inner) % channels, b;
    expect[i] = (int8_t)(channel * 3u + index - 40u);
    for (b = 0; b < bits; ++b, ++bit) {
      if ((index >> (bits - 1u - b)) & 1u) blob[t + bit / 8u] |= (uint8_t)(0x80u >> (bit % 8u));
    }
  }
  return t + (count * bits + 7u) / 8u;
}

/* A version-1 image of `n` (<= 4) segments holding `lens[i]` bytes of `data[i]`, each at the next
 * multiple of 16 after the header, table and the segment before; returns the image size. */
static uint32_t segments_image(uint8_t* img, uint32_t cap, const uint8_t* const* data, const uint32_t* lens,
                               uint32_t n) {
  uint32_t i, cursor = 32u + 16u * n;
  memset(img, 0, cap);
  memcpy(img, "TSWI", 4);
  put_u32(img + 4, 1);
  put_u32(img + 8, cursor);
  put_u32(img + 12, n);
  put_u32(img + 20, 16);
  for (i = 0; i < n; ++i) {
    cursor = (cursor + 15u) & ~15u;
    memcpy(img + cursor, data[i], lens[i]);
    put_u32(img + 32 + 16 * i, cursor);
    put_u32(img + 36 + 16 * i, lens[i]);
    put_u32(img + 40 + 16 * i, tswap_crc32(data[i], lens[i]));
    cursor += lens[i];
  }
  put_u32(img + 16, cursor);
  seal(img);
  return cursor;
}

static void test_palette(void) {
  static const uint32_t shapes[][5] = {{4, 16, 96, 4, 24}, {3, 6, 50, 1, 50}, {1, 2, 33, 3, 11}, {8, 200, 64, 2, 32},
                                       {5, 17, 60, 6, 1}, {7, 100, 21, 7, 1}, {2, 1, 12, 4, 3}, {4, 11, 90, 2, 15},
                                       {4, 9, 63, 3, 7}, {3, 8, 240, 12, 1}, {6, 40, 96, 16, 1}, {2, 4, 200, 5, 8},
                                       {7, 128, 80, 1, 80}, {4, 16, 72, 9, 1}};
  uint8_t blob[1024], bad[1024];
  int8_t expect[512], out[512], tables[2048];
  tswap_palette p;
  tswap_palette_decoder d;
  uint32_t s, size, bit, piece;
  for (s = 0; s < sizeof(shapes) / sizeof(shapes[0]); ++s) {
    const uint32_t* sh = shapes[s];
    size = make_palette(blob, sh[0], sh[1], sh[2], sh[3], sh[4], expect);
    CHECK_EQ(tswap_palette_parse(blob, size, sh[2], &p), TSWAP_OK);
    memset(out, 0x55, sizeof(out));
    CHECK_EQ(tswap_palette_decode(&p, blob, tables, out), TSWAP_OK);
    CHECK_EQ(memcmp(out, expect, sh[2]), 0);
    for (piece = 1; piece < 9; ++piece) { /* fed in pieces of any length: the same */
      uint32_t at = TSWAP_PALETTE_HEADER_BYTES;
      memset(out, 0x55, sizeof(out));
      tswap_palette_begin(&d, &p, tables, out);
      for (; at < size; at += piece) CHECK_EQ(tswap_palette_feed(&d, blob + at, at + piece <= size ? piece : size - at), TSWAP_OK);
      CHECK_EQ(tswap_palette_end(&d), TSWAP_OK);
      CHECK_EQ(memcmp(out, expect, sh[2]), 0);
    }
    /* wrong sizes: one byte short or long, another decoded size */
    CHECK_EQ(tswap_palette_parse(blob, size - 1u, sh[2], &p), TSWAP_ERR_ENCODING);
    CHECK_EQ(tswap_palette_parse(blob, size + 1u, sh[2], &p), TSWAP_ERR_ENCODING);
    CHECK_EQ(tswap_palette_parse(blob, size, sh[2] + 1u, &p), TSWAP_ERR_ENCODING);
    /* every header bit flip is refused, but one giving another valid channel layout (channels, inner:
     * bytes 12..19), which only the segment's CRC32 catches */
    for (bit = 0; bit < 8u * TSWAP_PALETTE_HEADER_BYTES; ++bit) {
      memcpy(bad, blob, size);
      bad[bit / 8u] ^= (uint8_t)(1u << (bit % 8u));
      if (tswap_palette_parse(bad, size, sh[2], &p) == TSWAP_OK && (bit < 96u || bit >= 160u)) {
        printf("FAIL %s:%d: shape %u header bit %u flip accepted\n", __FILE__, __LINE__, (unsigned)s, (unsigned)bit);
        ++failures;
      }
    }
    /* every bit flip after the header decodes within bounds (the CRC catches it in an image) */
    CHECK_EQ(tswap_palette_parse(blob, size, sh[2], &p), TSWAP_OK);
    for (bit = 8u * TSWAP_PALETTE_HEADER_BYTES; bit < 8u * size; ++bit) {
      memcpy(bad, blob, size);
      bad[bit / 8u] ^= (uint8_t)(1u << (bit % 8u));
      (void)tswap_palette_decode(&p, bad, tables, out);
    }
    /* too many bytes fed */
    tswap_palette_begin(&d, &p, tables, out);
    CHECK_EQ(tswap_palette_feed(&d, blob + TSWAP_PALETTE_HEADER_BYTES, size - TSWAP_PALETTE_HEADER_BYTES + 1u),
             TSWAP_ERR_ENCODING);
    /* truncated: not every byte came */
    tswap_palette_begin(&d, &p, tables, out);
    CHECK_EQ(tswap_palette_feed(&d, blob + TSWAP_PALETTE_HEADER_BYTES, size - TSWAP_PALETTE_HEADER_BYTES - 1u), TSWAP_OK);
    CHECK_EQ(tswap_palette_end(&d), TSWAP_ERR_ENCODING);
  }
  /* an index outside its table (6 entries, 3-bit indices: 7 is out of range) */
  size = make_palette(blob, 3, 6, 50, 1, 50, expect);
  CHECK_EQ(tswap_palette_parse(blob, size, 50, &p), TSWAP_OK);
  blob[TSWAP_PALETTE_HEADER_BYTES + 6] |= 0xE0u;
  CHECK_EQ(tswap_palette_decode(&p, blob, tables, out), TSWAP_ERR_ENCODING);
  /* nonzero padding bits after the last index (50 x 3 = 150 bits: 2 spare) */
  size = make_palette(blob, 3, 6, 50, 1, 50, expect);
  blob[size - 1u] |= 1u;
  CHECK_EQ(tswap_palette_decode(&p, blob, tables, out), TSWAP_ERR_ENCODING);
  /* bit width 0 and 9, table longer than 2^bits */
  size = make_palette(blob, 2, 4, 16, 1, 16, expect);
  blob[5] = 0;
  CHECK_EQ(tswap_palette_parse(blob, size, 16, &p), TSWAP_ERR_ENCODING);
  blob[5] = 9;
  CHECK_EQ(tswap_palette_parse(blob, size, 16, &p), TSWAP_ERR_ENCODING);
  blob[5] = 2;
  blob[6] = 5;
  CHECK_EQ(tswap_palette_parse(blob, size, 16, &p), TSWAP_ERR_ENCODING);
}

/* An image whose segment 1 is a palette entry: loaded and decoded through the driver, chunk by chunk,
 * with and without the CRC check; a corrupt entry with a valid CRC is refused. */
static void test_palette_load(void) {
  uint8_t img[2048], blob[512];
  int8_t expect[512], out[512], tables[512];
  uint8_t chunk[48];
  tswap_segment table[4];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  tswap_palette p;
  static const uint8_t zeros[16];
  const uint32_t size = make_palette(blob, 4, 16, 320, 5, 64, expect), offset = 80; /* segment 1's */
  const uint8_t* data[2] = {zeros, blob}; /* segment 0: 16 raw bytes */
  const uint32_t lens[2] = {16, size};
  CHECK_EQ(open_mem(&im, &fl, &mem, img, segments_image(img, sizeof(img), data, lens, 2), table, 4), TSWAP_OK);
  CHECK_EQ(tswap_palette_open(&im, 1, 320, &p), TSWAP_OK);
  CHECK_EQ(tswap_palette_open(&im, 1, 321, &p), TSWAP_ERR_ENCODING);
  CHECK_EQ(tswap_palette_open(&im, 0, 16, &p), TSWAP_ERR_ENCODING); /* a raw segment */
  CHECK_EQ(tswap_palette_open(&im, 2, 320, &p), TSWAP_ERR_SEGMENT_ID);
  CHECK_EQ(tswap_palette_open(&im, 1, 320, &p), TSWAP_OK);
  CHECK_EQ(tswap_load_palette(&im, 1, &p, out, tables, chunk, sizeof(chunk), 1), TSWAP_OK);
  CHECK_EQ(memcmp(out, expect, 320), 0);
  CHECK_EQ(im.bytes_read, size);
  CHECK_EQ(tswap_load_palette(&im, 1, &p, out, tables, chunk, 20, 0), TSWAP_ERR_ALIGN); /* < header */
  fl.align = 16;
  CHECK_EQ(tswap_load_palette(&im, 1, &p, out, tables, chunk, 40, 0), TSWAP_ERR_ALIGN); /* not a multiple */
  fl.align = 1;
  img[offset + TSWAP_PALETTE_HEADER_BYTES] ^= 1u; /* a table value: only the CRC notices */
  CHECK_EQ(tswap_load_palette(&im, 1, &p, out, tables, chunk, sizeof(chunk), 1), TSWAP_ERR_CRC);
  CHECK_EQ(tswap_load_palette(&im, 1, &p, out, tables, chunk, sizeof(chunk), 0), TSWAP_OK);
  img[offset + TSWAP_PALETTE_HEADER_BYTES] ^= 1u;
  img[offset + 5] = 3; /* bit width changed after Prepare parsed the header, CRC sealed again */
  put_u32(img + 56, tswap_crc32(img + offset, size));
  seal(img);
  CHECK_EQ(tswap_load_palette(&im, 1, &p, out, tables, chunk, sizeof(chunk), 1), TSWAP_ERR_ENCODING);
  CHECK_EQ(tswap_palette_open(&im, 1, 320, &p), TSWAP_ERR_ENCODING);
}

/* In-place decoding as the tiled kernels do it: the entry read to the end of a buffer with one
 * spare byte past the decoded elements decodes into the buffer's start, for every bit width, layout
 * and count; an entry at the start of a segment (bytes following it) opens by its own size. */
static void test_palette_in_place(void) {
  static const uint32_t shapes[][5] = {{4, 16, 320, 5, 64}, {3, 8, 90, 10, 1}, {7, 100, 257, 1, 257},
                                       {1, 2, 33, 3, 11}, {8, 200, 400, 2, 200}, {2, 4, 64, 64, 1}};
  uint8_t buffer[1024], blob[1024];
  int8_t expect[512], tables[1024];
  tswap_palette p;
  uint32_t s;
  for (s = 0; s < sizeof(shapes) / sizeof(shapes[0]); ++s) {
    const uint32_t* sh = shapes[s];
    const uint32_t size = make_palette(blob, sh[0], sh[1], sh[2], sh[3], sh[4], expect);
    const uint32_t at = sh[2] + 1u > size ? sh[2] + 1u - size : 0u; /* entry ends 1 byte past the elements */
    memset(buffer, 0xA5, sizeof(buffer));
    memcpy(buffer + at, blob, size);
    CHECK_EQ(tswap_palette_parse(buffer + at, size, sh[2], &p), TSWAP_OK);
    CHECK_EQ(tswap_palette_decode(&p, buffer + at, tables, (int8_t*)buffer), TSWAP_OK);
    CHECK_EQ(memcmp(buffer, expect, sh[2]), 0);
  }
  {
    uint8_t img[1024];
    tswap_segment table[2];
    tswap_flash fl;
    tswap_memory_flash mem;
    tswap_image im;
    const uint32_t size = make_palette(blob, 4, 16, 320, 5, 64, expect);
    const uint8_t* data[1] = {blob};
    const uint32_t lens[1] = {size + 8u};
    memset(blob + size, 0x3C, 8); /* the entry, then 8 bytes of something else */
    CHECK_EQ(open_mem(&im, &fl, &mem, img, segments_image(img, sizeof(img), data, lens, 1), table, 2), TSWAP_OK);
    CHECK_EQ(tswap_palette_open(&im, 0, 320, &p), TSWAP_ERR_ENCODING);
    CHECK_EQ(tswap_palette_open_entry(&im, 0, size, 320, &p), TSWAP_OK);
    CHECK_EQ(tswap_palette_open_entry(&im, 0, size + 1u, 320, &p), TSWAP_ERR_ENCODING);
    CHECK_EQ(tswap_palette_open_entry(&im, 0, size + 9u, 320, &p), TSWAP_ERR_ENCODING); /* past the segment */
    CHECK_EQ(tswap_palette_open_entry(&im, 1, size, 320, &p), TSWAP_ERR_SEGMENT_ID);
  }
}

/* Prefetching an encoded segment into its own tensor (start: all but the tail to the tensor's end;
 * finish: tail, CRC, decode in place) gives the decoded values for every bit width 1..7 and flash
 * alignment 1, 4 and 16; a segment larger than the tensor, a stale CRC and a header changed after
 * Prepare are refused. */
static void test_palette_prefetch(void) {
  static const uint32_t shapes[][5] = {{7, 20, 512, 1, 512}, {7, 16, 512, 2, 256}, {6, 12, 480, 2, 240},
                                       {6, 8, 480, 8, 1},     {5, 16, 480, 3, 160}, {4, 16, 320, 5, 64},
                                       {3, 8, 240, 12, 1},    {2, 4, 200, 5, 8},    {1, 2, 512, 1, 512},
                                       {4, 16, 320, 40, 1}};
  static const uint32_t aligns[3] = {1, 4, 16};
  uint8_t img[2048], blob[1024], tail_storage[160 + 16];
  uint8_t* tail = tail_storage + (16u - ((uintptr_t)tail_storage & 15u)) % 16u; /* the driver's alignment */
  int8_t expect[512], tables[1024];
  int8_t dst_storage[512 + 16];
  int8_t* dst = dst_storage + (16u - ((uintptr_t)dst_storage & 15u)) % 16u; /* 16-byte aligned */
  tswap_segment table[2];
  tswap_flash fl;
  tswap_memory_flash mem;
  tswap_image im;
  tswap_palette p;
  uint32_t s, a, size, offset = 48; /* the one segment's */
  for (s = 0; s < sizeof(shapes) / sizeof(shapes[0]); ++s) {
    const uint32_t* sh = shapes[s];
    const uint8_t* data[1] = {blob};
    size = make_palette(blob, sh[0], sh[1], sh[2], sh[3], sh[4], expect);
    CHECK_EQ(open_mem(&im, &fl, &mem, img, segments_image(img, sizeof(img), data, &size, 1), table, 2), TSWAP_OK);
    CHECK_EQ(tswap_palette_open(&im, 0, sh[2], &p), TSWAP_OK);
    for (a = 0; a < 3u; ++a) {
      fl.align = aligns[a];
      const uint32_t tail_bytes = tswap_palette_tail_bytes(&im, 0);
      memset(dst, 0x55, 512);
      if (size > sh[2] || tail_bytes == 0u || size - tail_bytes < TSWAP_PALETTE_HEADER_BYTES) {
        /* stored larger than decoded (nowhere to put it), or too short to split off a tail */
        CHECK_EQ(tswap_palette_prefetch_check(&im, 0, &p), TSWAP_ERR_ENCODING);
        CHECK_EQ(tswap_load_palette_start(&im, 0, &p, dst), TSWAP_ERR_ENCODING);
        CHECK_EQ(size > sh[2] || aligns[a] == 16u, 1); /* every shape but the last prefetches at 1 and 4 */
        continue;
      }
      CHECK_EQ(tswap_palette_prefetch_check(&im, 0, &p), TSWAP_OK);
      CHECK_EQ(tswap_load_palette_start(&im, 0, &p, dst), TSWAP_OK);
      CHECK_EQ(tswap_load_palette_finish(&im, 0, &p, dst, tables, tail, 1), TSWAP_OK);
      CHECK_EQ(memcmp(dst, expect, sh[2]), 0);
      CHECK_EQ(tail_bytes <= 8u * aligns[a] + 15u, 1);
    }
    if (size > sh[2]) continue;
    fl.align = 1;
    img[offset + size - 1u] ^= 0x80u; /* a tail byte: the CRC notices */
    CHECK_EQ(tswap_load_palette_start(&im, 0, &p, dst), TSWAP_OK);
    CHECK_EQ(tswap_load_palette_finish(&im, 0, &p, dst, tables, tail, 1), TSWAP_ERR_CRC);
    img[offset + size - 1u] ^= 0x80u;
    img[offset + 5] = (uint8_t)(sh[0] == 7u ? 6u : sh[0] + 1u); /* bit width changed after Prepare */
    CHECK_EQ(tswap_load_palette_start(&im, 0, &p, dst), TSWAP_OK);
    CHECK_EQ(tswap_load_palette_finish(&im, 0, &p, dst, tables, tail, 0), TSWAP_ERR_ENCODING);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    printf("usage: %s SCRATCH_FILE\n", argv[0]);
    return 2;
  }
  test_valid();
  test_palette_in_place();
  test_palette_prefetch();
  test_tile_table();
  test_container();
  test_truncated();
  test_corrupt();
  test_inconsistent();
  test_requests();
  test_async_and_driver_errors();
  test_palette();
  test_palette_load();
  test_file_flash(argv[1]);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
  return failures;
}
