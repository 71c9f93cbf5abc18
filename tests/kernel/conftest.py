"""Fixtures for tests of real kernel interfaces (SocketCAN, J1939, i2c-dev).

These tests are meant to run inside the qemu guest started by
``hw/vm/kernel-tests``, which loads vcan, can-raw, can-j1939, i2c-dev and
i2c-stub, creates ``vcan0`` and sets ``V2G_KERNEL_GUEST=1``.  There a skipped
test is a failure: a missing interface must not pass silently.  Elsewhere the
fixtures skip with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import IN_GUEST

# These need the guest's vcan0 / i2c-stub; the native-reader tests run everywhere, on the
# sim backends outside the guest and on both backends inside it (helpers.BACKENDS).
collect_ignore = [] if IN_GUEST else ["test_vcan_python_can.py", "test_i2c_stub_smbus2.py", "test_j1939_socket.py"]
VCAN_IFACE = "vcan0"
ARPHRD_CAN = 280
I2C_STUB_ADAPTER_NAME = "SMBus stub"
RUN_HINT = "run hw/vm/kernel-tests to test against a real kernel"


def _skip_to_failure(report) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = (
        f"skipped inside the kernel-test VM (V2G_KERNEL_GUEST=1), "
        f"which counts as a failure: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_GUEST and report.skipped and not hasattr(report, "wasxfail"):
        _skip_to_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if IN_GUEST and report.skipped:
        _skip_to_failure(report)


@pytest.fixture(scope="session")
def vcan0() -> str:
    """Name of an up virtual CAN interface."""
    iface = Path("/sys/class/net") / VCAN_IFACE
    if not iface.exists():
        pytest.skip(f"no {VCAN_IFACE} interface; {RUN_HINT}")
    assert int((iface / "type").read_text()) == ARPHRD_CAN, f"{VCAN_IFACE} is not a CAN device"
    return VCAN_IFACE


@pytest.fixture(scope="session")
def i2c_stub_bus() -> int:
    """Number N of the i2c-stub adapter, usable as /dev/i2c-N."""
    for name_file in sorted(Path("/sys/class/i2c-dev").glob("i2c-*/name")):
        if I2C_STUB_ADAPTER_NAME in name_file.read_text():
            bus = int(name_file.parent.name.removeprefix("i2c-"))
            assert Path(f"/dev/i2c-{bus}").exists(), f"/dev/i2c-{bus} missing"
            return bus
    pytest.skip(f"no i2c-stub adapter with i2c-dev; {RUN_HINT}")


@pytest.fixture(scope="session")
def i2c_stub_addrs(i2c_stub_bus) -> list[int]:
    """Chip addresses i2c-stub was loaded with (chip_addr=...)."""
    param = Path("/sys/module/i2c_stub/parameters/chip_addr").read_text()
    addrs = [int(a, 0) for a in param.strip().split(",") if int(a, 0)]
    assert addrs, "i2c-stub has no chip address"
    return addrs
