/* Fast CRC-32 (the same function as ../common/tswap_crc32.h and zlib.crc32), used by the LiteRT stage
 * runtime (tflm_swap_crc32 through ctypes, the pager's page-ins) and to check every tile the delegate
 * streams: PCLMULQDQ folding on x86-64 CPUs that have it (set TFLM_SWAP_NO_PCLMUL=1 to disable),
 * else slice-by-8 tables derived from the shared byte-wise CRC. */
#ifndef TSWAP_CRC32_FAST_H_
#define TSWAP_CRC32_FAST_H_

#include <stddef.h>
#include <stdint.h>

uint32_t tswap_crc32_fast(uint32_t crc, const void* data, size_t len);

#endif /* TSWAP_CRC32_FAST_H_ */
