// tflm_swap TFLM kernels computing CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED (int8) in
// output-channel tiles read from the flash image: see tswap_tflm.h.
//
// Each tile's filter and bias slices are read into an arena scratch buffer (two with prefetch: tile
// k + 1 is read while tile k computes) and TFLM's own reference integer kernels compute that tile's
// output channels straight into the operator's output tensor: CONV_2D one output pixel at a time
// (the tile's channels are contiguous there), DEPTHWISE_CONV_2D one output pixel at a time on the
// tile's input-channel slice of the receptive field (gathered into a small window scratch),
// FULLY_CONNECTED one batch row at a time. Quantization parameters come from TFLM's own functions on
// a filter tensor described by the custom options, so every output channel is the same dot product
// with the same requantization as the stock kernel.
#include <stdint.h>
#include <string.h>

#include "tensorflow/lite/kernels/internal/reference/integer_ops/conv.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/depthwise_conv.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/fully_connected.h"
#include "tensorflow/lite/kernels/kernel_util.h"
#include "tensorflow/lite/kernels/padding.h"
#include "tensorflow/lite/micro/kernels/conv.h"
#include "tensorflow/lite/micro/kernels/depthwise_conv.h"
#include "tensorflow/lite/micro/kernels/fully_connected.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tswap_crc32.h"
#include "tswap_tflm.h"

