/* File-backed flash driver for hosted builds; see tswap_file_flash.h. */
#include "tswap_file_flash.h"

#include <limits.h>
#include <string.h>

static int file_read(void* ctx, uint32_t addr, void* dst, uint32_t len) {
  tswap_file_flash* ff = (tswap_file_flash*)ctx;
  if (fseek(ff->file, (long)addr, SEEK_SET) != 0) return -1;
  return fread(dst, 1, len, ff->file) == len ? 0 : -1;
}

static int file_start(void* ctx, uint32_t addr, void* dst, uint32_t len) {
  tswap_file_flash* ff = (tswap_file_flash*)ctx;
  if (ff->has_pending) return -1;
  ff->pending_addr = addr;
  ff->pending_dst = dst;
  ff->pending_len = len;
  ff->has_pending = 1;
  return 0;
}

static int file_poll(void* ctx) {
  tswap_file_flash* ff = (tswap_file_flash*)ctx;
  if (!ff->has_pending) return -1;
  ff->has_pending = 0;
  return file_read(ctx, ff->pending_addr, ff->pending_dst, ff->pending_len) == 0 ? 1 : -1;
}

/* A file size the 32-bit flash address space can hold. Where long is 32 bits every non-negative
 * long fits (comparing with (long)UINT32_MAX there would compare with -1 and refuse every file). */
static int size_fits(long size) {
#if LONG_MAX > 0xFFFFFFFF
  return size <= 0xFFFFFFFFL;
#else
  (void)size;
  return 1;
#endif
}

int tswap_file_flash_open(tswap_flash* flash, tswap_file_flash* ff, const char* path, int deferred) {
  long size;
  memset(ff, 0, sizeof(*ff));
  memset(flash, 0, sizeof(*flash));
  ff->file = fopen(path, "rb");
  if (ff->file == NULL) return -1;
  if (fseek(ff->file, 0, SEEK_END) != 0 || (size = ftell(ff->file)) < 0 || !size_fits(size)) {
    fclose(ff->file);
    ff->file = NULL;
    return -1;
  }
  ff->deferred = deferred;
  flash->read = file_read;
  if (deferred) {
    flash->start = file_start;
    flash->poll = file_poll;
  }
  flash->ctx = ff;
  flash->size = (uint32_t)size;
  flash->align = 4;
  return 0;
}

void tswap_file_flash_close(tswap_file_flash* ff) {
  if (ff->file != NULL) fclose(ff->file);
  ff->file = NULL;
}
