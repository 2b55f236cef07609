/* Paging for SwapInterpreter's paged XNNPACK stages (tflm_swap/runtime/compiled.py), off the
 * invoking thread.
 *
 *  - page-in: read mapped ranges (a stage's packed weights, file-backed; XNNPACK may map the file
 *    in more than one piece), in order, with one running CRC32, on one of PAGE_IN_THREADS threads
 *    (page-ins run side by side: where loads are the bottleneck, two cores fault pages in; kept
 *    from job to job, since starting a thread costs ~20 us). The read faults the pages in; the
 *    caller waits for the job and compares the CRC before the stage runs.
 *  - page-out: MADV_DONTNEED on a released stage's ranges, each first checked (through
 *    /proc/self/map_files) to be still the mapping of the file it was, since DONTNEED would discard
 *    whatever else were mapped there. A range that fails the check is left alone and reported by
 *    tflm_swap_pager_error. Page-outs run in order on one worker thread (a page-out costs ~35 us
 *    per MiB of page-table teardown, which the invoking thread then does not wait for), or at once
 *    on the calling thread when it asks.
 * A page-in starts only once every page-out queued before it has run: that order is what keeps the
 * pages held within the budget.
 *
 * A mapped file that shrinks (truncated while in use) turns a read of its lost pages into SIGBUS. So
 * a page-in first checks, with fstat, that each file it was given is still as long as when its
 * stage was built, and reads nothing when one is not; a truncation racing the read itself is caught
 * by a SIGBUS handler that jumps back out of the read (only on a page-in thread, in the read:
 * any other SIGBUS goes to the handler there was before, or kills as it would have). Either way the
 * caller gets an error code, not a signal.
 * Native because LiteRT's CompiledModel.run_by_index keeps Python's GIL while a stage runs, so a
 * Python thread could not start a page-in until the stage had finished. Called through ctypes,
 * which releases the GIL while a call waits. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tswap_crc32_fast.h"

#define TSWAP_EXPORT __attribute__((visibility("default")))
#define PAGE_IN_THREADS 2

typedef struct tswap_page_job {
  struct tswap_page_job* next;   /* page-outs: the queue; page-ins: the jobs in flight */
  struct tswap_page_job* prev;   /* page-ins in flight */
  struct tswap_page_job* queued; /* page-ins: the queue */
  int pieces;
  const void** data;
  size_t* len;
  int files;           /* page-in: files whose size is checked before the read */
  int* fds;
  uint64_t* sizes;     /* the least size each must have */
  int status;          /* page-in: TSWAP_PAGE_IN_OK, TSWAP_PAGE_IN_BUS or the short file's index */
  int64_t found_size;  /* page-in: that file's size (or -errno when fstat failed) */
  char** paths;        /* page-out: the file each range must still map */
  uint64_t after;      /* page-in: the worker's page-outs queued before it, to wait for */
  uint32_t crc;        /* page-in */
  uint64_t elapsed_ns; /* page-in */
  int done;            /* page-in */
  char failure[512]; /* page-out: the first range that failed its check */
} tswap_page_job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER; /* a job was queued, or one finished */
static tswap_page_job *head, *tail;      /* page-outs waiting for the worker */
static tswap_page_job* in_flight;        /* page-ins started and not yet waited for */
static tswap_page_job *in_head, *in_tail; /* page-ins waiting for a page-in thread */
static uint64_t outs_queued, outs_done;  /* page-outs queued for the worker so far, and done by it */
static pid_t worker_pid;                 /* the process that started the worker (a fork has none) */
static pid_t page_in_pid;                /* the process that started the page-in threads */
static char error[512]; /* the first page-out check that failed since the last tflm_swap_pager_error */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define TSWAP_PAGE_IN_OK (-1)
#define TSWAP_PAGE_IN_BUS (-2)

static void free_job(tswap_page_job* job) {
  if (job->paths != NULL)
    for (int i = 0; i < job->pieces; ++i) free(job->paths[i]);
  free(job->paths);
  free(job->fds);
  free(job->sizes);
  free(job->data);
  free(job->len);
  free(job);
}

/* SIGBUS while a page-in reads: the jump back out of the read, set only around it on that thread. */
static _Thread_local sigjmp_buf* bus_jump;
static struct sigaction bus_before; /* the handler there was before ours */

static void on_sigbus(int number, siginfo_t* info, void* context) {
  sigjmp_buf* jump = bus_jump;
  if (jump != NULL) siglongjmp(*jump, 1);
  if ((bus_before.sa_flags & SA_SIGINFO) != 0 && bus_before.sa_sigaction != NULL) {
    bus_before.sa_sigaction(number, info, context);
  } else if (bus_before.sa_handler != SIG_DFL && bus_before.sa_handler != SIG_IGN) {
    bus_before.sa_handler(number);
  } else { /* as before ours: the fault comes again (or the signal is delivered) and kills */
    sigaction(SIGBUS, &bus_before, NULL);
    raise(SIGBUS);
  }
}

static void install_bus_handler(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGBUS, &action, &bus_before);
}

