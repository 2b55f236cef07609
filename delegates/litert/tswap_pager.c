/* Paging for SwapInterpreter's paged XNNPACK stages (tflm_swap/runtime/compiled.py), off the
 * invoking thread.
 *
 * One worker thread per process runs jobs in the order they were queued:
 *  - page-in: read mapped ranges (a stage's packed weights, file-backed; XNNPACK may map the file
 *    in more than one piece), in order, with one running CRC32. The read faults the pages in; the
 *    caller waits for the job and compares the CRC before the stage runs.
 *  - page-out: MADV_DONTNEED on a released stage's ranges, each first checked (through
 *    /proc/self/map_files) to be still the mapping of the file it was, since DONTNEED would discard
 *    whatever else were mapped there. A range that fails the check is left alone and reported by
 *    tflm_swap_pager_error.
 * Queue order is what keeps memory bounded: a page-out queued before a page-in is done first.
 * Native because LiteRT's CompiledModel.run_by_index keeps Python's GIL while a stage runs, so a
 * Python thread could not start a page-in until the stage had finished; and because a page-out
 * costs ~35 us per MiB (page-table teardown), which the invoking thread no longer waits for.
 * Called through ctypes, which releases the GIL while a call waits. */
#define _DEFAULT_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "tswap_crc32_fast.h"

#define TSWAP_EXPORT __attribute__((visibility("default")))

typedef struct tswap_page_job {
  struct tswap_page_job* next;
  int page_out; /* else page-in */
  int pieces;
  const void** data;
  size_t* len;
  char** paths; /* page-out: the file each range must still map */
  uint32_t crc;
  uint64_t elapsed_ns;
  int done;
  int detached; /* page-out: nobody waits; the worker frees it */
  char failure[512]; /* page-out: the first range that failed its check */
} tswap_page_job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queued = PTHREAD_COND_INITIALIZER; /* a job was queued */
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER; /* a job finished */
static tswap_page_job *head, *tail, *current; /* the queue, and the job the worker runs */
static int running; /* jobs queued or running */
static pid_t worker_pid; /* the process that started the worker (a fork has none) */
static char error[512]; /* the first page-out check that failed since the last tflm_swap_pager_error */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void free_job(tswap_page_job* job) {
  if (job->paths != NULL)
    for (int i = 0; i < job->pieces; ++i) free(job->paths[i]);
  free(job->paths);
  free(job->data);
  free(job->len);
  free(job);
}

static void page_in(tswap_page_job* job) {
  uint64_t start = now_ns();
  uint32_t crc = 0u;
  for (int i = 0; i < job->pieces; ++i) crc = tswap_crc32_fast(crc, job->data[i], job->len[i]);
  job->crc = crc;
  job->elapsed_ns = now_ns() - start;
}

/* Whether [lo, lo + len) is still exactly the mapping of `path`. */
static int still_mapped(uintptr_t lo, size_t len, const char* path) {
  char link[64], target[4096];
  snprintf(link, sizeof link, "/proc/self/map_files/%lx-%lx", (unsigned long)lo, (unsigned long)(lo + len));
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) return 0;
  target[n] = '\0';
  return strcmp(target, path) == 0;
}

/* Give back a page-out job's ranges. A range that fails its check is left alone; the first such is
 * described in job->failure, for the caller to report under the lock. */
static void page_out(tswap_page_job* job) {
  for (int i = 0; i < job->pieces; ++i) {
    uintptr_t lo = (uintptr_t)job->data[i];
    if (job->paths[i] != NULL && !still_mapped(lo, job->len[i], job->paths[i])) {
      if (job->failure[0] == '\0')
        snprintf(job->failure, sizeof job->failure, "%s is no longer mapped at %#lx-%#lx (LiteRT remapped it): "
                 "not giving its pages back", job->paths[i], (unsigned long)lo, (unsigned long)(lo + job->len[i]));
      continue;
    }
    madvise((void*)lo, job->len[i], MADV_DONTNEED);
  }
}

/* With the lock held: keep the first failure until tflm_swap_pager_error reports it. */
static void record_failure(const tswap_page_job* job) {
  if (error[0] == '\0' && job->failure[0] != '\0') memcpy(error, job->failure, sizeof error);
}

static void* worker(void* unused) {
  (void)unused;
  pthread_mutex_lock(&lock);
  for (;;) {
    while (head == NULL) pthread_cond_wait(&queued, &lock);
    tswap_page_job* job = head;
    head = job->next;
    if (head == NULL) tail = NULL;
    current = job;
    pthread_mutex_unlock(&lock);
    if (job->page_out)
      page_out(job);
    else
      page_in(job);
    pthread_mutex_lock(&lock);
    record_failure(job);
    current = NULL;
    --running;
    if (job->detached)
      free_job(job);
    else
      job->done = 1;
    pthread_cond_broadcast(&finished);
  }
  return NULL;
}

/* fork(): the child has no worker, so it finishes what the parent's had queued, and starts its own
 * at its next job; the lock is held across the fork, so the child's copy is consistent. */
