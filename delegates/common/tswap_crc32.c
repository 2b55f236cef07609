/* Table-driven CRC-32, one byte per step; the table is computed at compile time's worth of
 * constants below so the code needs no initialisation call and no writable memory. */
#include "tswap_crc32.h"

#define TSWAP_POLY 0xEDB88320u

#define R1(c) (((c) & 1u) ? (((c) >> 1) ^ TSWAP_POLY) : ((c) >> 1))
#define R8(c) R1(R1(R1(R1(R1(R1(R1(R1(c))))))))
#define E4(i) R8((uint32_t)(i)), R8((uint32_t)(i) + 1u), R8((uint32_t)(i) + 2u), R8((uint32_t)(i) + 3u)
#define E16(i) E4(i), E4((i) + 4), E4((i) + 8), E4((i) + 12)
#define E64(i) E16(i), E16((i) + 16), E16((i) + 32), E16((i) + 48)

static const uint32_t kTable[256] = {E64(0), E64(64), E64(128), E64(192)};

uint32_t tswap_crc32_update(uint32_t crc, const void* data, size_t len) {
  const uint8_t* p = (const uint8_t*)data;
  crc = ~crc;
  while (len--) crc = kTable[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

uint32_t tswap_crc32(const void* data, size_t len) { return tswap_crc32_update(0u, data, len); }
