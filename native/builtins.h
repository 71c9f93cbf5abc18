/* builtins.h - compiler builtins the exchange and the cycle need, for Cython.
 *
 * Cython has no atomic types, and the exchange between Python threads and the
 * real-time loop must not take locks on the loop side. These wrap the GCC/Clang
 * __atomic builtins (available on every target we build for: x86_64, aarch64,
 * armv7) with the memory order written into the name.
 */
#ifndef V2G_BUILTINS_H
#define V2G_BUILTINS_H

#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

static inline uint64_t v2g_load_acquire(const uint64_t *p)
{ return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

static inline uint64_t v2g_load_relaxed(const uint64_t *p)
{ return __atomic_load_n(p, __ATOMIC_RELAXED); }

static inline void v2g_store_release(uint64_t *p, uint64_t v)
{ __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static inline void v2g_store_relaxed(uint64_t *p, uint64_t v)
{ __atomic_store_n(p, v, __ATOMIC_RELAXED); }

static inline uint64_t v2g_exchange(uint64_t *p, uint64_t v)
{ return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }

static inline uint64_t v2g_fetch_or(uint64_t *p, uint64_t v)
{ return __atomic_fetch_or(p, v, __ATOMIC_RELEASE); }

static inline uint64_t v2g_fetch_add(uint64_t *p, uint64_t v)
{ return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

/* On failure *expected is updated to the value found. */
static inline int v2g_cas(uint64_t *p, uint64_t *expected, uint64_t desired)
{ return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE); }

static inline void v2g_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

/* Time arithmetic that saturates instead of overflowing: a timestamp from a
 * buggy producer (INT64_MIN is what pandas' NaT becomes) must never turn an age
 * negative and a stale value fresh. */
static inline int64_t v2g_sat_sub(int64_t a, int64_t b)
{ int64_t r; if (__builtin_sub_overflow(a, b, &r)) return b < 0 ? INT64_MAX : INT64_MIN; return r; }

static inline int64_t v2g_sat_add(int64_t a, int64_t b)
{ int64_t r; if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN; return r; }

/* fmin and fmax with C99's answer (a NaN operand gives the other), inline: glibc's are
 * calls through the PLT in the middle of the per-port loops, and gcc expands its builtins
 * inline only under -ffinite-math-only, which would break the loop's NaN tests. */
static inline double v2g_fmin(double a, double b) { return (a < b || b != b) ? a : b; }

static inline double v2g_fmax(double a, double b) { return (a > b || b != b) ? a : b; }

/* Seconds to ns, saturating; NaN gives 0. A plain cast of an out-of-range
 * double is undefined behaviour. */
static inline int64_t v2g_s_to_ns(double s)
{
    double ns = s * 1e9;
    if (!(ns == ns)) return 0;
    if (ns >= 9.2e18) return INT64_MAX;
    if (ns <= -9.2e18) return INT64_MIN;
    return (int64_t)ns;
}

/* Data read inside a seqlock is raced by design; relaxed atomics make that
 * race defined behaviour instead of a plain data race. */
static inline double v2g_load_f64(const double *p)
{ double v; __atomic_load(p, &v, __ATOMIC_RELAXED); return v; }

static inline void v2g_store_f64(double *p, double v)
{ __atomic_store(p, &v, __ATOMIC_RELAXED); }

static inline int64_t v2g_load_i64(const int64_t *p)
{ return __atomic_load_n(p, __ATOMIC_RELAXED); }

static inline void v2g_store_i64(int64_t *p, int64_t v)
{ __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* The kernel's cumulative count of frames dropped on this socket's full receive
 * queue, from a received message's SO_RXQ_OVFL control data; 0 if absent. */
static inline int v2g_rxq_ovfl(const struct msghdr *h, uint32_t *out)
{
#ifdef SO_RXQ_OVFL
    for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)h); c; c = CMSG_NXTHDR((struct msghdr *)h, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL && c->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
            memcpy(out, CMSG_DATA(c), sizeof(uint32_t));
            return 1;
        }
#endif
    return 0;
}

static inline int v2g_ctz64(uint64_t v) { return __builtin_ctzll(v); }

static inline void v2g_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void v2g_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

#endif
