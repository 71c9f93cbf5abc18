/* alloc_counter.c - LD_PRELOAD interposer that counts heap and mapping calls
 * made by one watched thread.
 *
 * glibc has no malloc hooks any more, so the no-allocation test preloads this
 * library, tells it the loop thread's tid (alloc_watch) and later reads how many
 * allocation calls that thread made (alloc_count). Other threads pass through
 * untouched. The real allocator is reached through glibc's __libc_* entry points,
 * mmap through the raw syscall, so interposing never recurses.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

static volatile pid_t watched;          /* 0: count nothing */
static uint64_t counted;
static __thread pid_t my_tid;

static void note(void)
{
    if (!watched)
        return;
    if (!my_tid)
        my_tid = (pid_t)syscall(SYS_gettid);
    if (my_tid == watched)
        __atomic_fetch_add(&counted, 1, __ATOMIC_RELAXED);
}

void alloc_watch(int tid) { __atomic_store_n(&counted, 0, __ATOMIC_RELAXED); watched = tid; }
uint64_t alloc_count(void) { return __atomic_load_n(&counted, __ATOMIC_RELAXED); }

void *malloc(size_t n) { note(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { note(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { note(); return __libc_realloc(p, n); }
void free(void *p) { if (p) note(); __libc_free(p); }
void *memalign(size_t a, size_t n) { note(); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { note(); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n)
{
    note();
    *out = __libc_memalign(a, n);
    return *out ? 0 : 12; /* ENOMEM */
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    note();
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));
int munmap(void *addr, size_t len) { note(); return (int)syscall(SYS_munmap, addr, len); }
