/* tflm_swap micro core: the flash image of a TFLM-target model, read segment by segment.
 *
 * C99, no heap, no global mutable state. The image ("TSWI", version 1, little-endian) is:
 *
 *   0  magic "TSWI"          16 image_size (bytes, header included)
 *   4  version (1)           20 alignment (power of two; every segment offset is a multiple)
 *   8  header_size           24 table_crc32 (CRC32 of the segment table bytes)
 *  12  segment_count         28 header_crc32 (CRC32 of bytes 0..27)
 *  32  segment table: segment_count x { offset, size, crc32, reserved(0) }  (16 bytes each)
 *      then the segments, each at a multiple of `alignment` from the image start, ascending,
 *      non-overlapping, inside image_size.
 *
 * Version 2 (written when the graph has tiled operators) has a 48-byte header and a tile table:
 *
 *   0  magic "TSWI"    12 segment_count   24 table_crc32 (segment table + tile table)   32..43 reserved (0)
 *   4  version (2)     16 image_size      28 tile_count                                 44 header_crc32
 *   8  header_size     20 alignment                                                        (of bytes 0..43)
 *  48  segment table (segment_count x 16 bytes), then the tile table: tile_count x
 *      { first_segment, tiles, channels, tile_channels } (16 bytes each); header_size = 48 + 16 (n + m)
 *
 * Version 3 is a container ("cascade image"): several members' images in one flash image, each a
 * complete version-1 or -2 image, named in a member table:
 *
 *   0  magic "TSWI"    12 member_count k   24 table_crc32 (member table)   28..43 reserved (0)
 *   4  version (3)     16 image_size       44 header_crc32 (of bytes 0..43)
 *   8  header_size     20 alignment (every member offset is a multiple)
 *  48  member table: k x { offset, size, graph_crc32, graph_size, name[16] } (32 bytes each);
 *      header_size = 48 + 32 k. Members ascending, non-overlapping, inside image_size, each at least
 *      a 32-byte header; names 1..15 characters [A-Za-z0-9_], NUL-padded. `graph_crc32` and
 *      `graph_size` are those of the TFLM graph the member's image belongs to.
 *
 * A segment holds one constant tensor's bytes, or one weight tile (filter slice, then its bias slice
 * at the next multiple of 4). The TFLM load operator reads segment `id` into its output tensor; a
 * tiled kernel reads the segments first_segment .. first_segment + tiles - 1 of its tile-table entry,
 * tile k holding output channels [k * tile_channels, min((k + 1) * tile_channels, channels)) (see
 * tswap_tflm.h). CRC32 is zlib's (delegates/common/tswap_crc32.h).
 */
#ifndef TSWAP_MICRO_H_
#define TSWAP_MICRO_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TSWAP_IMAGE_MAGIC "TSWI"
#define TSWAP_IMAGE_VERSION 1u      /* without a tile table */
#define TSWAP_IMAGE_VERSION_TILES 2u /* with a tile table */
#define TSWAP_IMAGE_VERSION_MEMBERS 3u /* a container of member images (tswap_container_open) */
#define TSWAP_HEADER_BYTES 32u       /* version 1 */
#define TSWAP_HEADER_BYTES_V2 48u
#define TSWAP_ENTRY_BYTES 16u
#define TSWAP_TILE_BYTES 16u
#define TSWAP_MEMBER_BYTES 32u
#define TSWAP_MEMBER_NAME_BYTES 16u

