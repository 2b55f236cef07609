/* tflm_swap micro core: see tswap_micro.h. C99, no heap, no global mutable state. */
#include "tswap_micro.h"

#include <string.h>

#include "tswap_crc32.h"

static uint32_t get_u32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int is_pow2(uint32_t v) { return v != 0u && (v & (v - 1u)) == 0u; }

static uint32_t driver_align(const tswap_flash* flash) { return flash->align > 1u ? flash->align : 1u; }

static int flash_read(const tswap_flash* flash, uint32_t offset, void* dst, uint32_t len) {
  if (flash->size != 0u && (offset > flash->size || len > flash->size - offset)) return TSWAP_ERR_TRUNCATED;
  if (offset > UINT32_MAX - flash->base) return TSWAP_ERR_RANGE;
  return flash->read(flash->ctx, flash->base + offset, dst, len) == 0 ? TSWAP_OK : TSWAP_ERR_FLASH;
}

/* The header fields both versions share, read by check_header. */
typedef struct header_info {
  uint32_t size;       /* header_size: header + segment table + tile table */
  uint32_t base;       /* header bytes before the segment table: 32 (v1) or 48 (v2) */
  uint32_t segments;
  uint32_t tiles;
  uint32_t image_size;
  uint32_t alignment;
  uint32_t table_crc;
} header_info;

static int check_header(const uint8_t* h, const tswap_flash* flash, uint32_t cap, header_info* out) {
  uint32_t version, n, m, entries;
  if (memcmp(h, TSWAP_IMAGE_MAGIC, 4) != 0) return TSWAP_ERR_MAGIC;
  version = get_u32(h + 4);
  if (version == TSWAP_IMAGE_VERSION_MEMBERS) return TSWAP_ERR_CONTAINER;
  if (version != TSWAP_IMAGE_VERSION && version != TSWAP_IMAGE_VERSION_TILES) return TSWAP_ERR_VERSION;
  out->base = version == TSWAP_IMAGE_VERSION ? TSWAP_HEADER_BYTES : TSWAP_HEADER_BYTES_V2;
  if (tswap_crc32(h, out->base - 4u) != get_u32(h + out->base - 4u)) return TSWAP_ERR_HEADER_CRC;
  if (version == TSWAP_IMAGE_VERSION_TILES && (get_u32(h + 32) | get_u32(h + 36) | get_u32(h + 40)) != 0u) {
    return TSWAP_ERR_TABLE;
  }
  n = get_u32(h + 12);
  m = version == TSWAP_IMAGE_VERSION ? 0u : get_u32(h + 28);
  out->size = get_u32(h + 8);
  out->image_size = get_u32(h + 16);
  out->alignment = get_u32(h + 20);
  out->table_crc = get_u32(h + 24);
  if (n > (UINT32_MAX - out->base) / TSWAP_ENTRY_BYTES) return TSWAP_ERR_TABLE;
  entries = (UINT32_MAX - out->base) / TSWAP_ENTRY_BYTES - n;
  if (m > entries) return TSWAP_ERR_TABLE;
  if (out->size != out->base + (n + m) * TSWAP_ENTRY_BYTES || out->image_size < out->size) return TSWAP_ERR_TABLE;
  if (!is_pow2(out->alignment) || out->alignment < driver_align(flash)) return TSWAP_ERR_ALIGN;
  if (flash->size != 0u && out->image_size > flash->size) return TSWAP_ERR_TRUNCATED;
  if (n > cap) return TSWAP_ERR_CAPACITY;
  out->segments = n;
  out->tiles = m;
  return TSWAP_OK;
}

static int check_entry(const uint8_t* e, uint32_t prev_end, uint32_t image_size, uint32_t alignment,
                       tswap_segment* out) {
  uint32_t offset = get_u32(e), size = get_u32(e + 4);
  if (get_u32(e + 12) != 0u) return TSWAP_ERR_TABLE;
  if (offset % alignment != 0u) return TSWAP_ERR_ALIGN;
  if (offset < prev_end || offset > image_size || size > image_size - offset) return TSWAP_ERR_TABLE;
  out->offset = offset;
  out->size = size;
  out->crc32 = get_u32(e + 8);
  return TSWAP_OK;
}

/* A tile entry is consistent: at least one tile, its segments exist, and `channels` needs exactly
 * `tiles` tiles of `tile_channels`. */
