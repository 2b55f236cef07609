/* Prints the offset and size of every TFLite ABI member the delegate uses, and the enum values it
 * relies on. Compiled twice by tests/test_delegate_abi.py: against tswap_tflite_abi.h and against
 * TFLite's own headers (-DTSWAP_USE_TFLITE_HEADERS, e.g. those xmos-ai-tools ships); the outputs
 * must be identical. */
#include <stddef.h>
#include <stdio.h>

#ifdef TSWAP_USE_TFLITE_HEADERS
#include "tensorflow/lite/builtin_ops.h"
#include "tensorflow/lite/core/c/builtin_op_data.h"
#include "tensorflow/lite/core/c/common.h"
#else
#include "tswap_tflite_abi.h"
#endif

#define F(T, m) printf("%s.%s %zu %zu\n", #T, #m, offsetof(T, m), sizeof(((T*)0)->m))
#define S(T) printf("sizeof(%s) %zu\n", #T, sizeof(T))
#define E(v) printf("%s %d\n", #v, (int)(v))

int main(void) {
  F(TfLiteIntArray, size); printf("TfLiteIntArray.data %zu\n", offsetof(TfLiteIntArray, data));
  F(TfLiteFloatArray, size); printf("TfLiteFloatArray.data %zu\n", offsetof(TfLiteFloatArray, data));
  S(TfLiteQuantizationParams); F(TfLiteQuantizationParams, scale); F(TfLiteQuantizationParams, zero_point);
  S(TfLiteQuantization); F(TfLiteQuantization, type); F(TfLiteQuantization, params);
  S(TfLiteAffineQuantization); F(TfLiteAffineQuantization, scale); F(TfLiteAffineQuantization, zero_point);
  F(TfLiteAffineQuantization, quantized_dimension);
  S(TfLitePtrUnion);
  S(TfLiteTensor);
  F(TfLiteTensor, type); F(TfLiteTensor, data); F(TfLiteTensor, dims); F(TfLiteTensor, params);
  F(TfLiteTensor, allocation_type); F(TfLiteTensor, bytes); F(TfLiteTensor, allocation); F(TfLiteTensor, name);
  F(TfLiteTensor, delegate); F(TfLiteTensor, buffer_handle); F(TfLiteTensor, data_is_stale);
  F(TfLiteTensor, is_variable); F(TfLiteTensor, quantization); F(TfLiteTensor, sparsity);
  F(TfLiteTensor, dims_signature);
  S(TfLiteNode);
  F(TfLiteNode, inputs); F(TfLiteNode, outputs); F(TfLiteNode, intermediates); F(TfLiteNode, temporaries);
  F(TfLiteNode, user_data); F(TfLiteNode, builtin_data); F(TfLiteNode, custom_initial_data);
  F(TfLiteNode, custom_initial_data_size); F(TfLiteNode, delegate); F(TfLiteNode, might_have_side_effect);
  S(TfLiteDelegateParams);
  F(TfLiteDelegateParams, delegate); F(TfLiteDelegateParams, nodes_to_replace);
  F(TfLiteDelegateParams, input_tensors); F(TfLiteDelegateParams, output_tensors);
  F(TfLiteContext, tensors_size); F(TfLiteContext, GetExecutionPlan); F(TfLiteContext, tensors);
  F(TfLiteContext, impl_); F(TfLiteContext, ResizeTensor); F(TfLiteContext, ReportError);
  F(TfLiteContext, AddTensors); F(TfLiteContext, GetNodeAndRegistration);
  F(TfLiteContext, ReplaceNodeSubsetsWithDelegateKernels); F(TfLiteContext, recommended_num_threads);
  F(TfLiteContext, GetExternalContext); F(TfLiteContext, SetExternalContext);
  F(TfLiteContext, allow_fp32_relax_to_fp16); F(TfLiteContext, profiler); F(TfLiteContext, AllocatePersistentBuffer);
  F(TfLiteContext, AllocateBufferForEval); F(TfLiteContext, RequestScratchBufferInArena);
  F(TfLiteContext, GetScratchBuffer); F(TfLiteContext, ResizeTensorExplicit);
  F(TfLiteContext, PreviewDelegatePartitioning); F(TfLiteContext, GetTensor); F(TfLiteContext, GetEvalTensor);
  F(TfLiteContext, GetModelMetadata);
  S(TfLiteRegistration);
  F(TfLiteRegistration, init); F(TfLiteRegistration, free); F(TfLiteRegistration, prepare);
  F(TfLiteRegistration, invoke); F(TfLiteRegistration, profiling_string); F(TfLiteRegistration, builtin_code);
  F(TfLiteRegistration, custom_name); F(TfLiteRegistration, version); F(TfLiteRegistration, registration_external);
  F(TfLiteRegistration, async_kernel); F(TfLiteRegistration, inplace_operator);
  S(TfLiteDelegate);
  F(TfLiteDelegate, data_); F(TfLiteDelegate, Prepare); F(TfLiteDelegate, CopyFromBufferHandle);
  F(TfLiteDelegate, CopyToBufferHandle); F(TfLiteDelegate, FreeBufferHandle); F(TfLiteDelegate, flags);
  F(TfLiteDelegate, opaque_delegate_builder);
  F(TfLiteFullyConnectedParams, activation); F(TfLiteFullyConnectedParams, weights_format);
  F(TfLiteFullyConnectedParams, keep_num_dims); F(TfLiteFullyConnectedParams, asymmetric_quantize_inputs);
  F(TfLiteConvParams, padding); F(TfLiteConvParams, stride_width); F(TfLiteConvParams, stride_height);
  F(TfLiteConvParams, activation); F(TfLiteConvParams, dilation_width_factor);
  F(TfLiteConvParams, dilation_height_factor);
  F(TfLiteDepthwiseConvParams, padding); F(TfLiteDepthwiseConvParams, stride_width);
  F(TfLiteDepthwiseConvParams, stride_height); F(TfLiteDepthwiseConvParams, depth_multiplier);
  F(TfLiteDepthwiseConvParams, activation); F(TfLiteDepthwiseConvParams, dilation_width_factor);
  F(TfLiteDepthwiseConvParams, dilation_height_factor);
  E(kTfLiteOk); E(kTfLiteError); E(kTfLiteFloat32); E(kTfLiteInt32); E(kTfLiteInt8);
  E(kTfLiteNoQuantization); E(kTfLiteAffineQuantization); E(kTfLiteMmapRo); E(kTfLiteArenaRw);
  E(kTfLitePaddingSame); E(kTfLitePaddingValid); E(kTfLiteActNone); E(kTfLiteActRelu); E(kTfLiteActReluN1To1);
  E(kTfLiteActRelu6); E(kTfLiteFullyConnectedWeightsFormatDefault); E(kTfLiteBuiltinConv2d);
  E(kTfLiteBuiltinDepthwiseConv2d); E(kTfLiteBuiltinFullyConnected); E(kTfLiteBuiltinCustom); E(kTfLiteUInt8);
  E(kTfLiteDelegateFlagsAllowDynamicTensors);
  return 0;
}
