// The model-specific part of the host runner: tflm_swap generates a source defining these for each
// model's set of operators (tflm_swap/micro/host.py), so the runner registers what the model uses.
#ifndef TSWAP_HOST_OPS_H_
#define TSWAP_HOST_OPS_H_

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

namespace tswap_host {

constexpr unsigned kResolverCapacity = 128;  // the model's builtins + tswap::kResolverSlots
using Resolver = tflite::MicroMutableOpResolver<kResolverCapacity>;

// Registers every builtin operator of the model (all subgraphs).
TfLiteStatus AddModelOps(Resolver& resolver);

// Distinct resource variables of the model (0: stateless).
extern const int kResourceVariables;

}  // namespace tswap_host

#endif  // TSWAP_HOST_OPS_H_