static int check_tile(const uint8_t* e, uint32_t segment_count, tswap_tile* out) {
  out->first_segment = get_u32(e);
  out->tiles = get_u32(e + 4);
  out->channels = get_u32(e + 8);
  out->tile_channels = get_u32(e + 12);
  if (out->tiles == 0u || out->tile_channels == 0u) return TSWAP_ERR_TILE;
  if (out->first_segment > segment_count || out->tiles > segment_count - out->first_segment) return TSWAP_ERR_TILE;
  if (out->tiles > UINT32_MAX / out->tile_channels) return TSWAP_ERR_TILE;
  if (out->channels > out->tiles * out->tile_channels) return TSWAP_ERR_TILE;
  if (out->channels <= (out->tiles - 1u) * out->tile_channels) return TSWAP_ERR_TILE;
  return TSWAP_OK;
}

int tswap_image_open(tswap_image* img, const tswap_flash* flash, tswap_segment* table, uint32_t cap) {
  uint8_t header[TSWAP_HEADER_BYTES_V2];
  uint8_t entry[TSWAP_ENTRY_BYTES];
  header_info h;
  tswap_tile tile;
  uint32_t i, crc = 0, end, at;
  int rc;
  if (img == NULL || flash == NULL || flash->read == NULL || (table == NULL && cap != 0u)) return TSWAP_ERR_ARG;
  if ((flash->start == NULL) != (flash->poll == NULL) || (flash->align > 1u && !is_pow2(flash->align))) {
    return TSWAP_ERR_ARG;
  }
  memset(img, 0, sizeof(*img));
  if ((rc = flash_read(flash, 0, header, TSWAP_HEADER_BYTES)) != TSWAP_OK) return rc;
  if (get_u32(header + 4) == TSWAP_IMAGE_VERSION_TILES &&
      (rc = flash_read(flash, TSWAP_HEADER_BYTES, header + TSWAP_HEADER_BYTES,
                       TSWAP_HEADER_BYTES_V2 - TSWAP_HEADER_BYTES)) != TSWAP_OK) {
    return rc;
  }
  if ((rc = check_header(header, flash, cap, &h)) != TSWAP_OK) return rc;
  end = h.size;
  for (i = 0; i < h.segments + h.tiles; ++i) {
    at = h.base + i * TSWAP_ENTRY_BYTES;
    if ((rc = flash_read(flash, at, entry, sizeof(entry))) != TSWAP_OK) return rc;
    crc = tswap_crc32_update(crc, entry, sizeof(entry));
    if (i < h.segments) {
      if ((rc = check_entry(entry, end, h.image_size, h.alignment, &table[i])) != TSWAP_OK) return rc;
      end = table[i].offset + table[i].size;
    } else if ((rc = check_tile(entry, h.segments, &tile)) != TSWAP_OK) {
      return rc;
    }
  }
  if (crc != h.table_crc) return TSWAP_ERR_HEADER_CRC;
  img->flash = flash;
  img->segments = table;
  img->segment_count = h.segments;
  img->image_size = h.image_size;
  img->alignment = h.alignment;
  img->tile_count = h.tiles;
  img->tile_table = h.base + h.segments * TSWAP_ENTRY_BYTES;
  return TSWAP_OK;
}

int tswap_tile_get(const tswap_image* img, uint32_t id, tswap_tile* out) {
  uint8_t entry[TSWAP_TILE_BYTES];
  int rc;
  if (img == NULL || img->flash == NULL || out == NULL) return TSWAP_ERR_ARG;
  if (id >= img->tile_count) return TSWAP_ERR_TILE;
  if ((rc = flash_read(img->flash, img->tile_table + id * TSWAP_TILE_BYTES, entry, sizeof(entry))) != TSWAP_OK) {
    return rc;
  }
  return check_tile(entry, img->segment_count, out);
}

int tswap_check_request(const tswap_image* img, uint32_t id, uint32_t offset, uint32_t len, const void* dst) {
  uint32_t a;
  if (img == NULL || img->flash == NULL) return TSWAP_ERR_ARG;
  if (id >= img->segment_count) return TSWAP_ERR_SEGMENT_ID;
  if (offset > img->segments[id].size || len > img->segments[id].size - offset) return TSWAP_ERR_RANGE;
  a = driver_align(img->flash);
  if (((img->flash->base + img->segments[id].offset + offset) & (a - 1u)) != 0u) return TSWAP_ERR_ALIGN;
  if (dst != NULL && ((uintptr_t)dst & (uintptr_t)(a - 1u)) != 0u) return TSWAP_ERR_ALIGN;
  return TSWAP_OK;
}

