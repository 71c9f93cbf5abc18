# io_gpio: contactors wired to GPIO lines, through the GPIO character device (v2 uAPI).
#
# Feedback: each line is a nonblocking line request with edge detection; its edges (struct
# gpio_v2_line_event, 48 bytes) are the "interrupt". The read stage asks epoll (timeout 0: one
# system call however many lines) which fds have events, reads at most GPIO_EVENT_BATCH from each,
# and publishes every line's debounced level into its port's contactor source each cycle, stamped
# now: an edge-driven line has no other refresh, and a level is known until its fd fails. The
# level before the first edge is read once at start-up (v2g_rt.devices.gpio). Where the kernel
# cannot debounce, edges are debounced here in cycles; an edge undone inside that time is a
# bounce: counted, never data. Drive: the write stage sets each port's handed-over contactor
# command when it changes (GPIO_V2_LINE_SET_VALUES_IOCTL), or hands it to the native I/O thread
# for chips whose set can sleep (expanders on I2C). The sim backend's fd is a pipe to the far side
# carrying the same records; only the one system call differs by fd kind.

from libc.errno cimport errno, EAGAIN


cdef inline int gpio_level(uint32_t event_id) noexcept nogil:
    if event_id == GPIO_V2_LINE_EVENT_RISING_EDGE:
        return 1
    if event_id == GPIO_V2_LINE_EVENT_FALLING_EDGE:
        return 0
    return -1


cdef void gpio_take(Image* im, GpioIn* l, const gpio_v2_line_event* e) noexcept nogil:
    cdef int level = gpio_level(e.id)
    bump(&l.events, 1)
    if level < 0:
        bump(&l.bad_events, 1)
        return
    if l.line_seqno and e.line_seqno > l.line_seqno + 1:
        bump(&l.lost, e.line_seqno - l.line_seqno - 1)    # the last edge still tells the level
    l.line_seqno = e.line_seqno
    if l.known and level == l.raw:
        return                                            # a repeat (events were lost between)
    if l.known and l.raw != l.stable and level == l.stable:
        bump(&l.bounces, 1)                               # back before it settled
    l.raw = level
    l.raw_cycle = im.cycle
    if not l.known:
        l.known = 1
        l.stable = level


cdef void gpio_read_line(Image* im, GpioIo* g, GpioIn* l) noexcept nogil:
    cdef ssize_t n
    cdef int k, got
    if l.failed:
        return
    n = read(l.fd, g.buf, sizeof(g.buf))
    if n < 0:
        if errno != EAGAIN:
            bump(&l.read_errors, 1)
            v2g_store_i64(&l.last_errno, errno)
            l.failed = 1                                  # the level is no longer known: stale
        return
    if n == 0:                                            # the far side of a sim pipe is gone
        l.failed = 1
        return
    got = <int>(n // GPIO_EVENT_SIZE)
    if n % GPIO_EVENT_SIZE:
        bump(&l.bad_events, 1)                            # a partial record: dropped
    if got == GPIO_EVENT_BATCH:
        bump(&l.budget_full, 1)
    for k in range(got):
        gpio_take(im, l, &g.buf[k])


cdef void gpio_publish(Image* im, GpioIn* l) noexcept nogil:
    cdef Gate* gt
    cdef int code
    if l.raw != l.stable and im.cycle - l.raw_cycle >= <uint64_t>l.debounce_cycles:
        l.stable = l.raw
    if not l.known or l.failed:
        return
    gt = &im.ex.gate[l.input]
    code = gate_check(gt, WRITER_GPIO, l.stable, im.now_ns, im.now_ns)
    gate_count(gt, code)
    if code != GATE_OK:
        bump(&l.gate_rejected, 1)
        return
    input_take(im, l.input, l.stable, im.now_ns)


cdef void gpio_drain(Image* im, GpioIo* g) noexcept nogil:
    cdef int n, k
    if g.n_in == 0:
        return
    n = epoll_wait(g.epfd, g.ready, g.n_in, 0)
    if n < 0:                                  # cannot tell which: read them all (still bounded)
        bump(&g.poll_errors, 1)
        for k in range(g.n_in):
            gpio_read_line(im, g, &g.inp[k])
    for k in range(n):
        gpio_read_line(im, g, &g.inp[g.ready[k].data.u32])
    for k in range(g.n_in):
        gpio_publish(im, &g.inp[k])


cdef bint gpio_set(GpioOut* o, int value) noexcept nogil:
    """Set one drive line (each request holds one line); False and counted if refused."""
    cdef gpio_v2_line_values v
    cdef bint ok
    v.bits = <uint64_t>value
    v.mask = 1
    if o.kind == GPIO_FD_CHARDEV:
        ok = ioctl(o.fd, GPIO_V2_LINE_SET_VALUES_IOCTL, &v) == 0
    else:
        ok = write(o.fd, &v, sizeof(v)) == sizeof(v)
    if not ok:
        bump(&o.write_errors, 1)
        v2g_store_i64(&o.last_errno, errno)
        return False
    bump(&o.sets, 1)
    o.driven = value
    return True


cdef void gpio_write(Image* im, GpioIo* g) noexcept nogil:
    cdef int k, want
    cdef GpioOut* o
    for k in range(g.n_out):
        o = &g.out[k]
        want = im.outbox.out[o.port].contactor_closed != 0
        if o.drive == GPIO_DRIVE_THREAD:
            v2g_store_release(&o.want, <uint64_t>want)
        elif want != o.driven:
            gpio_set(o, want)


cdef void gpio_thread_drive(GpioIo* g) noexcept nogil:
    cdef int k, want
    cdef GpioOut* o
    for k in range(g.n_out):
        o = &g.out[k]
        if o.drive == GPIO_DRIVE_THREAD:
            want = <int>v2g_load_acquire(&o.want)
            if want != o.driven:
                gpio_set(o, want)