/* The index of the first file shorter than it must be (its size, or -errno, in *found), or
 * TSWAP_PAGE_IN_OK. */
static int short_file(const tswap_page_job* job, int64_t* found) {
  for (int i = 0; i < job->files; ++i) {
    struct stat st;
    if (fstat(job->fds[i], &st) != 0) {
      *found = -(int64_t)errno;
      return i;
    }
    if ((uint64_t)st.st_size < job->sizes[i]) {
      *found = (int64_t)st.st_size;
      return i;
    }
  }
  return TSWAP_PAGE_IN_OK;
}

/* Read the job's ranges with one CRC32, guarded: a SIGBUS in the read makes it TSWAP_PAGE_IN_BUS. */
static int guarded_crc(const tswap_page_job* job, uint32_t* crc_out) {
  sigjmp_buf jump;
  volatile uint32_t crc = 0u;
  if (sigsetjmp(jump, 1) != 0) {
    bus_jump = NULL;
    return TSWAP_PAGE_IN_BUS;
  }
  bus_jump = &jump;
  for (int i = 0; i < job->pieces; ++i) crc = tswap_crc32_fast(crc, job->data[i], job->len[i]);
  bus_jump = NULL;
  *crc_out = crc;
  return TSWAP_PAGE_IN_OK;
}

