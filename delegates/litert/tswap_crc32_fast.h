/* Slice-by-8 CRC-32 (same function as ../common/tswap_crc32.h and zlib.crc32, about 5x faster than
 * the byte-wise table), used to check every streamed tile. */
#ifndef TSWAP_CRC32_FAST_H_
#define TSWAP_CRC32_FAST_H_

#include <stddef.h>
#include <stdint.h>

uint32_t tswap_crc32_fast(uint32_t crc, const void* data, size_t len);

#endif /* TSWAP_CRC32_FAST_H_ */
