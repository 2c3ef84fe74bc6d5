// XLA:CPU's scratch kept between calls: a library that train.py preloads (LD_PRELOAD) into its own process.
//
// XLA:CPU allocates each execution's temporary block (a training step's activations and gradients: 2.8 GiB for
// the ENAS child at batch 64, 576 MiB for its eval forward) with posix_memalign and frees it when the execution
// ends. glibc serves a block that large with a fresh mmap, so every call faults in and the kernel zeroes all of
// it again (on the 2-core Xeon VMs: 0.1-1.4 s of kernel time per step). glibc cannot keep it: a thread's arena
// maps blocks above 64 MiB itself whatever M_MMAP_MAX says, and one arena without mmap lets small allocations
// split the freed block, after which the next step's block is mapped beside it (the ENAS step's peak 3977 ->
// 6760 MiB; benchmarks/README.md).
//
// glibc's mmap threshold, which rises to the size of the last mapped block freed, stops at 32 MiB: every block
// from there up is mapped afresh. Blocks that large are taken here, not only the step's: an eval forward's
// (33 MiB for CIFAR MobileNetV2 at batch 64) left to glibc beside a kept step block took 4x the kernel time for
// the same faults on the 2-core VMs these figures come from (forward 0.10 s against 0.063 s without the library,
// 0.060 s with the block taken here). Those VMs report freed memory to their host (`page_reporting` on the
// kernel's command line), likely why pages freed long ago fault in slower than a block just unmapped.
//
// Here a posix_memalign of LARGE bytes or more is mapped whole and, when freed, kept idle for the next request
// of the same size (rounded to 2 MiB), which gets the same pages back: no faults, no zeroing. Idle blocks are
// unmapped as soon as a large request finds none of its size, so at no time is more mapped than glibc would
// have kept: a step whose block is idle while another program runs (an evaluation between epochs) maps its
// own again afterwards, as before. Everything else (malloc, smaller or more aligned requests, frees of other
// pointers) goes to the C library underneath. Not interposed: malloc_usable_size and the like, which must not be
// given a block of ours (XLA does not call them on its buffers).
//
// XLA frees a call's block on one of its threads just after the call's outputs are ready, and the next call,
// started on another thread by those outputs, asks for its block at once: 0.1-3 ms before the free, as measured.
// A request that finds no idle block of its size while one of that size is live therefore waits a moment for it
// (at most as long as the kernel would take to zero the new block, so never much longer than a miss costs)
// rather than mapping a second block, which would then stay mapped beside the first for good.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { SLOTS = 64 };                        // blocks mapped at once, live or idle; beyond that, glibc's
static const size_t LARGE = 32UL << 20;    // glibc maps every block from here up afresh (see the header)
static const size_t HUGE_PAGE = 2UL << 20;  // blocks are sized and aligned to transparent huge pages
static const double ZEROING_BYTES_PER_SECOND = 10e9;  // the most a request waits for a twin: this block's zeroing

typedef struct {
  void* address;  // NULL: a free slot
  size_t size;
  int live;
} Block;