namespace tswap {
namespace {

enum Kind { kConv = 0, kDepthwise = 1, kFullyConnected = 2 };

constexpr uint32_t kEncodedSlack = 16u;  // see EncodedSlack (the converter plans with this figure)

// Custom options: kOptionWords little-endian 32-bit words, then the filter scales (float32); words
// 17.. have the layout of a TfLiteFloatArray (count, then the scales).
enum Word {
  kEntry = 0, kFlags, kPadding, kStrideW, kStrideH, kDilationW, kDilationH, kActivation, kMultiplier,
  kRank, kDim0, kDim1, kDim2, kDim3, kHasBias, kQuantizedDim, kFilterZeroPoint, kScaleCount,
  kOptionWords
};

struct TiledData {
  Kind kind;
  const int32_t* words;  // the custom options, 4-byte aligned, inside the model flatbuffer
  uint32_t option_words;
  tswap_image* image;
  tswap_tile tile;
  uint32_t channel_bytes;  // filter bytes per output channel in a tile
  int32_t multiplier;      // depthwise: output channels per input channel
  int scratch[2];          // tile buffers (the second with prefetch, else -1)
  int window;              // depthwise: receptive-field window buffer, else -1
  uint32_t buffer_bytes;   // bytes of each tile buffer
  // Palette-encoded tiles (kFlagEncoded): each tile's header, checked in Prepare, and the value
  // tables' scratch buffer (-1 for raw tiles).
  tswap_palette* palettes;
  int tables;
  union {
    tflite::OpDataConv conv;
    tflite::OpDataFullyConnected fc;
  } q;
};

uint32_t Align4(uint32_t v) { return (v + 3u) & ~3u; }

uint32_t TileChannels(const TiledData& d, uint32_t k) {
  const uint32_t first = k * d.tile.tile_channels;
  return d.tile.channels - first < d.tile.tile_channels ? d.tile.channels - first : d.tile.tile_channels;
}

// Filter bytes per output channel: Kh * Kw * Cin (conv), Kh * Kw (depthwise), the depth (FC).
uint32_t ChannelBytes(const TiledData& d) {
  const int32_t* w = d.words;
  if (d.kind == kConv) return static_cast<uint32_t>(w[kDim1] * w[kDim2] * w[kDim3]);
  return static_cast<uint32_t>(d.kind == kDepthwise ? w[kDim1] * w[kDim2] : w[kDim1]);
}

uint32_t TileBytes(const TiledData& d, uint32_t channels) {
  return Align4(channels * d.channel_bytes) + (d.words[kHasBias] ? 4u * channels : 0u);
}

void* InitKind(TfLiteContext* context, const char* buffer, size_t length, Kind kind) {
  auto* d = static_cast<TiledData*>(context->AllocatePersistentBuffer(context, sizeof(TiledData)));
  if (d == nullptr) return nullptr;
  memset(d, 0, sizeof(*d));
  d->kind = kind;
  d->scratch[0] = d->scratch[1] = d->window = d->tables = -1;
  // Options are checked in Prepare; here only where they are (the flatbuffer keeps them alive).
  if (buffer != nullptr && (reinterpret_cast<uintptr_t>(buffer) & 3u) == 0u && length % 4u == 0u) {
    d->words = reinterpret_cast<const int32_t*>(buffer);
    d->option_words = static_cast<uint32_t>(length / 4u);
  }
  return d;
}

void* InitConv(TfLiteContext* c, const char* b, size_t n) { return InitKind(c, b, n, kConv); }
void* InitDepthwise(TfLiteContext* c, const char* b, size_t n) { return InitKind(c, b, n, kDepthwise); }
void* InitFullyConnected(TfLiteContext* c, const char* b, size_t n) { return InitKind(c, b, n, kFullyConnected); }

// The options' own consistency: word count, filter rank and dims, scale count, flags.
bool OptionsValid(const TiledData& d) {
  if (d.words == nullptr || d.option_words < kOptionWords) return false;
  const int32_t* w = d.words;
  if (static_cast<uint32_t>(w[kScaleCount]) != d.option_words - kOptionWords || w[kScaleCount] < 1) return false;
  if ((static_cast<uint32_t>(w[kFlags]) & ~(kFlagVerifyCrc | kFlagPrefetch | kFlagEncoded)) != 0u) return false;
  const int rank = d.kind == kFullyConnected ? 2 : 4;
  if (w[kRank] != rank || w[kQuantizedDim] < 0 || w[kQuantizedDim] >= rank) return false;
  for (int i = 0; i < 4; ++i) {
    if (i < rank ? w[kDim0 + i] < 1 : w[kDim0 + i] != 0) return false;
  }
  if (w[kScaleCount] != 1 && w[kScaleCount] != w[kDim0 + w[kQuantizedDim]]) return false;
  if (d.kind != kFullyConnected && (w[kStrideW] < 1 || w[kStrideH] < 1 || w[kDilationW] < 1 || w[kDilationH] < 1)) {
    return false;
  }
  return true;
}

// A TfLiteTensor describing the filter the options name (dims, scales, zero point): what TFLM's
// own quantization helpers read. `dims` and `zero_points` are the caller's storage.
void DescribeFilter(const TiledData& d, int* dims, int* zero_points, TfLiteAffineQuantization* quant,
                    TfLiteTensor* filter) {
  const int32_t* w = d.words;
  dims[0] = w[kRank];
  for (int i = 0; i < w[kRank]; ++i) dims[1 + i] = w[kDim0 + i];
  zero_points[0] = 1;
  zero_points[1] = w[kFilterZeroPoint];
  quant->scale = reinterpret_cast<TfLiteFloatArray*>(const_cast<int32_t*>(w + kScaleCount));
  quant->zero_point = reinterpret_cast<TfLiteIntArray*>(zero_points);
  quant->quantized_dimension = w[kQuantizedDim];
  memset(filter, 0, sizeof(*filter));
  filter->type = kTfLiteInt8;
  filter->dims = reinterpret_cast<TfLiteIntArray*>(dims);
  filter->params.scale = quant->scale->data[0];
  filter->params.zero_point = w[kFilterZeroPoint];
  filter->quantization.type = kTfLiteAffineQuantization;
  filter->quantization.params = quant;
}

int Dim(const TfLiteTensor* t, int i) { return t->dims->data[i]; }

int FlatSize(const TfLiteTensor* t) {
  int n = 1;
  for (int i = 0; i < t->dims->size; ++i) n *= t->dims->data[i];
  return n;
}

TfLitePadding Padding(const TiledData& d) { return static_cast<TfLitePadding>(d.words[kPadding]); }

TfLiteConvParams ConvOptions(const TiledData& d) {
  TfLiteConvParams p;
  memset(&p, 0, sizeof(p));
  p.padding = Padding(d);
  p.stride_width = d.words[kStrideW];
  p.stride_height = d.words[kStrideH];
  p.dilation_width_factor = d.words[kDilationW];
  p.dilation_height_factor = d.words[kDilationH];
  p.activation = static_cast<TfLiteFusedActivation>(d.words[kActivation]);
  return p;
}

TfLiteDepthwiseConvParams DepthwiseOptions(const TiledData& d) {
  TfLiteDepthwiseConvParams p;
  memset(&p, 0, sizeof(p));
  p.padding = Padding(d);
  p.stride_width = d.words[kStrideW];
  p.stride_height = d.words[kStrideH];
  p.dilation_width_factor = d.words[kDilationW];
  p.dilation_height_factor = d.words[kDilationH];
  p.depth_multiplier = d.multiplier;
  p.activation = static_cast<TfLiteFusedActivation>(d.words[kActivation]);
  return p;
}

// CONV_2D / DEPTHWISE_CONV_2D geometry and quantization (as CalculateOpDataConv computes them).
TfLiteStatus PrepareConvolution(TfLiteContext* context, TiledData* d, const TfLiteTensor* input,
                                TfLiteTensor* output, TfLiteTensor* filter) {
  const int32_t* w = d->words;
  const bool depthwise = d->kind == kDepthwise;
  TF_LITE_ENSURE_EQ(context, input->dims->size, 4);
  TF_LITE_ENSURE_EQ(context, output->dims->size, 4);
  TF_LITE_ENSURE(context, w[kPadding] == kTfLitePaddingSame || w[kPadding] == kTfLitePaddingValid);
  const int channels = depthwise ? w[kDim3] : w[kDim0];
  TF_LITE_ENSURE_EQ(context, Dim(output, 3), channels);
  TF_LITE_ENSURE_EQ(context, Dim(output, 0), Dim(input, 0));
  if (depthwise) {
    TF_LITE_ENSURE_EQ(context, w[kDim0], 1);
    TF_LITE_ENSURE(context, Dim(input, 3) > 0 && channels % Dim(input, 3) == 0);
    d->multiplier = channels / Dim(input, 3);
    TF_LITE_ENSURE(context, w[kMultiplier] == 0 || w[kMultiplier] == d->multiplier);
    TF_LITE_ENSURE_EQ(context, w[kQuantizedDim], 3);
    TF_LITE_ENSURE_EQ(context, d->tile.tile_channels % static_cast<uint32_t>(d->multiplier), 0u);
  } else {
    TF_LITE_ENSURE_EQ(context, w[kDim3], Dim(input, 3));  // one group: every filter sees every input channel
    TF_LITE_ENSURE_EQ(context, w[kQuantizedDim], 0);
  }
  int out_h = 0, out_w = 0;
  d->q.conv.padding = tflite::ComputePaddingHeightWidth(w[kStrideH], w[kStrideW], w[kDilationH], w[kDilationW],
                                                        Dim(input, 1), Dim(input, 2), w[kDim1], w[kDim2],
                                                        Padding(*d), &out_h, &out_w);
  TF_LITE_ENSURE_EQ(context, Dim(output, 1), out_h);
  TF_LITE_ENSURE_EQ(context, Dim(output, 2), out_w);
  d->q.conv.per_channel_output_multiplier =
      static_cast<int32_t*>(context->AllocatePersistentBuffer(context, channels * sizeof(int32_t)));
  d->q.conv.per_channel_output_shift =
      static_cast<int32_t*>(context->AllocatePersistentBuffer(context, channels * sizeof(int32_t)));
  TF_LITE_ENSURE(context, d->q.conv.per_channel_output_multiplier != nullptr);
  TF_LITE_ENSURE(context, d->q.conv.per_channel_output_shift != nullptr);
  TF_LITE_ENSURE_STATUS(tflite::PopulateConvolutionQuantizationParams(
      context, input, filter, nullptr, output, static_cast<TfLiteFusedActivation>(w[kActivation]),
      &d->q.conv.output_multiplier, &d->q.conv.output_shift, &d->q.conv.output_activation_min,
      &d->q.conv.output_activation_max, d->q.conv.per_channel_output_multiplier,
      d->q.conv.per_channel_output_shift, channels));
  d->q.conv.input_zero_point = input->params.zero_point;
  d->q.conv.filter_zero_point = w[kFilterZeroPoint];
  d->q.conv.output_zero_point = output->params.zero_point;
  if (depthwise) {  // the receptive field of one output pixel, one tile's input channels
    const uint32_t win_h = static_cast<uint32_t>((w[kDim1] - 1) * w[kDilationH] + 1);
    const uint32_t win_w = static_cast<uint32_t>((w[kDim2] - 1) * w[kDilationW] + 1);
    const uint32_t tile_inputs = d->tile.tile_channels / static_cast<uint32_t>(d->multiplier);
    TF_LITE_ENSURE_OK(context, context->RequestScratchBufferInArena(context, win_h * win_w * tile_inputs,
                                                                    &d->window));
  }
  return kTfLiteOk;
}

// FULLY_CONNECTED geometry and quantization (CalculateOpDataFullyConnected on the described filter).
TfLiteStatus PrepareFullyConnected(TfLiteContext* context, TiledData* d, const TfLiteTensor* input,
                                   TfLiteTensor* output, TfLiteTensor* filter) {
  const int32_t* w = d->words;
  const int units = w[kDim0], depth = w[kDim1];
  TF_LITE_ENSURE_EQ(context, w[kQuantizedDim], 0);
  TF_LITE_ENSURE(context, output->dims->size >= 1 && Dim(output, output->dims->size - 1) == units);
  TF_LITE_ENSURE_EQ(context, FlatSize(input) % depth, 0);
  TF_LITE_ENSURE_EQ(context, FlatSize(input) / depth, FlatSize(output) / units);
  return tflite::CalculateOpDataFullyConnected(context, static_cast<TfLiteFusedActivation>(w[kActivation]),
                                               kTfLiteInt8, input, filter, nullptr, output, &d->q.fc);
}

// The tile-table entry matches the graph: its channel count and every tile's segment size.
bool Encoded(const TiledData& d) { return (static_cast<uint32_t>(d.words[kFlags]) & kFlagEncoded) != 0u; }

uint32_t BiasBytes(const TiledData& d, uint32_t channels) { return d.words[kHasBias] ? 4u * channels : 0u; }

// Room an encoded tile's buffer has past its decoded bytes: the stored tile is read to the buffer's
// end (aligned down for the driver) and decoded in place, which needs the entry to end at least one
// byte after the decoded filter (tswap_palette_decode): `align` bytes more than the raw tile covers it.
uint32_t FlashAlign(const tswap_image& image) { return image.flash->align > 1u ? image.flash->align : 1u; }

uint32_t EncodedSlack(const tswap_image& image) {
  return FlashAlign(image) > kEncodedSlack ? FlashAlign(image) : kEncodedSlack;
}

// An encoded tile k: segment = palette entry of the tile's filter, then its raw int32 bias.
TfLiteStatus OpenEncodedTile(TiledData* d, uint32_t k, uint32_t* table_bytes) {
  const uint32_t segment = d->tile.first_segment + k, channels = TileChannels(*d, k);
  const uint32_t size = d->image->segments[segment].size, bias = BiasBytes(*d, channels);
  // Never larger than the raw tile (the converter encodes only what shrinks): it fits the buffer.
  const int rc = size < bias || size > TileBytes(*d, channels) ? TSWAP_ERR_ENCODING
                             : tswap_palette_open_entry(d->image, segment, size - bias, channels * d->channel_bytes,
                                                        &d->palettes[k]);
  if (rc != TSWAP_OK) {
    MicroPrintf("tswap: tile %u (segment %u, encoded, %u channels): %s", (unsigned)k, (unsigned)segment,
                (unsigned)channels, tswap_strerror(rc));
    return kTfLiteError;
  }
  if (d->palettes[k].table_bytes > *table_bytes) *table_bytes = d->palettes[k].table_bytes;
  return kTfLiteOk;
}

// Every tile's segment: inside the image and the size its channels need (raw), or a valid entry
// for them (encoded). `largest`: the tile buffer size; `table_bytes`: the largest tile's tables.
TfLiteStatus CheckTiles(TfLiteContext* context, TiledData* d, uint32_t* largest, uint32_t* table_bytes) {
  *largest = *table_bytes = 0;
  if (Encoded(*d)) {
    d->palettes = static_cast<tswap_palette*>(
        context->AllocatePersistentBuffer(context, d->tile.tiles * sizeof(tswap_palette)));
    TF_LITE_ENSURE(context, d->palettes != nullptr);
  }
  for (uint32_t k = 0; k < d->tile.tiles; ++k) {
    const uint32_t segment = d->tile.first_segment + k, bytes = TileBytes(*d, TileChannels(*d, k));
    const int rc = tswap_check_request(d->image, segment, 0, d->image->segments[segment].size, nullptr);
    if (rc != TSWAP_OK) {
      MicroPrintf("tswap: tile segment %u: %s", (unsigned)segment, tswap_strerror(rc));
      return kTfLiteError;
    }
    if (Encoded(*d)) {
      TF_LITE_ENSURE_OK(context, OpenEncodedTile(d, k, table_bytes));
    } else if (d->image->segments[segment].size != bytes) {
      MicroPrintf("tswap: tile entry %u: segment %u holds %u bytes but tile %u needs %u", (unsigned)d->words[kEntry],
                  (unsigned)segment, (unsigned)d->image->segments[segment].size, (unsigned)k, (unsigned)bytes);
      return kTfLiteError;
    }
    if (bytes > *largest) *largest = bytes;
  }
  if (Encoded(*d)) *largest += EncodedSlack(*d->image);
  return kTfLiteOk;
}

TfLiteStatus BindTiles(TfLiteContext* context, TiledData* d) {
  d->image = static_cast<tswap_image*>(tflite::GetMicroContext(context)->external_context());
  if (d->image == nullptr || d->image->flash == nullptr) {
    MicroPrintf("tswap: no image bound; call tswap::SetUp(interpreter, image) before AllocateTensors");
    return kTfLiteError;
  }
  const int rc = tswap_tile_get(d->image, static_cast<uint32_t>(d->words[kEntry]), &d->tile);
  if (rc != TSWAP_OK) {
    MicroPrintf("tswap: tile entry %u: %s", (unsigned)d->words[kEntry], tswap_strerror(rc));
    return kTfLiteError;
  }
  const int channels = d->kind == kDepthwise ? d->words[kDim3] : d->words[kDim0];
  if (d->tile.channels != static_cast<uint32_t>(channels)) {
    MicroPrintf("tswap: tile entry %u covers %u channels but the operator has %d", (unsigned)d->words[kEntry],
                (unsigned)d->tile.channels, channels);
    return kTfLiteError;
  }
  return kTfLiteOk;
}

TfLiteStatus PrepareTensors(TfLiteContext* context, TiledData* d, const TfLiteTensor* input, TfLiteTensor* output) {
  TF_LITE_ENSURE_TYPES_EQ(context, input->type, kTfLiteInt8);
  TF_LITE_ENSURE_TYPES_EQ(context, output->type, kTfLiteInt8);
  int dims[5] = {0, 0, 0, 0, 0};
  int zero_points[2];
  TfLiteAffineQuantization quant;
  TfLiteTensor filter;
  DescribeFilter(*d, dims, zero_points, &quant, &filter);
  if (d->kind == kFullyConnected) return PrepareFullyConnected(context, d, input, output, &filter);
  return PrepareConvolution(context, d, input, output, &filter);
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* d = static_cast<TiledData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr);
  if (!OptionsValid(*d)) {
    MicroPrintf("tswap: tiled operator custom options are malformed (%u words)", (unsigned)d->option_words);
    return kTfLiteError;
  }
  TF_LITE_ENSURE_EQ(context, tflite::NumInputs(node), 1);
  TF_LITE_ENSURE_EQ(context, tflite::NumOutputs(node), 1);
  TF_LITE_ENSURE_OK(context, BindTiles(context, d));
  d->channel_bytes = ChannelBytes(*d);
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, 0);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, 0);
  TF_LITE_ENSURE(context, input != nullptr && output != nullptr);
  // Tile buffers first (the planner predicts the arena from this request order), then the window.
  d->window = -1;
  TfLiteStatus status = kTfLiteOk;
  uint32_t largest = 0, table_bytes = 0;
  status = CheckTiles(context, d, &largest, &table_bytes);
  d->buffer_bytes = largest;
  if (status == kTfLiteOk) status = context->RequestScratchBufferInArena(context, largest, &d->scratch[0]);
  if (status == kTfLiteOk && (d->words[kFlags] & kFlagPrefetch) != 0) {
    status = context->RequestScratchBufferInArena(context, largest, &d->scratch[1]);
  }
  if (status == kTfLiteOk) status = PrepareTensors(context, d, input, output);
  if (status == kTfLiteOk && Encoded(*d)) status = context->RequestScratchBufferInArena(context, table_bytes, &d->tables);
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(output);
  return status;
}

