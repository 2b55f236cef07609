/* Background page-in for SwapInterpreter's paged XNNPACK stages (tflm_swap/runtime/compiled.py).
 *
 * A job reads mapped ranges (a stage's packed weights, file-backed; XNNPACK may map the file in
 * more than one piece), in order, with one running CRC32, on its own thread: the read faults the
 * pages in, and the caller compares the CRC before the stage runs.
 * The job is native because LiteRT's CompiledModel.run_by_index keeps Python's GIL while a stage
 * runs: a Python prefetch thread could not start until the stage had finished. Started and
 * joined through ctypes (which releases the GIL while it waits). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "tswap_crc32_fast.h"

#define TSWAP_EXPORT __attribute__((visibility("default")))

typedef struct {
  const void** data;
  size_t* len;
  int pieces;
  uint32_t crc;
  uint64_t elapsed_ns;
  atomic_int done;
  int threaded;
  pthread_t thread;
} tswap_page_job;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void* run_job(void* arg) {
  tswap_page_job* job = arg;
  uint64_t start = now_ns();
  uint32_t crc = 0u;
  for (int i = 0; i < job->pieces; ++i) crc = tswap_crc32_fast(crc, job->data[i], job->len[i]);
  job->crc = crc;
  job->elapsed_ns = now_ns() - start;
  atomic_store(&job->done, 1);
  return NULL;
}

static void free_job(tswap_page_job* job) {
  free(job->data);
  free(job->len);
  free(job);
}

/* Start reading `pieces` ranges (`data[i]`, `len[i]` bytes; copied) with one CRC32 on a new thread;
 * NULL when out of memory. Without a thread (pthread_create failed) the job runs here. */
TSWAP_EXPORT void* tflm_swap_page_in_start(const void* const* data, const size_t* len, int pieces) {
  tswap_page_job* job = calloc(1, sizeof *job);
  if (job == NULL) return NULL;
  job->data = malloc(sizeof(void*) * (size_t)(pieces > 0 ? pieces : 1));
  job->len = malloc(sizeof(size_t) * (size_t)(pieces > 0 ? pieces : 1));
  if (job->data == NULL || job->len == NULL) {
    free_job(job);
    return NULL;
  }
  for (int i = 0; i < pieces; ++i) {
    job->data[i] = data[i];
    job->len[i] = len[i];
  }
  job->pieces = pieces;
  atomic_init(&job->done, 0);
  job->threaded = pthread_create(&job->thread, NULL, run_job, job) == 0;
  if (!job->threaded) run_job(job);
  return job;
}

/* Whether the job has finished (it still has to be waited for). */
TSWAP_EXPORT int tflm_swap_page_in_done(void* handle) {
  return atomic_load(&((tswap_page_job*)handle)->done);
}

/* Wait for the job and free it: its CRC32, and the time it took in `elapsed_ns`. */
TSWAP_EXPORT uint32_t tflm_swap_page_in_wait(void* handle, uint64_t* elapsed_ns) {
  tswap_page_job* job = handle;
  if (job->threaded) pthread_join(job->thread, NULL);
  uint32_t crc = job->crc;
  if (elapsed_ns != NULL) *elapsed_ns = job->elapsed_ns;
  free_job(job);
  return crc;
}