int tswap_load(tswap_image* img, uint32_t id, uint32_t offset, void* dst, uint32_t len, int verify_crc) {
  int rc = tswap_check_request(img, id, offset, len, dst);
  if (rc != TSWAP_OK) return rc;
  if (dst == NULL && len != 0u) return TSWAP_ERR_ARG;
  if (img->pending) return TSWAP_ERR_BUSY;
  if (verify_crc && (offset != 0u || len != img->segments[id].size)) return TSWAP_ERR_RANGE;
  if (len == 0u) return TSWAP_OK;
  if ((rc = flash_read(img->flash, img->segments[id].offset + offset, dst, len)) != TSWAP_OK) return rc;
  img->bytes_read += len;
  if (verify_crc && tswap_crc32(dst, len) != img->segments[id].crc32) return TSWAP_ERR_CRC;
  return TSWAP_OK;
}

int tswap_load_start(tswap_image* img, uint32_t id, uint32_t offset, void* dst, uint32_t len) {
  int rc = tswap_check_request(img, id, offset, len, dst);
  const tswap_flash* f;
  uint32_t addr;
  if (rc != TSWAP_OK) return rc;
  if (dst == NULL && len != 0u) return TSWAP_ERR_ARG;
  if (img->pending) return TSWAP_ERR_BUSY;
  f = img->flash;
  if (f->start == NULL || len == 0u) return tswap_load(img, id, offset, dst, len, 0);
  addr = img->segments[id].offset + offset;
  if (f->size != 0u && (addr > f->size || len > f->size - addr)) return TSWAP_ERR_TRUNCATED;
  if (addr > UINT32_MAX - f->base) return TSWAP_ERR_RANGE;
  if (f->start(f->ctx, f->base + addr, dst, len) != 0) return TSWAP_ERR_FLASH;
  img->pending = 1u;
  img->bytes_read += len;
  return TSWAP_OK;
}

int tswap_load_wait(tswap_image* img) {
  int done;
  if (img == NULL || img->flash == NULL) return TSWAP_ERR_ARG;
  if (!img->pending) return img->flash->start == NULL ? TSWAP_OK : TSWAP_ERR_IDLE;
  do {
    done = img->flash->poll(img->flash->ctx);
  } while (done == 0);
  img->pending = 0u;
  return done > 0 ? TSWAP_OK : TSWAP_ERR_FLASH;
}

int tswap_image_verify(tswap_image* img, uint8_t* scratch, uint32_t scratch_len) {
  uint32_t i, done, chunk, crc;
  int rc;
  if (img == NULL || img->flash == NULL || scratch == NULL || scratch_len == 0u) return TSWAP_ERR_ARG;
  for (i = 0; i < img->segment_count; ++i) {
    crc = 0;
    for (done = 0; done < img->segments[i].size; done += chunk) {
      chunk = img->segments[i].size - done < scratch_len ? img->segments[i].size - done : scratch_len;
      if ((rc = flash_read(img->flash, img->segments[i].offset + done, scratch, chunk)) != TSWAP_OK) return rc;
      crc = tswap_crc32_update(crc, scratch, chunk);
    }
    if (crc != img->segments[i].crc32) return TSWAP_ERR_CRC;
  }
  return TSWAP_OK;
}

/* A member name: 1..15 characters [A-Za-z0-9_], then NULs up to 16 bytes. */
static int check_name(const char* name) {
  uint32_t i;
  int ended = 0;
  for (i = 0; i < TSWAP_MEMBER_NAME_BYTES; ++i) {
    const char ch = name[i];
    if (ended || ch == '\0') {
      if (ch != '\0' || i == 0u) return TSWAP_ERR_MEMBER;
      ended = 1;
    } else if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_')) {
      return TSWAP_ERR_MEMBER;
    }
  }
  return ended ? TSWAP_OK : TSWAP_ERR_MEMBER;
}

/* One member-table entry: aligned, at or after `prev_end`, inside the container, at least a header. */
static int check_member(const uint8_t* e, uint32_t prev_end, const tswap_container* c, tswap_member* out) {
  out->offset = get_u32(e);
  out->size = get_u32(e + 4);
  out->graph_crc32 = get_u32(e + 8);
  out->graph_size = get_u32(e + 12);
  memcpy(out->name, e + 16, TSWAP_MEMBER_NAME_BYTES);
  if (out->offset % c->alignment != 0u) return TSWAP_ERR_ALIGN;
  if (out->offset < prev_end || out->offset > c->image_size || out->size > c->image_size - out->offset) {
    return TSWAP_ERR_MEMBER;
  }
  if (out->size < TSWAP_HEADER_BYTES) return TSWAP_ERR_MEMBER;
  return check_name(out->name);
}

static uint32_t container_header_size(uint32_t members) {
  return TSWAP_HEADER_BYTES_V2 + members * TSWAP_MEMBER_BYTES;
}