typedef enum {
  TSWAP_OK = 0,
  TSWAP_ERR_ARG = -1,          /* NULL pointer or zero-capacity argument */
  TSWAP_ERR_TRUNCATED = -2,    /* image (or header) larger than the flash/buffer holding it */
  TSWAP_ERR_MAGIC = -3,        /* not a TSWI image */
  TSWAP_ERR_VERSION = -4,      /* image version this library does not read */
  TSWAP_ERR_HEADER_CRC = -5,   /* header or segment table CRC mismatch */
  TSWAP_ERR_TABLE = -6,        /* inconsistent header or segment table (sizes, order, overlap) */
  TSWAP_ERR_CAPACITY = -7,     /* more segments than the caller's table storage holds */
  TSWAP_ERR_SEGMENT_ID = -8,   /* segment id out of range */
  TSWAP_ERR_RANGE = -9,        /* request outside the segment */
  TSWAP_ERR_ALIGN = -10,       /* request or destination not aligned as the flash driver needs */
  TSWAP_ERR_FLASH = -11,       /* the flash driver reported an error */
  TSWAP_ERR_CRC = -12,         /* segment payload CRC mismatch */
  TSWAP_ERR_BUSY = -13,        /* an asynchronous read is already in flight */
  TSWAP_ERR_IDLE = -14,        /* wait without a started read */
  TSWAP_ERR_TILE = -15,        /* tile-table entry out of range or inconsistent */
  TSWAP_ERR_MEMBER = -16,      /* member-table entry out of range or inconsistent */
  TSWAP_ERR_CONTAINER = -17,   /* a version-3 container given where one model's image is expected */
  TSWAP_ERR_ENCODING = -18     /* corrupt palette-encoded segment (header, sizes, index outside its table) */
} tswap_status;

/* The user's flash driver. `read` is required and blocking; `start`/`poll` are optional (both or
 * neither) and let a DMA transfer run while the CPU computes. Addresses are absolute flash
 * addresses: `base` + image offset. Return 0 on success, nonzero on error; poll returns 1 when the
 * transfer finished, 0 while it runs, <0 on error. */
typedef struct tswap_flash {
  int (*read)(void* ctx, uint32_t addr, void* dst, uint32_t len);
  int (*start)(void* ctx, uint32_t addr, void* dst, uint32_t len);
  int (*poll)(void* ctx);
  void* ctx;
  uint32_t base;   /* flash address of the image's first byte */
  uint32_t size;   /* bytes available from base (0: unknown, not checked) */
  uint32_t align;  /* required alignment of flash address and destination (power of two; 0/1: none) */
} tswap_flash;

typedef struct tswap_segment {
  uint32_t offset; /* from the image start */
  uint32_t size;
  uint32_t crc32;
} tswap_segment;

/* One tile-table entry: an operator's weights in `tiles` segments of `tile_channels` output channels
 * (the last tile may hold fewer), `channels` in all. */
typedef struct tswap_tile {
  uint32_t first_segment;
  uint32_t tiles;
  uint32_t channels;
  uint32_t tile_channels;
} tswap_tile;

typedef struct tswap_image {
  const tswap_flash* flash;
  tswap_segment* segments; /* caller-provided storage, filled by tswap_image_open */
  uint32_t segment_count;
  uint32_t image_size;
  uint32_t alignment;
  uint32_t pending;        /* 1 while an asynchronous load is in flight */
  uint64_t bytes_read;     /* payload bytes read from flash since open (statistics) */
  uint32_t tile_count;     /* tile-table entries (0 in a version-1 image) */
  uint32_t tile_table;     /* image offset of the tile table */
} tswap_image;

/* One member of a version-3 container: where its image is (from the container start), its size, the
 * CRC32 and size of the graph it belongs to, and its name (NUL-terminated). */
typedef struct tswap_member {
  uint32_t offset;
  uint32_t size;
  uint32_t graph_crc32;
  uint32_t graph_size;
  char name[TSWAP_MEMBER_NAME_BYTES];
} tswap_member;

typedef struct tswap_container {
  const tswap_flash* flash;
  uint32_t member_count;
  uint32_t image_size;
  uint32_t alignment;
} tswap_container;

/* Read and validate a version-3 container's header and member table (which stays in flash): magic,
 * version, both CRCs, every entry's bounds, order, alignment and name. A version-1/2 image gives
 * TSWAP_ERR_VERSION. The members' own images are checked when opened (tswap_image_open). */
int tswap_container_open(tswap_container* c, const tswap_flash* flash);

/* Read and check member `index` (TSWAP_ERR_MEMBER when out of range). */
int tswap_container_member(const tswap_container* c, uint32_t index, tswap_member* out);