static void page_in(tswap_page_job* job) {
  uint64_t start = now_ns();
  uint32_t crc = 0u;
  job->status = short_file(job, &job->found_size);
  if (job->status == TSWAP_PAGE_IN_OK) job->status = guarded_crc(job, &crc);
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

/* With the lock held: a page-out has run; keep its failure until tflm_swap_pager_error reports it. */
static void page_out_done(tswap_page_job* job) {
  if (error[0] == '\0' && job->failure[0] != '\0') memcpy(error, job->failure, sizeof error);
  free_job(job);
}

/* With the lock held: the queue's first page-out has run. */
static void dequeue_page_out(void) {
  tswap_page_job* job = head;
  head = job->next;
  if (head == NULL) tail = NULL;
  page_out_done(job);
  ++outs_done; /* in queue order: a page-in waiting for the first N waits for exactly those */
}

static void* page_out_worker(void* unused) {
  (void)unused;
  pthread_mutex_lock(&lock);
  for (;;) {
    while (head == NULL) pthread_cond_wait(&changed, &lock);
    tswap_page_job* job = head; /* stays queued (and counted) until it has run */
    pthread_mutex_unlock(&lock);
    page_out(job);
    pthread_mutex_lock(&lock);
    dequeue_page_out();
    pthread_cond_broadcast(&changed);
  }
  return NULL;
}

/* With the lock held (and again on return): run a page-in once the page-outs queued before it
 * have run. */
static void run_page_in(tswap_page_job* job) {
  while (outs_done < job->after) pthread_cond_wait(&changed, &lock);
  pthread_mutex_unlock(&lock);
  page_in(job);
  pthread_mutex_lock(&lock);
  job->done = 1;
  pthread_cond_broadcast(&changed);
}

static void* page_in_worker(void* unused) {
  (void)unused;
  pthread_mutex_lock(&lock);
  for (;;) {
    while (in_head == NULL) pthread_cond_wait(&changed, &lock);
    tswap_page_job* job = in_head;
    in_head = job->queued;
    if (in_head == NULL) in_tail = NULL;
    run_page_in(job);
  }
  return NULL;
}

/* With the lock held: start this process's page-in threads unless it has them; 0 when none could
 * be started (the caller then runs its page-in itself). */
static int start_page_in_threads(void) {
  if (page_in_pid == getpid()) return 1;
  int started = 0;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  for (int i = 0; i < PAGE_IN_THREADS; ++i) {
    pthread_t thread;
    started += pthread_create(&thread, &attr, page_in_worker, NULL) == 0;
  }
  pthread_attr_destroy(&attr);
  if (started > 0) page_in_pid = getpid();
  return started > 0;
}

/* fork(): the child has none of the parent's threads, so it finishes what they had to do, and
 * starts its own threads when it next pages; the lock is held across the fork, so the child's
 * copy of the state is consistent. */
static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_parent(void) { pthread_mutex_unlock(&lock); }
static void fork_child(void) {
  while (head != NULL) {
    page_out(head);
    dequeue_page_out();
  }
  for (tswap_page_job* job = in_flight; job != NULL; job = job->next) {
    if (!job->done) page_in(job);
    job->done = 1;
  }
  in_head = in_tail = NULL;
  worker_pid = page_in_pid = 0;
  /* fresh, not unlocked: the copies may record the parent's threads as waiting on them, which a
   * signal in the child would wait for forever */
  pthread_mutex_init(&lock, NULL);
  pthread_cond_init(&changed, NULL);
}

static void register_fork_handlers(void) {
  pthread_atfork(fork_prepare, fork_parent, fork_child);
  install_bus_handler();
}

static void once(void) {
  static pthread_once_t registered = PTHREAD_ONCE_INIT;
  pthread_once(&registered, register_fork_handlers);
}

/* With the lock held: queue a page-out, starting the worker if this process has none; 0 when no
 * thread could be started (the caller then runs the job itself). */
static int queue_page_out(tswap_page_job* job) {
  if (worker_pid != getpid()) { /* first use, or a forked child: the parent's worker is not here */
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int started = pthread_create(&thread, &attr, page_out_worker, NULL) == 0;
    pthread_attr_destroy(&attr);
    if (!started) return 0;
    worker_pid = getpid();
  }
  if (tail != NULL)
    tail->next = job;
  else
    head = job;
  tail = job;
  ++outs_queued;
  pthread_cond_broadcast(&changed);
  return 1;
}

static tswap_page_job* new_job(const void* const* data, const size_t* len, int pieces) {
  tswap_page_job* job = calloc(1, sizeof *job);
  size_t n = (size_t)(pieces > 0 ? pieces : 1);
  if (job == NULL) return NULL;
  job->status = TSWAP_PAGE_IN_OK;
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

/* Start a page-in of `pieces` ranges (`data[i]`, `len[i]` bytes; copied), with one CRC32, on a
 * page-in thread, once the page-outs asked for so far have run (those done here already have:
 * pages are asked for from one thread, the invoking one); NULL when out of memory. Without page-in
 * threads the job runs here. First, each of the `files` open files `fds[i]` (the mapped ones) must
 * be at least `sizes[i]` bytes long, or nothing is read (see tflm_swap_page_in_wait). */
TSWAP_EXPORT void* tflm_swap_page_in_start(const void* const* data, const size_t* len, int pieces,
                                           const int* fds, const uint64_t* sizes, int files) {
  tswap_page_job* job = new_job(data, len, pieces);
  if (job == NULL) return NULL;
  size_t n = (size_t)(files > 0 ? files : 1);
  job->fds = malloc(sizeof(int) * n);
  job->sizes = malloc(sizeof(uint64_t) * n);
  if (job->fds == NULL || job->sizes == NULL) {
    free_job(job);
    return NULL;
  }
  for (int i = 0; i < files; ++i) {
    job->fds[i] = fds[i];
    job->sizes[i] = sizes[i];
  }
  job->files = files;
  once();
  pthread_mutex_lock(&lock);
  job->after = outs_queued;
  job->next = in_flight;
  if (in_flight != NULL) in_flight->prev = job;
  in_flight = job;
  if (start_page_in_threads()) {
    if (in_tail != NULL)
      in_tail->queued = job;
    else
      in_head = job;
    in_tail = job;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    return job;
  }
  run_page_in(job);
  pthread_mutex_unlock(&lock);
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

/* Wait for the page-in and free it: TSWAP_PAGE_IN_OK (-1) with its CRC32 in `crc`; the index of
 * a file found shorter than it must be (nothing read; its size, or -errno, in `found_size`); or
 * TSWAP_PAGE_IN_BUS (-2): a SIGBUS in the read (a file shrank meanwhile). The time it took goes
 * in `elapsed_ns`. */
TSWAP_EXPORT int tflm_swap_page_in_wait(void* handle, uint32_t* crc, uint64_t* elapsed_ns, int64_t* found_size) {
  tswap_page_job* job = handle;
  pthread_mutex_lock(&lock);
  while (!job->done) pthread_cond_wait(&changed, &lock);
  if (job->prev != NULL)
    job->prev->next = job->next;
  else
    in_flight = job->next;
  if (job->next != NULL) job->next->prev = job->prev;
  pthread_mutex_unlock(&lock);
  int status = job->status;
  if (crc != NULL) *crc = job->crc;
  if (elapsed_ns != NULL) *elapsed_ns = job->elapsed_ns;
  if (found_size != NULL) *found_size = job->found_size;
  free_job(job);
  return status;
}

/* Give back `pieces` ranges, each checked to be still the mapping of `paths[i]` (NULL: not
 * checked; all copied): queued for the worker, or, with `here`, at once on the calling thread (the
 * caller is about to wait for a page-in anyway, so both run at once). Page-ins started later wait
 * for it either way. Returns 0, or -1 when out of memory (nothing done). */
TSWAP_EXPORT int tflm_swap_page_out(const void* const* data, const size_t* len, const char* const* paths,
                                    int pieces, int here) {
  tswap_page_job* job = new_job(data, len, pieces);
  if (job == NULL) return -1;
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
  once();
  pthread_mutex_lock(&lock);
  if (!here && queue_page_out(job)) {
    pthread_mutex_unlock(&lock);
    return 0;
  }
  pthread_mutex_unlock(&lock);
  page_out(job);
  pthread_mutex_lock(&lock);
  page_out_done(job);
  pthread_mutex_unlock(&lock);
  return 0;
}

/* Wait until every page-out asked for so far has run (page-ins are waited for one by one). */
TSWAP_EXPORT void tflm_swap_pager_flush(void) {
  pthread_mutex_lock(&lock);
  while (outs_done < outs_queued) pthread_cond_wait(&changed, &lock);
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
