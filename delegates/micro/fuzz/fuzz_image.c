/* libFuzzer target: arbitrary bytes as a flash image (version 1 or 2) and as a cascade container
 * (version 3). Opening must never read out of bounds, every segment an accepted image lists must load
 * (with its CRC checked) within the flash, every tile-table entry it lists must read back
 * consistent, and every segment whose header parses as a palette entry must decode (or be refused)
 * within its buffers; every member an accepted container lists must read back inside it, and its
 * image is opened and checked the same way.
 * Build: clang -fsanitize=fuzzer,address,undefined -I.. -I../../common fuzz_image.c ../tswap_micro.c
 *        ../../common/tswap_crc32.c */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tswap_micro.h"

#define MAX_SEGMENTS 64u
#define MAX_LOAD 8192u

static void check_image(const tswap_flash* flash, uint32_t flash_size);

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tswap_flash flash, member_flash;
  tswap_memory_flash mem;
  tswap_container container;
  tswap_member member;
  uint32_t i;
  if (size > UINT32_MAX) return 0;
  tswap_flash_from_memory(&flash, &mem, data, (uint32_t)size);
  flash.align = size > 0 ? (uint32_t)1u << (data[size - 1] & 3u) : 1u;
  check_image(&flash, (uint32_t)size);
  if (tswap_container_open(&container, &flash) != TSWAP_OK) return 0;
  if (container.image_size > size) abort();
  for (i = 0; i < container.member_count && i < MAX_SEGMENTS; ++i) { /* every entry was checked at open */
    if (tswap_container_member(&container, i, &member) != TSWAP_OK) abort();
    if (member.offset + (uint64_t)member.size > container.image_size || member.name[0] == '\0') abort();
    if (tswap_member_flash(&container, &member, &member_flash) != TSWAP_OK) abort();
    check_image(&member_flash, member.size);
  }
  if (tswap_container_member(&container, container.member_count, &member) != TSWAP_ERR_MEMBER) abort();
  return 0;
}

/* Open `flash` as one model's image; when it is accepted, load and check everything it lists. */
static void check_image(const tswap_flash* flash, uint32_t flash_size) {
  static tswap_segment table[MAX_SEGMENTS];
  static uint8_t dst[MAX_LOAD];
  static int8_t decoded[MAX_LOAD], tables[MAX_LOAD];
  static uint8_t chunk[64];
  static uint8_t tail[8 * 8 + 15]; /* tswap_palette_tail_bytes at the fuzzer's largest alignment, 8 */
  tswap_palette palette;
  uint8_t scratch[33];
  tswap_image image;
  tswap_tile tile;
  uint32_t i;
  int rc;
  if (tswap_image_open(&image, flash, table, MAX_SEGMENTS) != TSWAP_OK) return;
  const uint32_t size = flash_size;
  if (image.image_size > size) abort(); /* accepted an image larger than the flash */
  for (i = 0; i < image.segment_count; ++i) {
    if (table[i].offset + (uint64_t)table[i].size > image.image_size) abort();
    if (table[i].size > MAX_LOAD) continue;
    rc = tswap_load(&image, i, 0, dst, table[i].size, 1);
    if (rc != TSWAP_OK && rc != TSWAP_ERR_CRC && rc != TSWAP_ERR_ALIGN) abort();
    if (table[i].size >= TSWAP_PALETTE_HEADER_BYTES && rc == TSWAP_OK) { /* its own count as the tensor's */
      uint32_t count = (uint32_t)dst[8] | ((uint32_t)dst[9] << 8) | ((uint32_t)dst[10] << 16) | ((uint32_t)dst[11] << 24);
      if (tswap_palette_open(&image, i, count, &palette) != TSWAP_OK) continue;
      if (palette.count > MAX_LOAD || palette.table_bytes > MAX_LOAD) continue;
      rc = tswap_load_palette(&image, i, &palette, decoded, tables, chunk, sizeof(chunk), 1);
      if (rc != TSWAP_OK && rc != TSWAP_ERR_ENCODING && rc != TSWAP_ERR_ALIGN) abort();
      /* prefetched: stored bytes to the tensor's end, decoded in place (the tail apart) */
      rc = tswap_load_palette_start(&image, i, &palette, decoded);
      if (rc == TSWAP_OK) rc = tswap_load_palette_finish(&image, i, &palette, decoded, tables, tail, 1);
      if (rc != TSWAP_OK && rc != TSWAP_ERR_ENCODING && rc != TSWAP_ERR_ALIGN && rc != TSWAP_ERR_CRC) abort();
      if (image.pending) abort(); /* finish always ends the transfer start began */
    }
  }
  for (i = 0; i < image.tile_count && i < MAX_SEGMENTS; ++i) { /* every entry was checked at open */
    if (tswap_tile_get(&image, i, &tile) != TSWAP_OK) abort();
    if (tile.tiles == 0u || tile.first_segment + (uint64_t)tile.tiles > image.segment_count) abort();
    if (tile.channels > (uint64_t)tile.tiles * tile.tile_channels) abort();
  }
  if (tswap_tile_get(&image, image.tile_count, &tile) != TSWAP_ERR_TILE) abort();
  (void)tswap_image_verify(&image, scratch, sizeof(scratch));
  rc = tswap_check_request(&image, image.segment_count, 0, 0, NULL);
  if (rc != TSWAP_ERR_SEGMENT_ID) abort();
}
