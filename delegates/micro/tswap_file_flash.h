/* A flash driver backed by a file (hosted builds: tests, the host runner, the example on a PC).
 * With `deferred` set, start() only records the request and poll() performs it, which exercises
 * the asynchronous path of tswap_load_start/tswap_load_wait the way a DMA would. */
#ifndef TSWAP_FILE_FLASH_H_
#define TSWAP_FILE_FLASH_H_

#include <stdio.h>

#include "tswap_micro.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tswap_file_flash {
  FILE* file;
  int deferred;
  uint32_t pending_addr, pending_len;
  void* pending_dst;
  int has_pending;
} tswap_file_flash;

/* Opens `path` and fills `flash` (base 0, size = file size). Returns 0 or -1 (errno set). */
int tswap_file_flash_open(tswap_flash* flash, tswap_file_flash* ff, const char* path, int deferred);
void tswap_file_flash_close(tswap_file_flash* ff);

#ifdef __cplusplus
}
#endif

#endif /* TSWAP_FILE_FLASH_H_ */