int tswap_container_open(tswap_container* c, const tswap_flash* flash) {
  uint8_t h[TSWAP_HEADER_BYTES_V2];
  uint8_t entry[TSWAP_MEMBER_BYTES];
  tswap_member member;
  uint32_t i, k, crc = 0, end;
  int rc;
  if (c == NULL || flash == NULL || flash->read == NULL) return TSWAP_ERR_ARG;
  if ((flash->start == NULL) != (flash->poll == NULL) || (flash->align > 1u && !is_pow2(flash->align))) {
    return TSWAP_ERR_ARG;
  }
  memset(c, 0, sizeof(*c));
  if ((rc = flash_read(flash, 0, h, sizeof(h))) != TSWAP_OK) return rc;
  if (memcmp(h, TSWAP_IMAGE_MAGIC, 4) != 0) return TSWAP_ERR_MAGIC;
  if (get_u32(h + 4) != TSWAP_IMAGE_VERSION_MEMBERS) return TSWAP_ERR_VERSION;
  if (tswap_crc32(h, TSWAP_HEADER_BYTES_V2 - 4u) != get_u32(h + TSWAP_HEADER_BYTES_V2 - 4u)) return TSWAP_ERR_HEADER_CRC;
  if ((get_u32(h + 28) | get_u32(h + 32) | get_u32(h + 36) | get_u32(h + 40)) != 0u) return TSWAP_ERR_TABLE;
  k = get_u32(h + 12);
  c->image_size = get_u32(h + 16);
  c->alignment = get_u32(h + 20);
  if (k > (UINT32_MAX - TSWAP_HEADER_BYTES_V2) / TSWAP_MEMBER_BYTES) return TSWAP_ERR_TABLE;
  if (get_u32(h + 8) != container_header_size(k) || c->image_size < container_header_size(k)) return TSWAP_ERR_TABLE;
  if (!is_pow2(c->alignment) || c->alignment < driver_align(flash)) return TSWAP_ERR_ALIGN;
  if (flash->size != 0u && c->image_size > flash->size) return TSWAP_ERR_TRUNCATED;
  end = container_header_size(k);
  for (i = 0; i < k; ++i) {
    if ((rc = flash_read(flash, TSWAP_HEADER_BYTES_V2 + i * TSWAP_MEMBER_BYTES, entry, sizeof(entry))) != TSWAP_OK) {
      return rc;
    }
    crc = tswap_crc32_update(crc, entry, sizeof(entry));
    if ((rc = check_member(entry, end, c, &member)) != TSWAP_OK) return rc;
    end = member.offset + member.size;
  }
  if (crc != get_u32(h + 24)) return TSWAP_ERR_HEADER_CRC;
  c->flash = flash;
  c->member_count = k;
  return TSWAP_OK;
}

int tswap_container_member(const tswap_container* c, uint32_t index, tswap_member* out) {
  uint8_t entry[TSWAP_MEMBER_BYTES];
  int rc;
  if (c == NULL || c->flash == NULL || out == NULL) return TSWAP_ERR_ARG;
  if (index >= c->member_count) return TSWAP_ERR_MEMBER;
  rc = flash_read(c->flash, TSWAP_HEADER_BYTES_V2 + index * TSWAP_MEMBER_BYTES, entry, sizeof(entry));
  if (rc != TSWAP_OK) return rc;
  return check_member(entry, container_header_size(c->member_count), c, out);
}

int tswap_member_flash(const tswap_container* c, const tswap_member* member, tswap_flash* out) {
  if (c == NULL || c->flash == NULL || member == NULL || out == NULL) return TSWAP_ERR_ARG;
  if (member->offset > c->image_size || member->size > c->image_size - member->offset) return TSWAP_ERR_MEMBER;
  if (member->offset > UINT32_MAX - c->flash->base) return TSWAP_ERR_RANGE;
  *out = *c->flash;
  out->base = c->flash->base + member->offset;
  out->size = member->size;
  return TSWAP_OK;
}

static int memory_read(void* ctx, uint32_t addr, void* dst, uint32_t len) {
  const tswap_memory_flash* mem = (const tswap_memory_flash*)ctx;
  if (addr > mem->len || len > mem->len - addr) return -1;
  if (len != 0u) memcpy(dst, mem->data + addr, len);
  return 0;
}

void tswap_flash_from_memory(tswap_flash* flash, tswap_memory_flash* mem, const void* data, uint32_t len) {
  mem->data = (const uint8_t*)data;
  mem->len = data == NULL ? 0u : len;
  memset(flash, 0, sizeof(*flash));
  flash->read = memory_read;
  flash->ctx = mem;
  flash->size = mem->len;
}

