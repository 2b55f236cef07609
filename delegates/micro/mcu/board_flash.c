/* Memory-mapped "external flash" for the QEMU boards: the image is loaded by QEMU at
 * TSWAP_MCU_IMAGE_BASE (-device loader,file=IMAGE.bin,addr=...), a read is a memcpy. */
#include <string.h>

#include "tswap_mcu.h"

#ifndef TSWAP_MCU_IMAGE_BASE
#define TSWAP_MCU_IMAGE_BASE 0x21000000u /* mps2-an386: 16 MiB PSRAM */
#endif
#ifndef TSWAP_MCU_IMAGE_SIZE
#define TSWAP_MCU_IMAGE_SIZE (16u << 20)
#endif

typedef struct {
  uint32_t addr, len;
  void* dst;
  int pending;
} deferred_read;

static deferred_read pending_read;

static int mm_read(void* ctx, uint32_t addr, void* dst, uint32_t len) {
  (void)ctx;
  memcpy(dst, (const void*)(uintptr_t)addr, len);
  return 0;
}

static int mm_start(void* ctx, uint32_t addr, void* dst, uint32_t len) {
  deferred_read* r = (deferred_read*)ctx;
  if (r->pending) return -1;
  r->addr = addr;
  r->dst = dst;
  r->len = len;
  r->pending = 1;
  return 0;
}

static int mm_poll(void* ctx) {
  deferred_read* r = (deferred_read*)ctx;
  if (!r->pending) return -1;
  r->pending = 0;
  return mm_read(ctx, r->addr, r->dst, r->len) == 0 ? 1 : -1;
}

int tswap_board_flash_init(tswap_flash* flash) {
  memset(flash, 0, sizeof(*flash));
  memset(&pending_read, 0, sizeof(pending_read));
  flash->read = mm_read;
#ifdef TSWAP_MCU_DEFERRED_FLASH
  flash->start = mm_start;
  flash->poll = mm_poll;
#else
  (void)mm_start;
  (void)mm_poll;
#endif
  flash->ctx = &pending_read;
  flash->base = TSWAP_MCU_IMAGE_BASE;
  flash->size = TSWAP_MCU_IMAGE_SIZE;
  flash->align = 4;
  return 0;
}
