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
// (bit 0: check the segment's CRC32 after the read: in TSWAP_LOAD, or in TSWAP_LOAD_WAIT). Prepare validates the id, that the
// output tensor's byte size equals the segment size, and the flash alignment; Eval only reads.
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
constexpr unsigned kFlagVerifyCrc = 1u;

TFLMRegistration* Register_TSWAP_LOAD();
TFLMRegistration* Register_TSWAP_LOAD_START();
TFLMRegistration* Register_TSWAP_LOAD_WAIT();

// Adds the three load operators to `resolver` (it needs 3 free slots).
template <unsigned int N>
TfLiteStatus AddLoadOps(tflite::MicroMutableOpResolver<N>& resolver) {
  if (resolver.AddCustom(kLoadOp, Register_TSWAP_LOAD()) != kTfLiteOk) return kTfLiteError;
  if (resolver.AddCustom(kLoadStartOp, Register_TSWAP_LOAD_START()) != kTfLiteOk) return kTfLiteError;
  return resolver.AddCustom(kLoadWaitOp, Register_TSWAP_LOAD_WAIT());
}

// Binds `image` (opened with tswap_image_open) to `interpreter` and allocates its tensors.
// The image must outlive the interpreter.
TfLiteStatus SetUp(tflite::MicroInterpreter& interpreter, tswap_image* image);

}  // namespace tswap

#endif  // TSWAP_TFLM_H_
