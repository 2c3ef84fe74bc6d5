// XLA:CPU's scratch kept between calls: a library that train.py preloads (LD_PRELOAD) into its own process.
//
// XLA:CPU allocates each execution's temporary block (a training step's activations and gradients: 2.8 GiB for
// the ENAS child at batch 64, 576 MiB for its eval forward) with posix_memalign and frees it when the execution
// ends. glibc serves a block that large with a fresh mmap, so every call faults in and the kernel zeroes all of
// it again (on the 2-core Xeon VMs: 0.1-0.45 s of kernel time per ENAS step or forward). glibc cannot keep it:
// a thread's arena maps blocks above 64 MiB itself whatever M_MMAP_MAX says, and one arena without mmap lets
// small allocations split the freed block, after which the next step's block is mapped beside it (the ENAS
// step's peak 3977 -> 6760 MiB; benchmarks/README.md).
//
// Here a posix_memalign of LARGE bytes or more is mapped whole and, when freed, kept idle for the next request
// of the same size (rounded to 2 MiB), which gets the same pages back: no faults, no zeroing. Idle blocks are
// unmapped as soon as a large request finds none of its size, so at no time is more mapped than glibc would
// have kept: a step whose block is idle while another program runs (an evaluation between epochs) maps its
// own again afterwards, as before. Everything else (malloc, smaller or more aligned requests, frees of other
// pointers) goes to the C library underneath.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

enum { SLOTS = 64 };                       // blocks mapped at once, live or idle; beyond that, glibc's
static const size_t LARGE = 64UL << 20;   // glibc's thread arenas map blocks from here up themselves
static const size_t ROUNDING = 2UL << 20;  // a transparent huge page

typedef struct {
  void* address;  // NULL: a free slot
  size_t size;
  int live;
} Block;

static Block blocks[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
// Every block ever mapped lies within [lowest, highest): free() of anything outside is the C library's at once.
static uintptr_t lowest = UINTPTR_MAX, highest = 0;

static int (*next_posix_memalign)(void**, size_t, size_t);
static void (*next_free)(void*);
static void* (*next_realloc)(void*, size_t);

// Run when the library loads, before the program's first allocation; called again if a C library's own start-up
// allocates first.
__attribute__((constructor)) static void find_next(void) {
  next_posix_memalign = (int (*)(void**, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
  next_free = (void (*)(void*))dlsym(RTLD_NEXT, "free");
  next_realloc = (void* (*)(void*, size_t))dlsym(RTLD_NEXT, "realloc");
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

static void* take(size_t size) {
  const size_t rounded = (size + ROUNDING - 1) / ROUNDING * ROUNDING;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; ++i) {
    if (blocks[i].address != NULL && !blocks[i].live && blocks[i].size == rounded) {
      blocks[i].live = 1;
      pthread_mutex_unlock(&lock);
      return blocks[i].address;
    }
  }
  unmap_idle();  // none of this size: the idle ones would only add to the process's memory
  int slot = 0;
  while (slot < SLOTS && blocks[slot].address != NULL) ++slot;
  void* address = slot < SLOTS ? mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                               : MAP_FAILED;
  if (address == MAP_FAILED) {
    pthread_mutex_unlock(&lock);
    return NULL;
  }
  madvise(address, rounded, MADV_HUGEPAGE);  // fewer faults the first time (as glibc.malloc.hugetlb=1 asks)
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
  pthread_mutex_unlock(&lock);
  return found;
}

int posix_memalign(void** out, size_t alignment, size_t size) {
  if (next_posix_memalign == NULL) find_next();
  if (size >= LARGE && alignment <= 4096) {  // mmap's pages are 4096-aligned
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
  if (next_free == NULL) find_next();
  if (next_free != NULL) next_free(address);  // (NULL only while dlsym itself frees, before any block exists)
}

void* realloc(void* address, size_t size) {
  if (address != NULL && maybe_ours(address)) {
    pthread_mutex_lock(&lock);
    const size_t old_size = live_size(address);
    pthread_mutex_unlock(&lock);
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
