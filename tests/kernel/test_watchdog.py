"""The hardware watchdog the service feeds while the loop is healthy, against the kernel's softdog."""
import fcntl
import struct
import time

from helpers import IN_GUEST, make_site

WDIOC_GETTIMEOUT = 0x80045707

if IN_GUEST:      # /dev/watchdog exists in the kernel-test guest (softdog)
    from v2g_rt import Controller
    from v2g_rt.services.watchdog import HardwareWatchdog, Watchdog

    def ioctl_int(fd, request):
        return struct.unpack("i", fcntl.ioctl(fd, request, struct.pack("i", 0)))[0]

    def test_watchdog_is_armed_with_its_timeout_fed_while_healthy_and_disarmed_on_clean_stop():
        hw = HardwareWatchdog("/dev/watchdog", 7)
        assert ioctl_int(hw.fd, WDIOC_GETTIMEOUT) == 7
        # 50 ms cycles: timing in the emulated guest means nothing, the feeding rule does
        c = Controller(make_site(8, period_s=0.05))
        c.start()
        dog = Watchdog(c, 0.1, hw, max_overrun_streak=1000)
        dog.start()
        time.sleep(1.5)
        assert dog.fed >= 5
        c.stop()                                                # the loop stops: feeding stops
        fed = dog.fed
        time.sleep(1.5)
        assert dog.fed <= fed + 1 and dog.refused >= 5
        dog.stop(clean=True)                                   # magic close: disarmed
        with open("/dev/watchdog", "wb", buffering=0) as again:  # free again: it was closed cleanly
            again.write(b"V")
