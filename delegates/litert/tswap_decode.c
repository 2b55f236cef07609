#include "tswap_decode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tswap_lut_parse(const uint8_t* anc, size_t len, const int* dims, int rank, int channel_axis, TswapLut* lut,
                    char* why, size_t why_len) {
  memset(lut, 0, sizeof *lut);
  if (len < TSWAP_DCM_BYTES) {
    snprintf(why, why_len, "ancillary data is %zu bytes, shorter than the 16-byte DCM header", len);
    return -1;
  }
  if (anc[0] != TSWAP_DECODE_TYPE_LUT) {
    snprintf(why, why_len, "decode type %u is not LUT (0)", anc[0]);
    return -1;
  }
  if (anc[1] != TSWAP_DCM_VERSION || anc[4] != TSWAP_LUT_VERSION) {
    snprintf(why, why_len, "DCM version %u / LUT version %u, expected %u / %u", anc[1], anc[4], TSWAP_DCM_VERSION,
             TSWAP_LUT_VERSION);
    return -1;
  }
  lut->bits = anc[5] & 0x0F;
  lut->axis = anc[5] >> 4;
  lut->stride = anc[6];
  if (lut->bits < 1 || lut->bits > 7) {
    snprintf(why, why_len, "index bitwidth %d is outside 1..7", lut->bits);
    return -1;
  }
  if (lut->axis != (int)TSWAP_LUT_PER_TENSOR_AXIS && lut->axis != channel_axis) {
    snprintf(why, why_len, "value tables along axis %d, but the filter's channel axis is %d (or 15, one table)",
             lut->axis, channel_axis);
    return -1;
  }
  if (lut->stride < 1) {
    snprintf(why, why_len, "value-table stride is 0");
    return -1;
  }
  lut->channels = 1;
  lut->inner = 1;
  if (lut->axis != (int)TSWAP_LUT_PER_TENSOR_AXIS) {
    lut->channels = (uint32_t)dims[channel_axis];
    for (int i = channel_axis + 1; i < rank; ++i) lut->inner *= (uint64_t)dims[i];
  }
  uint64_t want = TSWAP_DCM_BYTES + (uint64_t)lut->channels * lut->stride;
  if (len != want) {
    snprintf(why, why_len, "ancillary data is %zu bytes, but %u value table(s) of %u int8 entries need %llu", len,
             lut->channels, lut->stride, (unsigned long long)want);
    return -1;
  }
  lut->values = (int8_t*)malloc((size_t)lut->channels * lut->stride);
  if (!lut->values) {
    snprintf(why, why_len, "out of memory copying the value tables");
    return -1;
  }
  memcpy(lut->values, anc + TSWAP_DCM_BYTES, (size_t)lut->channels * lut->stride);
  return 0;
}

void tswap_lut_free(TswapLut* lut) {
  free(lut->values);
  lut->values = NULL;
}

uint64_t tswap_lut_encoded_bytes(const TswapLut* lut, uint64_t elems) { return (elems * (uint64_t)lut->bits + 7) / 8; }

int tswap_lut_decode(const TswapLut* lut, const uint8_t* enc, uint64_t first, size_t count, int8_t* out,
                     uint64_t* bad) {
  const unsigned bits = (unsigned)lut->bits, mask = (1u << bits) - 1u;
  const int check = lut->stride < (1u << bits); /* indices past the table are possible: check each */
  uint32_t channel = (uint32_t)((first / lut->inner) % lut->channels);
  uint64_t left_in_channel = lut->inner - first % lut->inner; /* elements before the channel changes */
  const int8_t* table = lut->values + (size_t)channel * lut->stride;
  uint64_t acc = 0; /* bit reservoir, next index in its top `have` bits */
  unsigned have = 0;
  for (size_t i = 0; i < count; ++i) {
    if (have < bits) {
      acc |= (uint64_t)(*enc++) << (56 - have);
      have += 8;
    }
    uint32_t index = (uint32_t)(acc >> (64 - bits)) & mask;
    acc <<= bits;
    have -= bits;
    if (check && index >= lut->stride) {
      *bad = first + i;
      return -1;
    }
    out[i] = table[index];
    if (--left_in_channel == 0) {
      left_in_channel = lut->inner;
      channel = channel + 1 == lut->channels ? 0 : channel + 1;
      table = lut->values + (size_t)channel * lut->stride;
    }
  }
  return 0;
}