/* ------------------------------------------------------------------------------ palette segments */
int tswap_palette_parse(const uint8_t* h, uint32_t stored_size, uint32_t expect_count, tswap_palette* out) {
  uint32_t bits, table_len, count, channels, inner;
  uint64_t index_bits, size;
  if (h == NULL || out == NULL) return TSWAP_ERR_ARG;
  if (stored_size < TSWAP_PALETTE_HEADER_BYTES || memcmp(h, TSWAP_PALETTE_MAGIC, 4) != 0) return TSWAP_ERR_ENCODING;
  bits = h[5];
  table_len = (uint32_t)h[6] | ((uint32_t)h[7] << 8);
  count = get_u32(h + 8);
  channels = get_u32(h + 12);
  inner = get_u32(h + 16);
  if (h[4] != TSWAP_PALETTE_VERSION || bits < 1u || bits > 8u) return TSWAP_ERR_ENCODING;
  if (table_len < 1u || table_len > (1u << bits) || get_u32(h + 20) != 0u) return TSWAP_ERR_ENCODING;
  if (channels == 0u || inner == 0u || count == 0u || count != expect_count) return TSWAP_ERR_ENCODING;
  if ((uint64_t)channels * inner > count || count % (channels * inner) != 0u) return TSWAP_ERR_ENCODING;
  index_bits = (uint64_t)count * bits;
  size = TSWAP_PALETTE_HEADER_BYTES + (uint64_t)channels * table_len + (index_bits + 7u) / 8u;
  if (size != stored_size) return TSWAP_ERR_ENCODING;
  out->bits = bits;
  out->table_len = table_len;
  out->count = count;
  out->channels = channels;
  out->inner = inner;
  out->table_bytes = channels * table_len;
  out->index_bytes = (uint32_t)((index_bits + 7u) / 8u);
  return TSWAP_OK;
}

void tswap_palette_begin(tswap_palette_decoder* d, const tswap_palette* p, int8_t* tables, int8_t* out) {
  memset(d, 0, sizeof(*d));
  d->p = p;
  d->tables = tables;
  d->out = out;
  d->run_left = p->inner;
}

/* Eight elements from the `bits` bytes at `src` (the stream is at a byte boundary), element j looked
 * up in `table` + j * `stride` (stride 0: one channel's table; the table length: eight consecutive
 * channels), an index outside its table reading entry 0. Returns nonzero when one was outside.
 * Inlined per bit width (decode_group) so that the shifts are constants. */
static inline uint32_t decode_group_bits(const uint8_t* src, const uint32_t bits, uint32_t entries,
                                         const int8_t* table, uint32_t stride, int8_t* out) {
  const uint32_t mask = (1u << bits) - 1u;
  uint64_t v = 0u;
  uint32_t b, j, bad = 0u;
  for (b = 0; b < bits; ++b) v = (v << 8) | src[b];
  for (j = 0; j < 8u; ++j) {
    const uint32_t index = (uint32_t)(v >> (bits * (7u - j))) & mask;
    bad |= (uint32_t)(index >= entries);
    out[j] = table[j * stride + (index < entries ? index : 0u)];
  }
  return bad;
}

static uint32_t decode_group(const uint8_t* src, uint32_t bits, uint32_t entries, const int8_t* table,
                             uint32_t stride, int8_t* out) {
  switch (bits) {
    case 1u: return decode_group_bits(src, 1u, entries, table, stride, out);
    case 2u: return decode_group_bits(src, 2u, entries, table, stride, out);
    case 3u: return decode_group_bits(src, 3u, entries, table, stride, out);
    case 4u: return decode_group_bits(src, 4u, entries, table, stride, out);
    case 5u: return decode_group_bits(src, 5u, entries, table, stride, out);
    case 6u: return decode_group_bits(src, 6u, entries, table, stride, out);
    case 7u: return decode_group_bits(src, 7u, entries, table, stride, out);
    default: return decode_group_bits(src, 8u, entries, table, stride, out);
  }
}

/* A channel's run ended: the next channel (wrapping), a full run, its table. */
static const int8_t* next_run(const tswap_palette_decoder* d, uint32_t* channel, uint32_t* run_left) {
  *run_left = d->p->inner;
  *channel = *channel + 1u == d->p->channels ? 0u : *channel + 1u;
  return d->tables + *channel * d->p->table_len;
}