static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_parent(void) { pthread_mutex_unlock(&lock); }
static void fork_child(void) {
  tswap_page_job* job = current != NULL ? current : head;
  while (job != NULL) {
    tswap_page_job* next = job == current ? head : job->next;
    if (job->page_out)
      page_out(job);
    else
      page_in(job);
    record_failure(job);
    if (job->detached)
      free_job(job);
    else
      job->done = 1;
    job = next;
  }
  head = tail = current = NULL;
  running = 0;
  worker_pid = 0;
  pthread_mutex_unlock(&lock);
}

static void register_fork_handlers(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

/* Queue `job`, starting the worker if this process has none; 0 when no thread could be started
 * (the caller then runs the job itself). */
static int enqueue(tswap_page_job* job) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_fork_handlers);
  pthread_mutex_lock(&lock);
  if (worker_pid != getpid()) { /* first use, or a forked child: the parent's worker is not here */
    pthread_t thread;
    pthread_attr_t attr;
    head = tail = NULL;
    running = 0;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int started = pthread_create(&thread, &attr, worker, NULL) == 0;
    pthread_attr_destroy(&attr);
    if (!started) {
      pthread_mutex_unlock(&lock);
      return 0;
    }
    worker_pid = getpid();
  }
  if (tail != NULL)
    tail->next = job;
  else
    head = job;
  tail = job;
  ++running;
  pthread_cond_signal(&queued);
  pthread_mutex_unlock(&lock);
  return 1;
}

static tswap_page_job* new_job(const void* const* data, const size_t* len, int pieces) {
  tswap_page_job* job = calloc(1, sizeof *job);
  size_t n = (size_t)(pieces > 0 ? pieces : 1);
  if (job == NULL) return NULL;
  job->data = malloc(sizeof(void*) * n);
  job->len = malloc(sizeof(size_t) * n);
  if (job->data == NULL || job->len == NULL) {
    free_job(job);
    return NULL;
  }
  for (int i = 0; i < pieces; ++i) {
    job->data[i] = data[i];
    job->len[i] = len[i];
  }
  job->pieces = pieces;
  return job;
}

/* Queue a page-in of `pieces` ranges (`data[i]`, `len[i]` bytes; copied), with one CRC32; NULL when
 * out of memory. Without a worker thread the job runs here. */
TSWAP_EXPORT void* tflm_swap_page_in_start(const void* const* data, const size_t* len, int pieces) {
  tswap_page_job* job = new_job(data, len, pieces);
  if (job != NULL && !enqueue(job)) {
    page_in(job);
    job->done = 1;
  }
  return job;
}

/* Whether the page-in has finished (it still has to be waited for). */
TSWAP_EXPORT int tflm_swap_page_in_done(void* handle) {
  tswap_page_job* job = handle;
  pthread_mutex_lock(&lock);
  int done = job->done;
  pthread_mutex_unlock(&lock);
  return done;
}

/* Wait for the page-in and free it: its CRC32, and the time it took in `elapsed_ns`. */
TSWAP_EXPORT uint32_t tflm_swap_page_in_wait(void* handle, uint64_t* elapsed_ns) {
  tswap_page_job* job = handle;
  pthread_mutex_lock(&lock);
  while (!job->done) pthread_cond_wait(&finished, &lock);
  pthread_mutex_unlock(&lock);
  uint32_t crc = job->crc;
  if (elapsed_ns != NULL) *elapsed_ns = job->elapsed_ns;
  free_job(job);
  return crc;
}

/* Queue a page-out of `pieces` ranges, each checked to be still the mapping of `paths[i]` (NULL:
 * not checked; all copied). Returns 0, or -1 when out of memory (nothing queued). Without a worker
 * thread it runs here. */
TSWAP_EXPORT int tflm_swap_page_out(const void* const* data, const size_t* len, const char* const* paths,
                                    int pieces) {
  tswap_page_job* job = new_job(data, len, pieces);
  if (job == NULL) return -1;
  job->page_out = 1;
  job->paths = calloc((size_t)(pieces > 0 ? pieces : 1), sizeof(char*));
  if (job->paths == NULL) {
    free_job(job);
    return -1;
  }
  for (int i = 0; i < pieces; ++i) {
    if (paths[i] == NULL) continue;
    job->paths[i] = strdup(paths[i]);
    if (job->paths[i] == NULL) {
      free_job(job);
      return -1;
    }
  }
  job->detached = 1;
  if (!enqueue(job)) {
    page_out(job);
    pthread_mutex_lock(&lock);
    record_failure(job);
    pthread_mutex_unlock(&lock);
    free_job(job);
  }
  return 0;
}

/* Wait until every queued job has finished. */
TSWAP_EXPORT void tflm_swap_pager_flush(void) {
  pthread_mutex_lock(&lock);
  while (worker_pid == getpid() && running > 0) pthread_cond_wait(&finished, &lock);
  pthread_mutex_unlock(&lock);
}

/* Copy the first failed page-out check since the last call into `message` (`size` bytes) and
 * clear it; 1 if there was one, else 0. */
TSWAP_EXPORT int tflm_swap_pager_error(char* message, size_t size) {
  pthread_mutex_lock(&lock);
  int failed = error[0] != '\0';
  if (failed && size > 0) snprintf(message, size, "%s", error);
  error[0] = '\0';
  pthread_mutex_unlock(&lock);
  return failed;
}
