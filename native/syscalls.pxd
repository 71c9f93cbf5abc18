# Kernel and libc interfaces the real-time core uses that Cython's bundled
# declarations lack: POSIX threads with explicit scheduling attributes, CPU
# affinity, memory locking, thread naming, and the compiler builtins of builtins.h.

from libc.stdint cimport uint64_t, int64_t
from posix.types cimport pid_t

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct cpu_set_t:
        pass
    struct sched_param:
        int sched_priority

    int PTHREAD_EXPLICIT_SCHED
    int pthread_attr_init(pthread_attr_t *attr)
    int pthread_attr_destroy(pthread_attr_t *attr)
    int pthread_attr_setstacksize(pthread_attr_t *attr, size_t stacksize)
    int pthread_attr_setinheritsched(pthread_attr_t *attr, int inheritsched)
    int pthread_attr_setschedpolicy(pthread_attr_t *attr, int policy)
    int pthread_attr_setschedparam(pthread_attr_t *attr, const sched_param *param)
    int pthread_attr_setaffinity_np(pthread_attr_t *attr, size_t cpusetsize, const cpu_set_t *cpuset)
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start_routine)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_setname_np(pthread_t thread, const char *name)
    pthread_t pthread_self()

    int pthread_mutex_init(pthread_mutex_t *mutex, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)

cdef extern from "<sched.h>" nogil:
    int SCHED_FIFO
    int SCHED_OTHER
    void CPU_ZERO(cpu_set_t *set)
    void CPU_SET(int cpu, cpu_set_t *set)
    int sched_get_priority_max(int policy)
    int sched_get_priority_min(int policy)

cdef extern from "<sys/mman.h>" nogil:
    int MCL_CURRENT
    int MCL_FUTURE
    int MCL_ONFAULT
    int mlockall(int flags)
    int munlockall()

cdef extern from "<sys/prctl.h>" nogil:
    int PR_SET_TIMERSLACK
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from "<unistd.h>" nogil:
    pid_t gettid()

cdef extern from "builtins.h" nogil:
    uint64_t v2g_load_acquire(const uint64_t *p)
    uint64_t v2g_load_relaxed(const uint64_t *p)
    void v2g_store_release(uint64_t *p, uint64_t v)
    void v2g_store_relaxed(uint64_t *p, uint64_t v)
    uint64_t v2g_exchange(uint64_t *p, uint64_t v)
    uint64_t v2g_fetch_or(uint64_t *p, uint64_t v)
    uint64_t v2g_fetch_add(uint64_t *p, uint64_t v)
    double v2g_load_f64(const double *p)
    void v2g_store_f64(double *p, double v)
    int64_t v2g_load_i64(const int64_t *p)
    void v2g_store_i64(int64_t *p, int64_t v)
    int v2g_ctz64(uint64_t v)
    void v2g_fence_acquire()
    void v2g_fence_release()