/* The decode loop: index bytes in, elements out. Validation is elsewhere: an index outside its table
 * reads entry 0 and marks the decoder bad (no branch on corrupt data). On a byte boundary: 4-bit
 * indices two per byte along a channel's run; other widths eight elements at a time (`bits` bytes)
 * while they share one channel's table or, channel innermost (inner 1), take eight consecutive
 * tables; otherwise (and at a piece's end) a byte at a time. */
static void decode_indices(tswap_palette_decoder* d, const uint8_t* src, uint32_t n) {
  const tswap_palette* p = d->p;
  const uint32_t bits = p->bits, mask = (1u << bits) - 1u, entries = p->table_len;
  uint32_t acc = d->acc, nbits = d->nbits, done = d->done, bad = d->bad;
  uint32_t channel = d->channel, run_left = d->run_left, k = 0u;
  const int8_t* table = d->tables + channel * entries;
  int8_t* out = d->out;
  while (k < n) {
    if (bits == 4u && nbits == 0u && run_left >= 2u) {
      /* 4-bit indices on a byte boundary: the run's whole bytes at once (two indices per byte) */
      uint32_t bytes = (run_left < p->count - done ? run_left : p->count - done) / 2u, b;
      if (bytes > n - k) bytes = n - k;
      for (b = 0; b < bytes; ++b) {
        const uint32_t hi = (uint32_t)src[k + b] >> 4, lo = (uint32_t)src[k + b] & 15u;
        bad |= (uint32_t)(hi >= entries) | (uint32_t)(lo >= entries);
        out[done + 2u * b] = table[hi < entries ? hi : 0u];
        out[done + 2u * b + 1u] = table[lo < entries ? lo : 0u];
      }
      done += 2u * bytes;
      run_left -= 2u * bytes;
      k += bytes;
      if (run_left == 0u) table = next_run(d, &channel, &run_left);
      if (bytes != 0u) continue;
    }
    while (nbits == 0u && n - k >= bits && p->count - done >= 8u && !(bits == 4u && run_left >= 2u)) {
      uint32_t stride = 0u;
      if (run_left >= 8u) {
        run_left -= 8u;
      } else if (p->inner == 1u && channel + 8u <= p->channels) {
        stride = entries;
        channel += 7u; /* the last of the eight; the run end below moves past it */
        run_left = 0u;
      } else {
        break;
      }
      bad |= decode_group(src + k, bits, entries, table, stride, out + done);
      done += 8u;
      k += bits;
      if (run_left == 0u) table = next_run(d, &channel, &run_left);
    }
    if (k == n) break;
    acc = (acc << 8) | src[k++];
    nbits += 8u;
    while (nbits >= bits && done < p->count) {
      uint32_t index;
      nbits -= bits;
      index = (acc >> nbits) & mask;
      bad |= (uint32_t)(index >= entries);
      out[done++] = table[index < entries ? index : 0u];
      if (--run_left == 0u) table = next_run(d, &channel, &run_left);
    }
    acc &= (1u << nbits) - 1u;
  }
  d->acc = acc;
  d->nbits = nbits;
  d->done = done;
  d->bad = bad;
  d->channel = channel;
  d->run_left = run_left;
}

int tswap_palette_feed(tswap_palette_decoder* d, const uint8_t* data, uint32_t len) {
  uint32_t take = 0u;
  if (d == NULL || d->p == NULL || (data == NULL && len != 0u)) return TSWAP_ERR_ARG;
  if (len > d->p->table_bytes + d->p->index_bytes - d->consumed) return TSWAP_ERR_ENCODING;
  if (d->consumed < d->p->table_bytes) {
    take = d->p->table_bytes - d->consumed < len ? d->p->table_bytes - d->consumed : len;
    memcpy(d->tables + d->consumed, data, take);
    d->consumed += take;
  }
  if (take < len) {
    decode_indices(d, data + take, len - take);
    d->consumed += len - take;
  }
  return TSWAP_OK;
}

int tswap_palette_end(const tswap_palette_decoder* d) {
  if (d == NULL || d->p == NULL) return TSWAP_ERR_ARG;
  if (d->consumed != d->p->table_bytes + d->p->index_bytes || d->done != d->p->count) return TSWAP_ERR_ENCODING;
  return d->bad != 0u || d->acc != 0u ? TSWAP_ERR_ENCODING : TSWAP_OK;
}

int tswap_palette_decode(const tswap_palette* p, const uint8_t* stored, int8_t* tables, int8_t* out) {
  tswap_palette_decoder d;
  int rc;
  if (p == NULL || stored == NULL || tables == NULL || out == NULL) return TSWAP_ERR_ARG;
  tswap_palette_begin(&d, p, tables, out);
  rc = tswap_palette_feed(&d, stored + TSWAP_PALETTE_HEADER_BYTES, p->table_bytes + p->index_bytes);
  return rc != TSWAP_OK ? rc : tswap_palette_end(&d);
}

