# Kernel and libc interfaces the real-time core uses that Cython's bundled
# declarations lack: POSIX threads with explicit scheduling attributes, CPU
# affinity, memory locking, thread naming, and the compiler builtins of builtins.h.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
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
    int PR_SET_SECCOMP
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
    bint v2g_cas(uint64_t *p, uint64_t *expected, uint64_t desired)
    void v2g_cpu_relax()
    int64_t v2g_sat_sub(int64_t a, int64_t b)
    int64_t v2g_sat_add(int64_t a, int64_t b)
    int64_t v2g_s_to_ns(double s)
    double fmin "v2g_fmin"(double a, double b)
    double fmax "v2g_fmax"(double a, double b)
    double v2g_load_f64(const double *p)
    void v2g_store_f64(double *p, double v)
    int64_t v2g_load_i64(const int64_t *p)
    void v2g_store_i64(int64_t *p, int64_t v)
    int v2g_ctz64(uint64_t v)
    void v2g_fence_acquire()
    void v2g_fence_release()

# Devices the loop and its I/O thread talk to directly.

cdef extern from "<sys/socket.h>" nogil:
    int MSG_DONTWAIT
    int MSG_TRUNC
    struct iovec:
        void* iov_base
        size_t iov_len
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags, void* timeout)
    int sendmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)

cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:          # AF_PACKET: who sent a frame, and which way it went
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]

cdef extern from "builtins.h" nogil:
    bint v2g_rxq_ovfl(const msghdr* h, uint32_t* out)

cdef extern from "<linux/can.h>" nogil:
    struct can_frame:
        uint32_t can_id
        uint8_t can_dlc
        uint8_t data[8]
    uint32_t CAN_EFF_FLAG
    uint32_t CAN_RTR_FLAG
    uint32_t CAN_ERR_FLAG
    uint32_t CAN_EFF_MASK

cdef extern from "<linux/can/error.h>" nogil:
    uint32_t CAN_ERR_BUSOFF

cdef extern from "<linux/i2c.h>" nogil:
    struct i2c_msg:
        uint16_t addr
        uint16_t flags
        uint16_t len
        uint8_t* buf
    union i2c_smbus_data:
        uint8_t byte
        uint16_t word
        uint8_t block[34]
    int I2C_M_RD
    int I2C_SMBUS_READ
    int I2C_SMBUS_WORD_DATA
    int I2C_SMBUS_I2C_BLOCK_DATA

cdef extern from "<linux/i2c-dev.h>" nogil:
    struct i2c_rdwr_ioctl_data:
        i2c_msg* msgs
        uint32_t nmsgs
    struct i2c_smbus_ioctl_data:
        uint8_t read_write
        uint8_t command
        uint32_t size
        i2c_smbus_data* data
    unsigned long I2C_RDWR
    unsigned long I2C_SMBUS

cdef extern from "<linux/spi/spidev.h>" nogil:
    struct spi_ioc_transfer:
        uint64_t tx_buf
        uint64_t rx_buf
        uint32_t len
        uint32_t speed_hz
        uint16_t delay_usecs
        uint8_t bits_per_word
        uint8_t cs_change
    unsigned long SPI_IOC_MESSAGE(int n)   # a macro: the request for n transfers in one ioctl

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<linux/seccomp.h>" nogil:
    int SECCOMP_MODE_STRICT         # read, write, _exit, sigreturn; anything else: SIGKILL

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_exit

cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

cdef extern from "<linux/gpio.h>" nogil:
    unsigned long GPIO_V2_LINE_SET_VALUES_IOCTL
    int GPIO_V2_LINE_EVENT_RISING_EDGE
    int GPIO_V2_LINE_EVENT_FALLING_EDGE
    struct gpio_v2_line_values:
        uint64_t bits
        uint64_t mask
    struct gpio_v2_line_event:      # 48 bytes, as read() from a line request with edge detection
        uint64_t timestamp_ns
        uint32_t id
        uint32_t offset
        uint32_t seqno
        uint32_t line_seqno

cdef extern from "<sys/epoll.h>" nogil:
    int EPOLLIN
    union epoll_data_t "epoll_data":
        uint32_t u32
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    int EPOLL_CTL_ADD
    int EPOLL_CLOEXEC
