// Host runner: runs a .tflite on a real TFLite Micro (xmos-ai-tools' host library) with the
// tflm_swap load operators registered, and reports the arena TFLM's RecordingMicroAllocator saw.
// The model's own operators and its resource variables come from tswap_host_ops.h, whose
// definitions tflm_swap generates from the model (tflm_swap/micro/host.py).
//
//   tswap_host_runner MODEL IMAGE|- INPUTS OUTPUTS COUNT [deferred]
//
// INPUTS holds COUNT inferences' raw input bytes back to back (inputs in order); OUTPUTS receives
// the outputs the same way. IMAGE "-" runs a model without load operators (the stock model).
// Prints one JSON line: arena total/head/tail, flash bytes read, inferences.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "tensorflow/lite/micro/micro_resource_variable.h"
#include "tensorflow/lite/micro/recording_micro_allocator.h"
#include "tensorflow/lite/micro/recording_micro_interpreter.h"
#include "tswap_file_flash.h"
#include "tswap_host_ops.h"
#include "tswap_tflm.h"

namespace {

constexpr size_t kArenaBytes = 16u << 20;
constexpr uint32_t kMaxSegments = 4096;
alignas(16) uint8_t g_arena[kArenaBytes];
tswap_segment g_table[kMaxSegments];

bool ReadFile(const char* path, std::vector<uint8_t>* out) {
  FILE* f = fopen(path, "rb");
  if (f == nullptr) return false;
  uint8_t buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out->insert(out->end(), buf, buf + n);
  bool ok = ferror(f) == 0;
  fclose(f);
  return ok;
}

int Fail(const char* what) {
  fprintf(stderr, "tswap_host_runner: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) return Fail("usage: MODEL IMAGE|- INPUTS OUTPUTS COUNT [deferred]");
  std::vector<uint8_t> model_bytes, inputs;
  if (!ReadFile(argv[1], &model_bytes)) return Fail("cannot read the model file");
  if (!ReadFile(argv[3], &inputs)) return Fail("cannot read the inputs file");
  const long count = strtol(argv[5], nullptr, 10);
  const bool deferred = argc > 6 && strcmp(argv[6], "deferred") == 0;
  if (count <= 0) return Fail("COUNT must be a positive integer");

  tswap_flash flash;
  tswap_file_flash file_flash;
  tswap_image image;
  memset(&image, 0, sizeof(image));
  const bool has_image = strcmp(argv[2], "-") != 0;
  if (has_image) {
    if (tswap_file_flash_open(&flash, &file_flash, argv[2], deferred ? 1 : 0) != 0) return Fail("cannot open the image");
    int rc = tswap_image_open(&image, &flash, g_table, kMaxSegments);
    if (rc != TSWAP_OK) {
      fprintf(stderr, "tswap_host_runner: image: %s\n", tswap_strerror(rc));
      return 1;
    }
  }
  const tflite::Model* model = tflite::GetModel(model_bytes.data());
  static tswap_host::Resolver resolver;
  if (tswap_host::AddModelOps(resolver) != kTfLiteOk || tswap::AddLoadOps(resolver) != kTfLiteOk) {
    return Fail("op resolver full");
  }
  // Resource variables (stateful models) live in the arena's persistent part, as on a device.
  tflite::RecordingMicroAllocator* allocator = tflite::RecordingMicroAllocator::Create(g_arena, kArenaBytes);
  if (allocator == nullptr) return Fail("cannot create the allocator");
  tflite::MicroResourceVariables* variables = nullptr;
  if (tswap_host::kResourceVariables > 0) {
    variables = tflite::MicroResourceVariables::Create(allocator, tswap_host::kResourceVariables);
    if (variables == nullptr) return Fail("cannot create the resource variables");
  }
  tflite::RecordingMicroInterpreter interpreter(model, resolver, allocator, variables);
  TfLiteStatus setup = has_image ? tswap::SetUp(interpreter, &image) : interpreter.AllocateTensors();
  if (setup != kTfLiteOk) return Fail("AllocateTensors failed");

  size_t in_bytes = 0, out_bytes = 0;
  for (size_t i = 0; i < interpreter.inputs_size(); ++i) in_bytes += interpreter.input(i)->bytes;
  for (size_t i = 0; i < interpreter.outputs_size(); ++i) out_bytes += interpreter.output(i)->bytes;
  if (inputs.size() != in_bytes * static_cast<size_t>(count)) return Fail("inputs file size != COUNT x input bytes");
  FILE* out = fopen(argv[4], "wb");
  if (out == nullptr) return Fail("cannot write the outputs file");
  const uint8_t* src = inputs.data();
  for (long n = 0; n < count; ++n) {
    for (size_t i = 0; i < interpreter.inputs_size(); ++i) {
      memcpy(interpreter.input(i)->data.raw, src, interpreter.input(i)->bytes);
      src += interpreter.input(i)->bytes;
    }
    if (interpreter.Invoke() != kTfLiteOk) {
      fclose(out);
      return Fail("Invoke failed");
    }
    for (size_t i = 0; i < interpreter.outputs_size(); ++i) {
      fwrite(interpreter.output(i)->data.raw, 1, interpreter.output(i)->bytes, out);
    }
  }
  if (fclose(out) != 0) return Fail("writing the outputs failed");
  const auto* arena = interpreter.GetMicroAllocator().GetSimpleMemoryAllocator();
  printf("{\"arena_total\": %zu, \"arena_head\": %zu, \"arena_tail\": %zu, \"flash_bytes\": %llu, "
         "\"inferences\": %ld, \"input_bytes\": %zu, \"output_bytes\": %zu}\n",
         arena->GetUsedBytes(), arena->GetNonPersistentUsedBytes(), arena->GetPersistentUsedBytes(),
         static_cast<unsigned long long>(image.bytes_read), count, in_bytes, out_bytes);
  if (has_image) tswap_file_flash_close(&file_flash);
  return 0;
}
