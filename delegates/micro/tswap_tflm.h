// tflm_swap for TensorFlow Lite Micro: the weight-load operators and a setup helper.
//
// The `tflm` converter target puts a custom operator in front of every operator whose weights live
// in external flash. Its output is an ordinary (arena) tensor, so TFLM's memory planner overlaps
// weight staging with dead activations.
//
//   TSWAP_LOAD        no inputs, 1 output: blocking read of one segment into the output tensor.
//   TSWAP_LOAD_START  no inputs, 1 output: starts an asynchronous read (DMA) one operator early.
//   TSWAP_LOAD_WAIT   1 input (the tensor a START filled), no outputs: waits for that read.
//
// Custom options (all three): 8 bytes, little-endian: uint32 segment id, uint32 flags
// (bit 0: check the segment's CRC32 after the read: in TSWAP_LOAD, or in TSWAP_LOAD_WAIT; bit 2: the
// segment is palette-encoded, see tswap_micro.h, and is decoded into the tensor: by TSWAP_LOAD, or,
// prefetched, read by TSWAP_LOAD_START to the tensor's end but for a short tail and decoded in place
// by TSWAP_LOAD_WAIT). Prepare validates the id, that the output tensor's byte size equals the segment
// size (encoded: the header's, read from flash and checked, with the decoded size; it requests arena
// scratch buffers for the value tables and, in WAIT, the tail) and the flash alignment; Eval only
// reads (and decodes).
//
// Tiled operators (one custom kernel per kind, no load operators): TSWAP_CONV_2D,
// TSWAP_DEPTHWISE_CONV_2D and TSWAP_FULLY_CONNECTED take the int8 input and write the int8 output of
// the operator they replace; they read their filter and bias from the image in output-channel tiles
// (tile-table entry in the options) and compute each tile with TFLM's reference integer kernels.
// Custom options: 18 little-endian 32-bit words, then the filter scales (float32):
//   0 tile entry, 1 flags (bit 0 verify CRC, bit 1 prefetch: two tile buffers, tile k + 1 read
//   while tile k computes; bit 2 encoded: each tile's segment is a palette entry of its filter slice
//   followed by its raw bias, read to the end of a tile buffer 16 bytes (or the flash alignment)
//   larger than the raw tile and decoded in place, the value tables in one more scratch buffer),
//   2 padding (TfLitePadding), 3 stride_w, 4 stride_h, 5 dilation_w,
//   6 dilation_h, 7 activation (TfLiteFusedActivation), 8 depth multiplier (depthwise) or 0,
//   9 filter rank, 10..13 filter dims (0 past the rank), 14 has bias, 15 quantized dimension,
//   16 filter zero point, 17 scale count, 18.. scales.
// Prepare checks the options against the input/output tensors and the tile-table entry against the
// graph (channels, each tile's segment size) and requests the tile buffers; Eval only reads.
//
// The operators find the image through the interpreter's external context: call
// tswap::SetUp() (or interpreter.SetMicroExternalContext(image)) before AllocateTensors().
#ifndef TSWAP_TFLM_H_
#define TSWAP_TFLM_H_

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tswap_micro.h"

namespace tswap {

constexpr const char kLoadOp[] = "TSWAP_LOAD";
constexpr const char kLoadStartOp[] = "TSWAP_LOAD_START";
constexpr const char kLoadWaitOp[] = "TSWAP_LOAD_WAIT";
constexpr const char kConvOp[] = "TSWAP_CONV_2D";
constexpr const char kDepthwiseConvOp[] = "TSWAP_DEPTHWISE_CONV_2D";
constexpr const char kFullyConnectedOp[] = "TSWAP_FULLY_CONNECTED";
constexpr unsigned kFlagVerifyCrc = 1u;
constexpr unsigned kFlagPrefetch = 2u;  // tiled operators only
constexpr unsigned kFlagEncoded = 4u;   // palette-encoded: a TSWAP_LOAD's segment, or a tiled operator's tiles
constexpr unsigned kResolverSlots = 6u;  // what AddLoadOps registers

TFLMRegistration* Register_TSWAP_LOAD();
TFLMRegistration* Register_TSWAP_LOAD_START();
TFLMRegistration* Register_TSWAP_LOAD_WAIT();
TFLMRegistration* Register_TSWAP_CONV_2D();            // tswap_tiled.cc
TFLMRegistration* Register_TSWAP_DEPTHWISE_CONV_2D();  // tswap_tiled.cc
TFLMRegistration* Register_TSWAP_FULLY_CONNECTED();    // tswap_tiled.cc

// Adds the three load operators and the three tiled operators to `resolver` (kResolverSlots slots).
template <unsigned int N>
TfLiteStatus AddLoadOps(tflite::MicroMutableOpResolver<N>& resolver) {
  if (resolver.AddCustom(kLoadOp, Register_TSWAP_LOAD()) != kTfLiteOk) return kTfLiteError;
  if (resolver.AddCustom(kLoadStartOp, Register_TSWAP_LOAD_START()) != kTfLiteOk) return kTfLiteError;
  if (resolver.AddCustom(kLoadWaitOp, Register_TSWAP_LOAD_WAIT()) != kTfLiteOk) return kTfLiteError;
  if (resolver.AddCustom(kConvOp, Register_TSWAP_CONV_2D()) != kTfLiteOk) return kTfLiteError;
  if (resolver.AddCustom(kDepthwiseConvOp, Register_TSWAP_DEPTHWISE_CONV_2D()) != kTfLiteOk) return kTfLiteError;
  return resolver.AddCustom(kFullyConnectedOp, Register_TSWAP_FULLY_CONNECTED());
}

// Binds `image` (opened with tswap_image_open) to `interpreter` and allocates its tensors.
// The image must outlive the interpreter.
TfLiteStatus SetUp(tflite::MicroInterpreter& interpreter, tswap_image* image);

}  // namespace tswap

#endif  // TSWAP_TFLM_H_
