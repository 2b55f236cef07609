/* Upstream TFLite Micro's DECODE layout, LUT type: a TFLM_DECODE custom operator turns an encoded
 * tensor (uint8 bitstring of `bits`-bit indices, most significant bit first, in the decoded tensor's
 * element order) and an ancillary tensor (16-byte DCM header + value tables) into the filter.
 * Parsing and validation of the ancillary data (at prepare) and tile decoding (at invoke, into a
 * buffer allocated at prepare). See docs/DELEGATE.md "Compressed filters (TFLM DECODE layout)". */
#ifndef TSWAP_DECODE_H_
#define TSWAP_DECODE_H_

#include <stddef.h>
#include <stdint.h>

#define TSWAP_DECODE_OP "TFLM_DECODE" /* custom operator name */
#define TSWAP_DCM_BYTES 16u
#define TSWAP_DECODE_TYPE_LUT 0u
#define TSWAP_DCM_VERSION 1u
#define TSWAP_LUT_VERSION 1u
#define TSWAP_LUT_PER_TENSOR_AXIS 15u

typedef struct TswapLut {
  int bits;           /* index bitwidth, 1..7 */
  int axis;           /* channel axis of the decoded tensor, or TSWAP_LUT_PER_TENSOR_AXIS */
  uint32_t stride;    /* value-table entries per channel */
  uint32_t channels;  /* number of value tables (1 when per tensor) */
  uint64_t inner;     /* elements after the channel axis: element i is in channel (i / inner) % channels */
  int8_t* values;     /* channels x stride int8 values (a copy owned by the node) */
} TswapLut;

/* Check ancillary bytes `anc` (length `len`) against a decoded int8 tensor of shape dims[0..rank)
 * whose channel axis is `channel_axis`, and fill `lut` (values allocated with malloc). Returns 0, or
 * -1 with the reason in why. */
int tswap_lut_parse(const uint8_t* anc, size_t len, const int* dims, int rank, int channel_axis, TswapLut* lut,
                    char* why, size_t why_len);
void tswap_lut_free(TswapLut* lut);
/* Bytes of the encoded bitstring of `elems` indices. */
uint64_t tswap_lut_encoded_bytes(const TswapLut* lut, uint64_t elems);
/* Decode elements [first, first + count) (first a multiple of 8) from `enc`, the encoded bytes that
 * start at element `first`, into `out` (which holds the indices in between). Returns 0, or -1 if an
 * index is outside its value table (index of the first bad element in *bad). */
int tswap_lut_decode(const TswapLut* lut, const uint8_t* enc, uint64_t first, size_t count, int8_t* out,
                     uint64_t* bad);

#endif /* TSWAP_DECODE_H_ */