/* The flash driver of one member: `c`'s driver with its base moved to the member and its size the
 * member's, so that tswap_image_open(&image, out, ...) opens the member's image. */
int tswap_member_flash(const tswap_container* c, const tswap_member* member, tswap_flash* out);

/* Read and validate the header and segment table through `flash` into `table` (capacity `cap`).
 * Checks magic, version (1 or 2; a version-3 container gives TSWAP_ERR_CONTAINER), both CRCs, sizes, alignment, ordering and bounds of every segment
 * and, in version 2, every tile-table entry (which stays in flash: see tswap_tile_get). */
int tswap_image_open(tswap_image* img, const tswap_flash* flash, tswap_segment* table, uint32_t cap);

/* Read and check tile-table entry `id` (validated at open: tiles >= 1, the segments exist, channels
 * fill exactly `tiles` tiles of `tile_channels`). */
int tswap_tile_get(const tswap_image* img, uint32_t id, tswap_tile* out);

/* Check a load request without reading: valid id, [offset, offset+len) inside the segment, flash
 * address and `dst` aligned as the driver requires. `dst` may be NULL to skip the pointer check. */
int tswap_check_request(const tswap_image* img, uint32_t id, uint32_t offset, uint32_t len, const void* dst);

/* Blocking read of `len` bytes at `offset` in segment `id` into `dst`. With `verify_crc` the whole
 * segment must be requested (offset 0, len = size) and its CRC32 is checked after the read. */
int tswap_load(tswap_image* img, uint32_t id, uint32_t offset, void* dst, uint32_t len, int verify_crc);

/* Start an asynchronous read (falls back to a blocking read when the driver has no `start`);
 * tswap_load_wait blocks until it finished (busy-polls the driver). One read in flight at a time. */
int tswap_load_start(tswap_image* img, uint32_t id, uint32_t offset, void* dst, uint32_t len);
int tswap_load_wait(tswap_image* img);

/* CRC32 of every segment, reading through `scratch` (any size >= 1). */
int tswap_image_verify(tswap_image* img, uint8_t* scratch, uint32_t scratch_len);

/* A driver for an image already in addressable memory (memory-mapped XIP flash, tests, fuzzing). */
typedef struct tswap_memory_flash {
  const uint8_t* data;
  uint32_t len;
} tswap_memory_flash;
void tswap_flash_from_memory(tswap_flash* flash, tswap_memory_flash* mem, const void* data, uint32_t len);

/* Palette-encoded segments ("TSWC", docs/FORMAT.md): a 24-byte header, then `channels` value tables
 * of `table_len` int8 entries, then `count` indices of `bits` bits, most significant bit first.
 * Element i belongs to channel (i / inner) % channels and decodes to tables[channel][index i].
 *
 *   0 magic "TSWC"   5 u8 bits (1..8)        8 u32 count     16 u32 inner
 *   4 u8 version 1   6 u16 table_len (1..2^bits)  12 u32 channels  20 u32 reserved (0)
 */
#define TSWAP_PALETTE_MAGIC "TSWC"
#define TSWAP_PALETTE_VERSION 1u
#define TSWAP_PALETTE_HEADER_BYTES 24u

typedef struct tswap_palette {
  uint32_t bits;
  uint32_t table_len;
  uint32_t count;       /* decoded int8 elements (bytes) */
  uint32_t channels;
  uint32_t inner;
  uint32_t table_bytes; /* channels * table_len */
  uint32_t index_bytes; /* ceil(count * bits / 8) */
} tswap_palette;

/* Validate a header: magic, version, bit width 1..8, 1 <= table_len <= 2^bits, count a multiple of
 * channels * inner, reserved word 0, count == expect_count and header + tables + indices ==
 * stored_size exactly. TSWAP_ERR_ENCODING on any mismatch. */
int tswap_palette_parse(const uint8_t* header, uint32_t stored_size, uint32_t expect_count, tswap_palette* out);

/* Streaming decoder: feed the bytes after the header in order, in pieces of any length; the tables
 * are copied to `tables` (table_bytes), elements written to `out` (count bytes). */