static Block blocks[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t freed = PTHREAD_COND_INITIALIZER;  // a live block became idle
// Every block ever mapped lies within [lowest, highest): free() of anything outside is the C library's at once.
static uintptr_t lowest = UINTPTR_MAX, highest = 0;

static int (*next_posix_memalign)(void**, size_t, size_t);
static void (*next_free)(void*);
static void* (*next_realloc)(void*, size_t);

// A child forked while another thread held the lock would never get it: the lock is taken around fork.
static void before_fork(void) { pthread_mutex_lock(&lock); }
static void after_fork(void) { pthread_mutex_unlock(&lock); }

// Run when the library loads, before the program's first allocation; called again if a C library's own start-up
// allocates first.
static void find_next(void) {
  next_posix_memalign = (int (*)(void**, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
  next_free = (void (*)(void*))dlsym(RTLD_NEXT, "free");
  next_realloc = (void* (*)(void*, size_t))dlsym(RTLD_NEXT, "realloc");
}

__attribute__((constructor)) static void start(void) {
  find_next();
  pthread_atfork(before_fork, after_fork, after_fork);
}

// The slot of an idle block of `size`, -1 if none; whether any block of `size` is live goes to *twin_live.
// Called with the lock held.
static int idle_block(size_t size, int* twin_live) {
  *twin_live = 0;
  for (int i = 0; i < SLOTS; ++i) {
    if (blocks[i].address == NULL || blocks[i].size != size) continue;
    if (!blocks[i].live) return i;
    *twin_live = 1;
  }
  return -1;
}

// Called with the lock held.
static void unmap_idle(void) {
  for (int i = 0; i < SLOTS; ++i) {
    if (blocks[i].address != NULL && !blocks[i].live) {
      munmap(blocks[i].address, blocks[i].size);
      __atomic_store_n(&blocks[i].address, NULL, __ATOMIC_RELAXED);
    }
  }
}

// `size` bytes mapped at a multiple of HUGE_PAGE (so that every page of it can be a huge one); NULL if none.
static void* map_aligned(size_t size) {
  char* mapped = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return NULL;
  char* address = (char*)(((uintptr_t)mapped + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE);
  if (address > mapped) munmap(mapped, (size_t)(address - mapped));
  munmap(address + size, (size_t)(mapped + HUGE_PAGE - address));
  madvise(address, size, MADV_HUGEPAGE);  // fewer faults the first time (as glibc.malloc.hugetlb=1 asks)
  return address;
}

static struct timespec deadline_for(size_t size) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  const long long nanoseconds = deadline.tv_nsec + (long long)((double)size / ZEROING_BYTES_PER_SECOND * 1e9);
  deadline.tv_sec += (time_t)(nanoseconds / 1000000000LL);
  deadline.tv_nsec = (long)(nanoseconds % 1000000000LL);
  return deadline;
}

static void* take(size_t size) {
  const size_t rounded = (size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
  pthread_mutex_lock(&lock);
  int twin_live;
  int slot = idle_block(rounded, &twin_live);
  if (slot < 0 && twin_live) {  // the previous call's block, about to be freed: wait for it (see the header)
    const struct timespec deadline = deadline_for(rounded);
    while ((slot = idle_block(rounded, &twin_live)) < 0 && twin_live) {
      if (pthread_cond_timedwait(&freed, &lock, &deadline) == ETIMEDOUT) {
        slot = idle_block(rounded, &twin_live);
        break;
      }
    }
  }
  if (slot >= 0) {
    blocks[slot].live = 1;
    pthread_mutex_unlock(&lock);
    return blocks[slot].address;
  }
  unmap_idle();  // none of this size: the idle ones would only add to the process's memory
  slot = 0;
  while (slot < SLOTS && blocks[slot].address != NULL) ++slot;
  void* address = slot < SLOTS ? map_aligned(rounded) : NULL;
  if (address == NULL) {
    pthread_mutex_unlock(&lock);
    return NULL;
  }
  blocks[slot].size = rounded;
  blocks[slot].live = 1;
  __atomic_store_n(&blocks[slot].address, address, __ATOMIC_RELAXED);
  if ((uintptr_t)address < lowest) __atomic_store_n(&lowest, (uintptr_t)address, __ATOMIC_RELAXED);
  if ((uintptr_t)address + rounded > highest) __atomic_store_n(&highest, (uintptr_t)address + rounded, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&lock);
  return address;
}

// The live block at `address`' size, 0 if `address` is not one. Called with the lock held.
static size_t live_size(const void* address) {
  for (int i = 0; i < SLOTS; ++i) {
    if (blocks[i].address == address && blocks[i].live) return blocks[i].size;
  }
  return 0;
}

// Whether some slot holds `address`, without the lock (frees of the C library's pointers within the blocks'
// address range must not all wait on it): a slot's address is written under the lock, read atomically here.
static int maybe_ours(const void* address) {
  if ((uintptr_t)address < __atomic_load_n(&lowest, __ATOMIC_RELAXED) ||
      (uintptr_t)address >= __atomic_load_n(&highest, __ATOMIC_RELAXED)) return 0;
  for (int i = 0; i < SLOTS; ++i) {
    if (__atomic_load_n(&blocks[i].address, __ATOMIC_RELAXED) == address) return 1;
  }
  return 0;
}

// Marks the live block at `address` idle; 0 if `address` is not one of them.
static int give_back(void* address) {
  if (!maybe_ours(address)) return 0;
  pthread_mutex_lock(&lock);
  int found = 0;
  for (int i = 0; i < SLOTS && !found; ++i) {
    if (blocks[i].address == address && blocks[i].live) {
      blocks[i].live = 0;
      found = 1;
    }
  }
  if (found) pthread_cond_broadcast(&freed);
  pthread_mutex_unlock(&lock);
  return found;
}

int posix_memalign(void** out, size_t alignment, size_t size) {
  if (next_posix_memalign == NULL) find_next();
  // A valid alignment (a power of two, a multiple of sizeof(void*): otherwise the C library's EINVAL) that a huge
  // page satisfies, and a size that rounding up to huge pages cannot wrap (otherwise the C library's ENOMEM).
  const int valid_alignment = alignment != 0 && alignment % sizeof(void*) == 0 && (alignment & (alignment - 1)) == 0;
  if (size >= LARGE && size <= SIZE_MAX - 2 * HUGE_PAGE && valid_alignment && alignment <= HUGE_PAGE) {
    void* address = take(size);
    if (address != NULL) {
      *out = address;
      return 0;
    }
  }
  return next_posix_memalign(out, alignment, size);
}

void free(void* address) {
  if (address == NULL || give_back(address)) return;
  // next_free is NULL only before this library's constructor, where finding it (dlsym) could free and recurse: a
  // C library's pointer freed that early is left alone.
  if (next_free != NULL) next_free(address);
}

void* realloc(void* address, size_t size) {
  if (address != NULL && maybe_ours(address)) {
    pthread_mutex_lock(&lock);
    const size_t old_size = live_size(address);
    pthread_mutex_unlock(&lock);
    if (old_size > 0 && size == 0) {  // as glibc: freed, NULL returned
      give_back(address);
      return NULL;
    }
    if (old_size > 0) {  // one of ours: moved into the C library's memory
      void* moved = next_realloc(NULL, size);
      if (moved != NULL) {
        memcpy(moved, address, old_size < size ? old_size : size);
        give_back(address);
      }
      return moved;
    }
  }
  if (next_realloc == NULL) find_next();
  return next_realloc(address, size);
}
