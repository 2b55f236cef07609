#include "tswap_crc32_fast.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TSWAP_HAVE_PCLMUL 1
#include <immintrin.h>
#endif

#include "../common/tswap_crc32.h"

static uint32_t g_table[8][256];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
#ifdef TSWAP_HAVE_PCLMUL
static int g_pclmul;
#endif

/* Tables derived from the shared byte-wise CRC: g_table[0][b] is the CRC register after one byte. */
static void init_tables(void) {
#ifdef TSWAP_HAVE_PCLMUL
  __builtin_cpu_init();
  g_pclmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1") &&
             getenv("TFLM_SWAP_NO_PCLMUL") == NULL;
#endif
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

#ifdef TSWAP_HAVE_PCLMUL
/* Carry-less multiplication folding (Gopal et al., "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction", Intel 2009) for the reflected CRC-32 polynomial; len >= 64, a multiple of
 * 16; `c` is the raw (pre-inverted) register. The constants are x^(k) mod P(x) for the fold distances
 * and the Barrett reduction pair, as published in the paper. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_pclmul(uint32_t c, const uint8_t* buf, size_t len) {
  static const uint64_t k1k2[2] __attribute__((aligned(16))) = {0x0154442bd4ull, 0x01c6e41596ull};
  static const uint64_t k3k4[2] __attribute__((aligned(16))) = {0x01751997d0ull, 0x00ccaa009eull};
  static const uint64_t k5k0[2] __attribute__((aligned(16))) = {0x0163cd6124ull, 0x0000000000ull};
  static const uint64_t poly[2] __attribute__((aligned(16))) = {0x01db710641ull, 0x01f7011641ull};
  __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8;
  x1 = _mm_loadu_si128((const __m128i*)(buf + 0x00));
  x2 = _mm_loadu_si128((const __m128i*)(buf + 0x10));
  x3 = _mm_loadu_si128((const __m128i*)(buf + 0x20));
  x4 = _mm_loadu_si128((const __m128i*)(buf + 0x30));
  x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)c));
  x0 = _mm_load_si128((const __m128i*)k1k2);
  buf += 64;
  len -= 64;
  while (len >= 64) { /* four parallel folds of 128 bits by 512 bits */
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
    x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
    x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
    x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), _mm_loadu_si128((const __m128i*)(buf + 0x00)));
    x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), _mm_loadu_si128((const __m128i*)(buf + 0x10)));
    x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), _mm_loadu_si128((const __m128i*)(buf + 0x20)));
    x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), _mm_loadu_si128((const __m128i*)(buf + 0x30)));
    buf += 64;
    len -= 64;
  }
  x0 = _mm_load_si128((const __m128i*)k3k4); /* fold the four lanes into one */
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
  while (len >= 16) {
    x2 = _mm_loadu_si128((const __m128i*)buf);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    buf += 16;
    len -= 16;
  }
  x2 = _mm_clmulepi64_si128(x1, x0, 0x10); /* 128 -> 64 bits */
  x3 = _mm_setr_epi32(~0, 0, ~0, 0);
  x1 = _mm_srli_si128(x1, 8);
  x1 = _mm_xor_si128(x1, x2);
  x0 = _mm_loadl_epi64((const __m128i*)k5k0);
  x2 = _mm_srli_si128(x1, 4);
  x1 = _mm_and_si128(x1, x3);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  x0 = _mm_load_si128((const __m128i*)poly); /* Barrett reduction to 32 bits */
  x2 = _mm_and_si128(x1, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
  x2 = _mm_and_si128(x2, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

uint32_t tswap_crc32_fast(uint32_t crc, const void* data, size_t len) {
  pthread_once(&g_once, init_tables);
  const uint8_t* p = (const uint8_t*)data;
  uint32_t c = ~crc;
#ifdef TSWAP_HAVE_PCLMUL
  if (g_pclmul && len >= 64) {
    size_t chunk = len & ~(size_t)15;
    c = crc_pclmul(c, p, chunk);
    p += chunk;
    len -= chunk;
  }
#endif
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
