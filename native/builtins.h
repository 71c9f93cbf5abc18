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

static inline int v2g_ctz64(uint64_t v) { return __builtin_ctzll(v); }

static inline void v2g_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void v2g_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

#endif
