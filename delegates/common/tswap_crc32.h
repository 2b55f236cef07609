/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), identical to zlib.crc32 and to the CRC32
 * that tflm_swap's manifest stores for every segment. C99, no heap, no global mutable state. */
#ifndef TSWAP_CRC32_H_
#define TSWAP_CRC32_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Continue a CRC over `len` bytes: start with crc = 0, feed chunks in order (zlib.crc32 semantics). */
uint32_t tswap_crc32_update(uint32_t crc, const void* data, size_t len);

/* CRC of one buffer: tswap_crc32_update(0, data, len). */
uint32_t tswap_crc32(const void* data, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* TSWAP_CRC32_H_ */