// ------------------------------------------------------------------------------------- Eval
struct Slice {
  uint32_t first;     // first output channel
  uint32_t channels;  // output channels in this tile
  const int8_t* filter;
  const int32_t* bias;  // nullptr without bias
};

void ConvTile(const TiledData& d, const TfLiteEvalTensor* input, TfLiteEvalTensor* output, const Slice& s) {
  const int32_t* w = d.words;
  tflite::ConvParams p = tflite::ConvParamsQuantized(ConvOptions(d), d.q.conv);
  const int batches = input->dims->data[0], in_h = input->dims->data[1], in_w = input->dims->data[2];
  const int depth = input->dims->data[3], out_h = output->dims->data[1], out_w = output->dims->data[2];
  const int out_c = output->dims->data[3], tc = static_cast<int>(s.channels);
  const int32_t in_dims[4] = {1, in_h, in_w, depth}, f_dims[4] = {tc, w[kDim1], w[kDim2], w[kDim3]};
  const int32_t b_dims[1] = {tc}, o_dims[4] = {1, 1, 1, tc};
  const tflite::RuntimeShape in_shape(4, in_dims), f_shape(4, f_dims), b_shape(1, b_dims), o_shape(4, o_dims);
  const int8_t* in = tflite::micro::GetTensorData<int8_t>(input);
  int8_t* out = tflite::micro::GetTensorData<int8_t>(output);
  const int32_t* mult = d.q.conv.per_channel_output_multiplier + s.first;
  const int32_t* shift = d.q.conv.per_channel_output_shift + s.first;
  for (int b = 0; b < batches; ++b) {
    for (int y = 0; y < out_h; ++y) {
      for (int x = 0; x < out_w; ++x) {  // one output pixel: the kernel's origin moved by the padding
        p.padding_values.height = d.q.conv.padding.height - y * w[kStrideH];
        p.padding_values.width = d.q.conv.padding.width - x * w[kStrideW];
        int8_t* dst = out + ((static_cast<size_t>(b) * out_h + y) * out_w + x) * out_c + s.first;
        tflite::reference_integer_ops::ConvPerChannel(p, mult, shift, in_shape,
                                                      in + static_cast<size_t>(b) * in_h * in_w * depth, f_shape,
                                                      s.filter, b_shape, s.bias, o_shape, dst);
      }
    }
  }
}

