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
  if (lut->stride == 0) { /* one table shared by every channel: all bytes after the DCM (TFLM's kernel
                            * steps the stride per quantization channel, so stride 0 keeps it on one) */
    const size_t entries = len - TSWAP_DCM_BYTES;
    if (entries < 1 || entries > (1u << lut->bits)) {
      snprintf(why, why_len, "stride 0 (one shared table) with %zu entries; %d-bit indices address 1..%u", entries,
               lut->bits, 1u << lut->bits);
      return -1;
    }
    lut->stride = (uint32_t)entries;
    lut->axis = (int)TSWAP_LUT_PER_TENSOR_AXIS;
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

/* Unpack `groups` groups of 8 B-bit indices (B bytes each, most significant bit first) into bytes. */
#define TSWAP_UNPACK(B)                                                                      \
  static void unpack##B(const uint8_t* in, uint8_t* out, size_t groups) {                    \
    for (size_t g = 0; g < groups; ++g, in += B, out += 8) {                                 \
      uint64_t v = 0;                                                                        \
      for (int k = 0; k < B; ++k) v = (v << 8) | in[k];                                      \
      for (int j = 0; j < 8; ++j) out[j] = (uint8_t)((v >> (B * (7 - j))) & ((1u << B) - 1)); \
    }                                                                                        \
  }
TSWAP_UNPACK(1)
TSWAP_UNPACK(2)
TSWAP_UNPACK(3)
TSWAP_UNPACK(4)
TSWAP_UNPACK(5)
TSWAP_UNPACK(6)
TSWAP_UNPACK(7)

static void unpack(unsigned bits, const uint8_t* in, uint8_t* out, size_t groups) {
  static void (*const fns[8])(const uint8_t*, uint8_t*, size_t) = {NULL,    unpack1, unpack2, unpack3,
                                                                    unpack4, unpack5, unpack6, unpack7};
  fns[bits](in, out, groups);
}

/* Replace the indices out[0..count) (all from one value table) by their values; -1 at the first
 * index past the table (its position in *bad). */
static int lookup_run(const int8_t* table, uint32_t stride, int check, int8_t* out, size_t count, size_t* bad) {
  uint8_t* idx = (uint8_t*)out;
  if (check) {
    for (size_t i = 0; i < count; ++i) {
      if (idx[i] >= stride) {
        *bad = i;
        return -1;
      }
    }
  }
  for (size_t i = 0; i < count; ++i) out[i] = table[idx[i]];
  return 0;
}

int tswap_lut_decode(const TswapLut* lut, const uint8_t* enc, uint64_t first, size_t count, int8_t* out,
                     uint64_t* bad) {
  const unsigned bits = (unsigned)lut->bits;
  const int check = lut->stride < (1u << bits); /* indices past the table are possible: check each */
  /* pass 1: indices, whole groups of 8, then the last partial group from a zero-padded copy */
  size_t groups = count / 8, rest = count % 8;
  unpack(bits, enc, (uint8_t*)out, groups);
  if (rest) {
    uint8_t tail_in[8] = {0}, tail_out[8];
    memcpy(tail_in, enc + groups * bits, (rest * bits + 7) / 8);
    unpack(bits, tail_in, tail_out, 1);
    memcpy(out + groups * 8, tail_out, rest);
  }
  /* pass 2: values, in runs of elements that share a table */
  uint32_t channel = (uint32_t)((first / lut->inner) % lut->channels);
  size_t done = 0, at = 0;
  if (lut->inner == 1 && lut->channels > 1) { /* channel = last axis: the table changes every element */
    const uint8_t* idx = (const uint8_t*)out;
    for (; done < count; ++done) {
      if (check && idx[done] >= lut->stride) {
        *bad = first + done;
        return -1;
      }
      out[done] = lut->values[(size_t)channel * lut->stride + idx[done]];
      channel = channel + 1 == lut->channels ? 0 : channel + 1;
    }
    return 0;
  }
  uint64_t left_in_channel = lut->inner - first % lut->inner;
  while (done < count) {
    size_t run = (size_t)(count - done < left_in_channel ? count - done : left_in_channel);
    if (lookup_run(lut->values + (size_t)channel * lut->stride, lut->stride, check, out + done, run, &at) != 0) {
      *bad = first + done + at;
      return -1;
    }
    done += run;
    left_in_channel = lut->inner;
    channel = channel + 1 == lut->channels ? 0 : channel + 1;
  }
  return 0;
}