typedef struct tswap_palette_decoder {
  const tswap_palette* p;
  int8_t* tables;
  int8_t* out;
  uint32_t consumed; /* bytes after the header taken so far */
  uint32_t done;     /* elements written */
  uint32_t acc;      /* index bits not yet used (the low `nbits`) */
  uint32_t nbits;
  uint32_t channel;
  uint32_t run_left; /* elements left in the current channel run */
  uint32_t bad;      /* nonzero once an index fell outside its table */
} tswap_palette_decoder;

void tswap_palette_begin(tswap_palette_decoder* d, const tswap_palette* p, int8_t* tables, int8_t* out);
int tswap_palette_feed(tswap_palette_decoder* d, const uint8_t* data, uint32_t len);
/* TSWAP_OK when every byte came, every index was inside its table and the padding bits are zero. */
int tswap_palette_end(const tswap_palette_decoder* d);

/* Decode an entry held in memory (`stored`: header included, size checked by tswap_palette_parse).
 * In place is allowed when every element's index byte lies at or after the byte the element is
 * written to: `out` <= `stored` and stored + 24 + table_bytes + index_bytes >= out + count + 1
 * (the entry ends at least one byte past the decoded elements; the bytes are read in order, each
 * before the elements it holds are written; the tables are copied to `tables` first). */
int tswap_palette_decode(const tswap_palette* p, const uint8_t* stored, int8_t* tables, int8_t* out);

/* Read segment `id`'s header from flash and parse it (the whole segment is the encoded entry). */
int tswap_palette_open(tswap_image* img, uint32_t id, uint32_t expect_count, tswap_palette* out);

/* The same for an entry of `stored_size` bytes at the start of segment `id` (other bytes follow it,
 * e.g. a tile's raw bias). */
int tswap_palette_open_entry(tswap_image* img, uint32_t id, uint32_t stored_size, uint32_t expect_count,
                             tswap_palette* out);

/* Blocking load of encoded segment `id` (parsed into `p` by tswap_palette_open) decoded into `dst`
 * (p->count bytes), reading through `chunk` (chunk_len >= 24 bytes, aligned as the driver needs;
 * chunk_len a multiple of its alignment); `tables` holds p->table_bytes. With `verify_crc` the CRC32
 * of the stored bytes is checked. The header is read again and must be the one parsed. */
int tswap_load_palette(tswap_image* img, uint32_t id, const tswap_palette* p, int8_t* dst, int8_t* tables,
                       uint8_t* chunk, uint32_t chunk_len, int verify_crc);

/* Prefetching encoded segment `id` (parsed into `p`) straight into the tensor it decodes to (`dst`,
 * p->count bytes): start reads all but its last tswap_palette_tail_bytes() bytes (DMA, when the
 * driver has start/poll) to the end of `dst`, aligned down for the driver; finish waits, reads the
 * tail into `tail` (blocking), checks the CRC32 of the stored bytes when asked and the header against
 * `p`, and decodes in place, the tail last. The tail, 7 (align - 1) + 16 bytes plus what aligns its
 * flash address (at most 8 align + 15), holds the indices of the last elements, which decoding in
 * place would otherwise write over before reading. Needs a segment no larger than the tensor and
 * at least 24 bytes longer than the tail (else TSWAP_ERR_ENCODING); 0 when it is not. */
uint32_t tswap_palette_tail_bytes(const tswap_image* img, uint32_t id);
/* TSWAP_OK when segment `id` (parsed into `p`) can be prefetched so (what start and finish check). */
int tswap_palette_prefetch_check(const tswap_image* img, uint32_t id, const tswap_palette* p);
int tswap_load_palette_start(tswap_image* img, uint32_t id, const tswap_palette* p, int8_t* dst);
int tswap_load_palette_finish(tswap_image* img, uint32_t id, const tswap_palette* p, int8_t* dst, int8_t* tables,
                              uint8_t* tail, int verify_crc);

/* A short English description of a tswap_status value. */
const char* tswap_strerror(int status);

#ifdef __cplusplus
}
#endif

#endif /* TSWAP_MICRO_H_ */
