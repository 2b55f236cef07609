/* Support code for running tflm_swap projects on emulated Cortex-M boards (QEMU, semihosting). */
#ifndef TSWAP_MCU_H_
#define TSWAP_MCU_H_

#include <stdint.h>

#include "tswap_micro.h"

#ifdef __cplusplus
extern "C" {
#endif

/* SysTick ticks since main started (40 instructions per tick under qemu -icount shift=0). */
uint64_t tswap_mcu_ticks(void);

/* The generated example's board hook: the image is memory-mapped at TSWAP_MCU_IMAGE_BASE (QEMU
 * places it there with -device loader). With TSWAP_MCU_DEFERRED_FLASH, start() only records a read
 * and poll() performs it, so the asynchronous path (prefetch) runs the way it would with a DMA. */
int tswap_board_flash_init(tswap_flash* flash);

#ifdef __cplusplus
}
#endif

#endif /* TSWAP_MCU_H_ */