int tswap_palette_open_entry(tswap_image* img, uint32_t id, uint32_t stored_size, uint32_t expect_count,
                             tswap_palette* out) {
  uint8_t header[TSWAP_PALETTE_HEADER_BYTES];
  int rc;
  if (img == NULL || img->flash == NULL || out == NULL) return TSWAP_ERR_ARG;
  if (id >= img->segment_count) return TSWAP_ERR_SEGMENT_ID;
  if (stored_size < TSWAP_PALETTE_HEADER_BYTES || stored_size > img->segments[id].size) return TSWAP_ERR_ENCODING;
  if (img->pending) return TSWAP_ERR_BUSY;
  /* the header is read bypassing the driver's alignment: it is 24 bytes on the stack */
  rc = flash_read(img->flash, img->segments[id].offset, header, TSWAP_PALETTE_HEADER_BYTES);
  if (rc != TSWAP_OK) return rc;
  return tswap_palette_parse(header, stored_size, expect_count, out);
}

int tswap_palette_open(tswap_image* img, uint32_t id, uint32_t expect_count, tswap_palette* out) {
  if (img == NULL || img->flash == NULL || out == NULL) return TSWAP_ERR_ARG;
  if (id >= img->segment_count) return TSWAP_ERR_SEGMENT_ID;
  return tswap_palette_open_entry(img, id, img->segments[id].size, expect_count, out);
}

int tswap_load_palette(tswap_image* img, uint32_t id, const tswap_palette* p, int8_t* dst, int8_t* tables,
                       uint8_t* chunk, uint32_t chunk_len, int verify_crc) {
  tswap_palette_decoder d;
  tswap_palette again;
  uint32_t offset = 0u, size, crc = 0u;
  int rc;
  if (img == NULL || img->flash == NULL || p == NULL || dst == NULL || tables == NULL || chunk == NULL) {
    return TSWAP_ERR_ARG;
  }
  if (id >= img->segment_count) return TSWAP_ERR_SEGMENT_ID;
  if (chunk_len < TSWAP_PALETTE_HEADER_BYTES || chunk_len % driver_align(img->flash) != 0u) return TSWAP_ERR_ALIGN;
  size = img->segments[id].size;
  tswap_palette_begin(&d, p, tables, dst);
  while (offset < size) {
    uint32_t len = size - offset < chunk_len ? size - offset : chunk_len;
    const uint8_t* data = chunk;
    if ((rc = tswap_load(img, id, offset, chunk, len, 0)) != TSWAP_OK) return rc;
    if (verify_crc) crc = tswap_crc32_update(crc, chunk, len);
    if (offset == 0u) {
      rc = tswap_palette_parse(chunk, size, p->count, &again);
      if (rc != TSWAP_OK || memcmp(&again, p, sizeof(again)) != 0) return TSWAP_ERR_ENCODING;
      data += TSWAP_PALETTE_HEADER_BYTES;
      len -= TSWAP_PALETTE_HEADER_BYTES;
      offset += TSWAP_PALETTE_HEADER_BYTES;
    }
    if ((rc = tswap_palette_feed(&d, data, len)) != TSWAP_OK) return rc;
    offset += len;
  }
  if (verify_crc && crc != img->segments[id].crc32) return TSWAP_ERR_CRC;
  return tswap_palette_end(&d);
}

/* ------------------------------------------------------------- prefetching an encoded segment */
uint32_t tswap_palette_tail_bytes(const tswap_image* img, uint32_t id) {
  uint32_t a, k, size;
  if (img == NULL || img->flash == NULL || id >= img->segment_count) return 0u;
  a = driver_align(img->flash);
  size = img->segments[id].size;
  /* 7 (a - 1) + 14 suffices for any bit width up to 7 (tswap_micro.h); the rest aligns the tail's
   * flash address */
  k = 7u * (a - 1u) + 16u;
  if (size < k) return 0u;
  return k + (size - k) % a;
}

/* Where the DMA part of segment `id` goes in the tensor: the end, aligned down for the driver. */
static int palette_prefetch_layout(const tswap_image* img, uint32_t id, const tswap_palette* p, uint32_t* at,
                                   uint32_t* head) {
  const uint32_t size = img->segments[id].size, tail = tswap_palette_tail_bytes(img, id);
  if (tail == 0u || size - tail < TSWAP_PALETTE_HEADER_BYTES || size > p->count) return TSWAP_ERR_ENCODING;
  *at = (p->count - size) & ~(driver_align(img->flash) - 1u);
  *head = size - tail;
  return TSWAP_OK;
}