int Clamp(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

void DepthwiseTile(TfLiteContext* context, const TiledData& d, const TfLiteEvalTensor* input,
                   TfLiteEvalTensor* output, const Slice& s) {
  const int32_t* w = d.words;
  tflite::DepthwiseParams p = tflite::DepthwiseConvParamsQuantized(DepthwiseOptions(d), d.q.conv);
  const int batches = input->dims->data[0], in_h = input->dims->data[1], in_w = input->dims->data[2];
  const int depth = input->dims->data[3], out_h = output->dims->data[1], out_w = output->dims->data[2];
  const int out_c = output->dims->data[3], tc = static_cast<int>(s.channels), ti = tc / d.multiplier;
  const int first_in = static_cast<int>(s.first) / d.multiplier;
  const int win_h = (w[kDim1] - 1) * w[kDilationH] + 1, win_w = (w[kDim2] - 1) * w[kDilationW] + 1;
  const int32_t f_dims[4] = {1, w[kDim1], w[kDim2], tc}, b_dims[1] = {tc}, o_dims[4] = {1, 1, 1, tc};
  const tflite::RuntimeShape f_shape(4, f_dims), b_shape(1, b_dims), o_shape(4, o_dims);
  const int8_t* in = tflite::micro::GetTensorData<int8_t>(input);
  int8_t* out = tflite::micro::GetTensorData<int8_t>(output);
  int8_t* window = static_cast<int8_t*>(context->GetScratchBuffer(context, d.window));
  const int32_t* mult = d.q.conv.per_channel_output_multiplier + s.first;
  const int32_t* shift = d.q.conv.per_channel_output_shift + s.first;
  for (int b = 0; b < batches; ++b) {
    for (int y = 0; y < out_h; ++y) {
      const int oy = y * w[kStrideH] - d.q.conv.padding.height;
      const int y0 = Clamp(oy, 0, in_h), y1 = Clamp(oy + win_h, y0, in_h);
      for (int x = 0; x < out_w; ++x) {
        const int ox = x * w[kStrideW] - d.q.conv.padding.width;
        const int x0 = Clamp(ox, 0, in_w), x1 = Clamp(ox + win_w, x0, in_w);
        // The in-image part of the receptive field, this tile's input channels only; the padding
        // moves the kernel's origin so that exactly the out-of-image taps fall outside the window.
        for (int iy = y0; iy < y1; ++iy) {
          for (int ix = x0; ix < x1; ++ix) {
            memcpy(window + ((iy - y0) * (x1 - x0) + (ix - x0)) * ti,
                   in + ((static_cast<size_t>(b) * in_h + iy) * in_w + ix) * depth + first_in, ti);
          }
        }
        const int32_t w_dims[4] = {1, y1 - y0, x1 - x0, ti};
        p.padding_values.height = y0 - oy;
        p.padding_values.width = x0 - ox;
        int8_t* dst = out + ((static_cast<size_t>(b) * out_h + y) * out_w + x) * out_c + s.first;
        tflite::reference_integer_ops::DepthwiseConvPerChannel(p, mult, shift, tflite::RuntimeShape(4, w_dims), window,
                                                               f_shape, s.filter, b_shape, s.bias, o_shape, dst);
      }
    }
  }
}

void FullyConnectedTile(const TiledData& d, const TfLiteEvalTensor* input, TfLiteEvalTensor* output,
                        const Slice& s) {
  const tflite::FullyConnectedParams p = tflite::FullyConnectedParamsQuantized(d.q.fc);
  const int depth = d.words[kDim1], units = d.words[kDim0], tc = static_cast<int>(s.channels);
  const int batches = tflite::micro::GetTensorShape(input).FlatSize() / depth;
  const int32_t in_dims[2] = {1, depth}, f_dims[2] = {tc, depth}, b_dims[1] = {tc}, o_dims[2] = {1, tc};
  const tflite::RuntimeShape in_shape(2, in_dims), f_shape(2, f_dims), b_shape(1, b_dims), o_shape(2, o_dims);
  const int8_t* in = tflite::micro::GetTensorData<int8_t>(input);
  int8_t* out = tflite::micro::GetTensorData<int8_t>(output);
  for (int b = 0; b < batches; ++b) {  // one batch row: the tile's outputs are contiguous there
    tflite::reference_integer_ops::FullyConnected(p, in_shape, in + static_cast<size_t>(b) * depth, f_shape,
                                                  s.filter, b_shape, s.bias, o_shape,
                                                  out + static_cast<size_t>(b) * units + s.first);
  }
}

TfLiteStatus Report(int rc, const TiledData& d, uint32_t k) {
  if (rc == TSWAP_OK) return kTfLiteOk;
  MicroPrintf("tswap: loading tile %u (segment %u) failed: %s", (unsigned)k, (unsigned)(d.tile.first_segment + k),
              tswap_strerror(rc));
  return kTfLiteError;
}

// Where tile `segment`'s bytes are read to in a tile buffer: the start (raw), or the end aligned
// down for the driver (encoded: decoded in place from there).
uint32_t ReadOffset(const TiledData& d, uint32_t segment) {
  if (!Encoded(d)) return 0u;
  return (d.buffer_bytes - d.image->segments[segment].size) & ~(FlashAlign(*d.image) - 1u);
}

// An encoded tile k read to `buffer` + ReadOffset: its header must be the one Prepare checked; the
// filter is decoded to the buffer's start and the bias moved to just after it (TileBytes layout).
int DecodeTile(TfLiteContext* context, const TiledData& d, uint32_t k, uint8_t* buffer) {
  const uint32_t segment = d.tile.first_segment + k, channels = TileChannels(d, k);
  const uint32_t size = d.image->segments[segment].size, bias = BiasBytes(d, channels);
  const uint8_t* stored = buffer + ReadOffset(d, segment);
  const tswap_palette& p = d.palettes[k];
  tswap_palette again;
  if (tswap_palette_parse(stored, size - bias, p.count, &again) != TSWAP_OK || memcmp(&again, &p, sizeof(p)) != 0) {
    return TSWAP_ERR_ENCODING;
  }
  auto* tables = static_cast<int8_t*>(context->GetScratchBuffer(context, d.tables));
  const int rc = tswap_palette_decode(&p, stored, tables, reinterpret_cast<int8_t*>(buffer));
  if (rc == TSWAP_OK && bias != 0u) memmove(buffer + Align4(p.count), stored + (size - bias), bias);
  return rc;
}

// Tile k is in `buffer`: reads it (blocking), or waits for the read started earlier and starts
// reading tile k + 1 into `next` (prefetch); an encoded tile is then decoded.
int FetchTile(TfLiteContext* context, const TiledData& d, uint32_t k, uint8_t* buffer, uint8_t* next) {
  const uint32_t segment = d.tile.first_segment + k, bytes = d.image->segments[segment].size;
  const bool verify = (static_cast<uint32_t>(d.words[kFlags]) & kFlagVerifyCrc) != 0u;
  uint8_t* at = buffer + ReadOffset(d, segment);
  int rc = TSWAP_OK;
  if (next == nullptr) {
    rc = tswap_load(d.image, segment, 0, at, bytes, verify ? 1 : 0);
  } else {
    rc = tswap_load_wait(d.image);
    if (rc == TSWAP_OK && verify && tswap_crc32(at, bytes) != d.image->segments[segment].crc32) rc = TSWAP_ERR_CRC;
    if (rc == TSWAP_OK && k + 1 < d.tile.tiles) {
      rc = tswap_load_start(d.image, segment + 1, 0, next + ReadOffset(d, segment + 1),
                            d.image->segments[segment + 1].size);
    }
  }
  if (rc == TSWAP_OK && Encoded(d)) rc = DecodeTile(context, d, k, buffer);
  return rc;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const TiledData*>(node->user_data);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, 0);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, 0);
  const bool prefetch = d->scratch[1] >= 0;
  uint8_t* buffers[2] = {static_cast<uint8_t*>(context->GetScratchBuffer(context, d->scratch[0])), nullptr};
  if (prefetch) {
    buffers[1] = static_cast<uint8_t*>(context->GetScratchBuffer(context, d->scratch[1]));
    const int rc = tswap_load_start(d->image, d->tile.first_segment, 0,
                                    buffers[0] + ReadOffset(*d, d->tile.first_segment),
                                    d->image->segments[d->tile.first_segment].size);
    if (rc != TSWAP_OK) return Report(rc, *d, 0);
  }
  for (uint32_t k = 0; k < d->tile.tiles; ++k) {
    uint8_t* buffer = buffers[prefetch ? k % 2u : 0u];
    const int rc = FetchTile(context, *d, k, buffer, prefetch ? buffers[(k + 1u) % 2u] : nullptr);
    if (rc != TSWAP_OK) {
      if (d->image->pending) (void)tswap_load_wait(d->image);
      return Report(rc, *d, k);
    }
    const uint32_t channels = TileChannels(*d, k);
    const Slice s = {k * d->tile.tile_channels, channels, reinterpret_cast<const int8_t*>(buffer),
                     d->words[kHasBias] ? reinterpret_cast<const int32_t*>(buffer + Align4(channels * d->channel_bytes))
                                        : nullptr};
    if (d->kind == kConv) ConvTile(*d, input, output, s);
    if (d->kind == kDepthwise) DepthwiseTile(context, *d, input, output, s);
    if (d->kind == kFullyConnected) FullyConnectedTile(*d, input, output, s);
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration* Register_TSWAP_CONV_2D() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitConv, Prepare, Eval);
  return &r;
}

TFLMRegistration* Register_TSWAP_DEPTHWISE_CONV_2D() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitDepthwise, Prepare, Eval);
  return &r;
}

TFLMRegistration* Register_TSWAP_FULLY_CONNECTED() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitFullyConnected, Prepare, Eval);
  return &r;
}

}  // namespace tswap
