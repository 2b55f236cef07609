// tflm_swap TFLM kernels: see tswap_tflm.h.
#include "tswap_tflm.h"

#include <stdint.h>

#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tswap_crc32.h"

namespace tswap {
namespace {

constexpr size_t kOptionBytes = 8;
constexpr uint32_t kChunkBytes = 256;  // encoded segments are read through a stack buffer this size

struct OpData {
  tswap_image* image;
  uint32_t segment;
  uint32_t flags;
  uint32_t bytes;
  bool options_ok;
};

// A load operator of an encoded segment (Init allocates this larger record only for one).
struct EncodedOpData {
  OpData base;
  int tables;             // arena scratch buffer of the value tables (TSWAP_LOAD, TSWAP_LOAD_WAIT)
  int tail;               // arena scratch buffer of the segment's last bytes (TSWAP_LOAD_WAIT)
  tswap_palette palette;  // the segment's header, checked in Prepare
};

enum Role { kLoad, kStart, kWait };

uint32_t ReadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

void* Init(TfLiteContext* context, const char* buffer, size_t length) {
  const bool options_ok = buffer != nullptr && length == kOptionBytes;  // Prepare reports a bad length
  const auto* p = reinterpret_cast<const uint8_t*>(buffer);
  const uint32_t flags = options_ok ? ReadU32(p + 4) : 0u;
  const size_t size = (flags & kFlagEncoded) != 0u ? sizeof(EncodedOpData) : sizeof(OpData);
  auto* data = static_cast<OpData*>(context->AllocatePersistentBuffer(context, size));
  if (data == nullptr) return nullptr;
  data->image = nullptr;
  data->segment = options_ok ? ReadU32(p) : UINT32_MAX;  // checked in Prepare
  data->flags = flags;
  data->bytes = 0;
  data->options_ok = options_ok;
  if ((flags & kFlagEncoded) != 0u) {
    reinterpret_cast<EncodedOpData*>(data)->tables = -1;
    reinterpret_cast<EncodedOpData*>(data)->tail = -1;
  }
  return data;
}

// An encoded segment: its header (read from flash) must describe `bytes` decoded bytes and the whole
// segment. The value tables get an arena scratch buffer where the segment is decoded (TSWAP_LOAD,
// TSWAP_LOAD_WAIT); a prefetched one must fit its tensor with a tail to spare, which TSWAP_LOAD_WAIT
// reads into one more scratch buffer (tswap_load_palette_start/finish).
TfLiteStatus PrepareEncoded(TfLiteContext* context, OpData* data, size_t bytes, Role role) {
  auto* encoded = reinterpret_cast<EncodedOpData*>(data);
  int rc = tswap_check_request(data->image, data->segment, 0, 0, nullptr);
  if (rc == TSWAP_OK) rc = tswap_palette_open(data->image, data->segment, static_cast<uint32_t>(bytes), &encoded->palette);
  // prefetched: no larger than its tensor, long enough to split off the tail
  if (rc == TSWAP_OK && role != kLoad) rc = tswap_palette_prefetch_check(data->image, data->segment, &encoded->palette);
  if (rc != TSWAP_OK) {
    MicroPrintf("tswap: segment %u (encoded, its tensor needs %u bytes%s): %s", (unsigned)data->segment,
                (unsigned)bytes, role == kLoad ? "" : ", prefetched", tswap_strerror(rc));
    return kTfLiteError;
  }
  data->bytes = static_cast<uint32_t>(bytes);
  if (role == kStart) return kTfLiteOk;
  TF_LITE_ENSURE_OK(context, context->RequestScratchBufferInArena(context, encoded->palette.table_bytes,
                                                                  &encoded->tables));
  return role == kWait ? context->RequestScratchBufferInArena(
                             context, tswap_palette_tail_bytes(data->image, data->segment), &encoded->tail)
                       : kTfLiteOk;
}

// Validates options, image binding and the tensor the segment is read into (output or input 0).
TfLiteStatus PrepareTarget(TfLiteContext* context, TfLiteNode* node, Role role) {
  const bool target_is_input = role == kWait;
  auto* data = static_cast<OpData*>(node->user_data);
  TF_LITE_ENSURE(context, data != nullptr);
  if (!data->options_ok) {
    MicroPrintf("tswap: load op custom options must be %d bytes (segment id, flags)", (int)kOptionBytes);
    return kTfLiteError;
  }
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  data->image = static_cast<tswap_image*>(micro_context->external_context());
  if (data->image == nullptr || data->image->flash == nullptr) {
    MicroPrintf("tswap: no image bound; call tswap::SetUp(interpreter, image) before AllocateTensors");
    return kTfLiteError;
  }
  TF_LITE_ENSURE_EQ(context, tflite::NumInputs(node), target_is_input ? 1 : 0);
  TF_LITE_ENSURE_EQ(context, tflite::NumOutputs(node), target_is_input ? 0 : 1);
  TfLiteTensor* tensor = target_is_input ? micro_context->AllocateTempInputTensor(node, 0)
                                         : micro_context->AllocateTempOutputTensor(node, 0);
  TF_LITE_ENSURE(context, tensor != nullptr);
  size_t bytes = 0, type_size = 0;
  TfLiteStatus status = tflite::TfLiteTypeSizeOf(tensor->type, &type_size);
  if (status == kTfLiteOk) {
    bytes = type_size;
    for (int i = 0; i < tensor->dims->size; ++i) bytes *= static_cast<size_t>(tensor->dims->data[i]);
  }
  micro_context->DeallocateTempTfLiteTensor(tensor);
  TF_LITE_ENSURE_OK(context, status);
  if ((data->flags & kFlagEncoded) != 0u) return PrepareEncoded(context, data, bytes, role);
  int rc = tswap_check_request(data->image, data->segment, 0, static_cast<uint32_t>(bytes), nullptr);
  if (rc != TSWAP_OK) {
    MicroPrintf("tswap: segment %u: %s", (unsigned)data->segment, tswap_strerror(rc));
    return kTfLiteError;
  }
  if (bytes != data->image->segments[data->segment].size) {
    MicroPrintf("tswap: segment %u holds %u bytes but its tensor needs %u", (unsigned)data->segment,
                (unsigned)data->image->segments[data->segment].size, (unsigned)bytes);
    return kTfLiteError;
  }
  data->bytes = static_cast<uint32_t>(bytes);
  return kTfLiteOk;
}

TfLiteStatus PrepareLoad(TfLiteContext* context, TfLiteNode* node) { return PrepareTarget(context, node, kLoad); }
TfLiteStatus PrepareStart(TfLiteContext* context, TfLiteNode* node) { return PrepareTarget(context, node, kStart); }
TfLiteStatus PrepareWait(TfLiteContext* context, TfLiteNode* node) { return PrepareTarget(context, node, kWait); }

TfLiteStatus Report(int rc, const OpData* data) {
  if (rc == TSWAP_OK) return kTfLiteOk;
  MicroPrintf("tswap: loading segment %u failed: %s", (unsigned)data->segment, tswap_strerror(rc));
  return kTfLiteError;
}

TfLiteStatus EvalLoad(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  TfLiteEvalTensor* out = tflite::micro::GetEvalOutput(context, node, 0);
  if ((data->flags & kFlagEncoded) != 0u) {
    const auto* encoded = reinterpret_cast<const EncodedOpData*>(data);
    alignas(16) uint8_t chunk[kChunkBytes];
    auto* tables = static_cast<int8_t*>(context->GetScratchBuffer(context, encoded->tables));
    return Report(tswap_load_palette(data->image, data->segment, &encoded->palette, out->data.int8, tables, chunk,
                                     kChunkBytes, (data->flags & kFlagVerifyCrc) != 0u),
                  data);
  }
  return Report(tswap_load(data->image, data->segment, 0, out->data.raw, data->bytes,
                           (data->flags & kFlagVerifyCrc) != 0u),
                data);
}

TfLiteStatus EvalStart(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  TfLiteEvalTensor* out = tflite::micro::GetEvalOutput(context, node, 0);
  if ((data->flags & kFlagEncoded) != 0u) {
    const auto* encoded = reinterpret_cast<const EncodedOpData*>(data);
    return Report(tswap_load_palette_start(data->image, data->segment, &encoded->palette, out->data.int8), data);
  }
  return Report(tswap_load_start(data->image, data->segment, 0, out->data.raw, data->bytes), data);
}

TfLiteStatus EvalWait(TfLiteContext* context, TfLiteNode* node) {
  const auto* data = static_cast<const OpData*>(node->user_data);
  if ((data->flags & kFlagEncoded) != 0u) {
    const auto* encoded = reinterpret_cast<const EncodedOpData*>(data);
    const TfLiteEvalTensor* in = tflite::micro::GetEvalInput(context, node, 0);
    auto* tables = static_cast<int8_t*>(context->GetScratchBuffer(context, encoded->tables));
    auto* tail = static_cast<uint8_t*>(context->GetScratchBuffer(context, encoded->tail));
    return Report(tswap_load_palette_finish(data->image, data->segment, &encoded->palette, in->data.int8, tables, tail,
                                            (data->flags & kFlagVerifyCrc) != 0u),
                  data);
  }
  int rc = tswap_load_wait(data->image);
  if (rc == TSWAP_OK && (data->flags & kFlagVerifyCrc) != 0u) {
    const TfLiteEvalTensor* in = tflite::micro::GetEvalInput(context, node, 0);
    if (tswap_crc32(in->data.raw, data->bytes) != data->image->segments[data->segment].crc32) rc = TSWAP_ERR_CRC;
  }
  return Report(rc, data);
}

}  // namespace

TFLMRegistration* Register_TSWAP_LOAD() {
  static TFLMRegistration r = tflite::micro::RegisterOp(Init, PrepareLoad, EvalLoad);
  return &r;
}

TFLMRegistration* Register_TSWAP_LOAD_START() {
  static TFLMRegistration r = tflite::micro::RegisterOp(Init, PrepareStart, EvalStart);
  return &r;
}

TFLMRegistration* Register_TSWAP_LOAD_WAIT() {
  static TFLMRegistration r = tflite::micro::RegisterOp(Init, PrepareWait, EvalWait);
  return &r;
}

TfLiteStatus SetUp(tflite::MicroInterpreter& interpreter, tswap_image* image) {
  if (image == nullptr || image->flash == nullptr) {
    MicroPrintf("tswap: SetUp needs an image opened with tswap_image_open");
    return kTfLiteError;
  }
  if (interpreter.SetMicroExternalContext(image) != kTfLiteOk) return kTfLiteError;
  return interpreter.AllocateTensors();
}

}  // namespace tswap