int tswap_palette_prefetch_check(const tswap_image* img, uint32_t id, const tswap_palette* p) {
  uint32_t at, head;
  if (img == NULL || img->flash == NULL || p == NULL) return TSWAP_ERR_ARG;
  if (id >= img->segment_count) return TSWAP_ERR_SEGMENT_ID;
  return palette_prefetch_layout(img, id, p, &at, &head);
}

int tswap_load_palette_start(tswap_image* img, uint32_t id, const tswap_palette* p, int8_t* dst) {
  uint32_t at, head;
  int rc;
  if (img == NULL || img->flash == NULL || p == NULL || dst == NULL) return TSWAP_ERR_ARG;
  if (id >= img->segment_count) return TSWAP_ERR_SEGMENT_ID;
  if ((rc = palette_prefetch_layout(img, id, p, &at, &head)) != TSWAP_OK) return rc;
  return tswap_load_start(img, id, 0u, dst + at, head);
}

int tswap_load_palette_finish(tswap_image* img, uint32_t id, const tswap_palette* p, int8_t* dst, int8_t* tables,
                              uint8_t* tail, int verify_crc) {
  tswap_palette_decoder d;
  tswap_palette again;
  uint32_t at, head;
  const uint8_t* stored;
  int rc;
  if (img == NULL || img->flash == NULL || p == NULL || dst == NULL || tables == NULL || tail == NULL) {
    return TSWAP_ERR_ARG;
  }
  if (id >= img->segment_count) return TSWAP_ERR_SEGMENT_ID;
  if ((rc = palette_prefetch_layout(img, id, p, &at, &head)) != TSWAP_OK) return rc;
  if ((rc = tswap_load_wait(img)) != TSWAP_OK) return rc;
  if ((rc = tswap_load(img, id, head, tail, img->segments[id].size - head, 0)) != TSWAP_OK) return rc;
  stored = (const uint8_t*)dst + at;
  if (verify_crc && tswap_crc32_update(tswap_crc32(stored, head), tail, img->segments[id].size - head) !=
                        img->segments[id].crc32) {
    return TSWAP_ERR_CRC;
  }
  rc = tswap_palette_parse(stored, img->segments[id].size, p->count, &again);
  if (rc != TSWAP_OK || memcmp(&again, p, sizeof(again)) != 0) return TSWAP_ERR_ENCODING;
  tswap_palette_begin(&d, p, tables, dst);
  if ((rc = tswap_palette_feed(&d, stored + TSWAP_PALETTE_HEADER_BYTES, head - TSWAP_PALETTE_HEADER_BYTES)) != TSWAP_OK ||
      (rc = tswap_palette_feed(&d, tail, img->segments[id].size - head)) != TSWAP_OK) {
    return rc;
  }
  return tswap_palette_end(&d);
}

const char* tswap_strerror(int status) {
  switch (status) {
    case TSWAP_OK: return "ok";
    case TSWAP_ERR_ARG: return "invalid argument";
    case TSWAP_ERR_TRUNCATED: return "image truncated: larger than the flash holding it";
    case TSWAP_ERR_MAGIC: return "not a tflm_swap image (bad magic)";
    case TSWAP_ERR_VERSION: return "unsupported image version";
    case TSWAP_ERR_HEADER_CRC: return "image header or segment table CRC mismatch";
    case TSWAP_ERR_TABLE: return "inconsistent image header or segment table";
    case TSWAP_ERR_CAPACITY: return "more segments than the table storage holds";
    case TSWAP_ERR_SEGMENT_ID: return "segment id out of range";
    case TSWAP_ERR_RANGE: return "request outside the segment";
    case TSWAP_ERR_ALIGN: return "misaligned request, destination or image alignment";
    case TSWAP_ERR_FLASH: return "flash driver error";
    case TSWAP_ERR_CRC: return "segment CRC mismatch";
    case TSWAP_ERR_BUSY: return "a load is already in flight";
    case TSWAP_ERR_IDLE: return "no load in flight";
    case TSWAP_ERR_TILE: return "tile-table entry out of range or inconsistent";
    case TSWAP_ERR_MEMBER: return "member-table entry out of range or inconsistent";
    case TSWAP_ERR_CONTAINER: return "a cascade container, not one model's image (open a member)";
    case TSWAP_ERR_ENCODING: return "corrupt palette-encoded segment (header, sizes or an index outside its table)";
    default: return "unknown tswap status";
  }
}
