#include "tswap_crc32_fast.h"

#include <pthread.h>
#include <string.h>

#include "../common/tswap_crc32.h"

static uint32_t g_table[8][256];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* Tables derived from the shared byte-wise CRC: g_table[0][b] is the CRC register after one byte. */
static void init_tables(void) {
  for (uint32_t b = 0; b < 256; ++b) {
    uint8_t byte = (uint8_t)b;
    /* tswap_crc32_update(~0 pre/post inverted); undo the inversions to get the raw table entry */
    g_table[0][b] = ~tswap_crc32_update(0xFFFFFFFFu, &byte, 1);
  }
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = g_table[0][b];
    for (int k = 1; k < 8; ++k) {
      c = g_table[0][c & 0xFFu] ^ (c >> 8);
      g_table[k][b] = c;
    }
  }
}

uint32_t tswap_crc32_fast(uint32_t crc, const void* data, size_t len) {
  pthread_once(&g_once, init_tables);
  const uint8_t* p = (const uint8_t*)data;
  uint32_t c = ~crc;
  while (len && ((uintptr_t)p & 7u)) {
    c = g_table[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
    --len;
  }
  while (len >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= c; /* little-endian hosts only (x86-64, AArch64) */
    c = g_table[7][lo & 0xFFu] ^ g_table[6][(lo >> 8) & 0xFFu] ^ g_table[5][(lo >> 16) & 0xFFu] ^
        g_table[4][lo >> 24] ^ g_table[3][hi & 0xFFu] ^ g_table[2][(hi >> 8) & 0xFFu] ^
        g_table[1][(hi >> 16) & 0xFFu] ^ g_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--) c = g_table[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
  return ~c;
}
