// TFLM's timer interface (tensorflow/lite/micro/micro_time.h) on the QEMU boards: SysTick ticks,
// used instead of TFLM's reference micro_time.cc (which returns 0).
#include "tensorflow/lite/micro/micro_time.h"
#include "tswap_mcu.h"

namespace tflite {

// 25 MHz processor clock; under qemu -icount shift=0 a tick is 40 instructions.
uint32_t ticks_per_second() { return 25000000u; }

uint32_t GetCurrentTimeTicks() { return static_cast<uint32_t>(tswap_mcu_ticks()); }

}  // namespace tflite
