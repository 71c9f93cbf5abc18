"""smbus2 and i2c-tools against the kernel's i2c-stub adapter via i2c-dev.

i2c-stub emulates SMBus chips (256 16-bit registers each) at the addresses it
was loaded with; it has no plain-I2C (I2C_RDWR) transfer support.
"""

import errno
import shutil
import subprocess

import pytest

smbus2 = pytest.importorskip("smbus2")
I2cFunc = smbus2.I2cFunc

# STUB_FUNC_DEFAULT in drivers/i2c/i2c-stub.c (SMBus block data is off by default).
STUB_FUNCS = (
    I2cFunc.SMBUS_QUICK
    | I2cFunc.SMBUS_BYTE
    | I2cFunc.SMBUS_BYTE_DATA
    | I2cFunc.SMBUS_WORD_DATA
    | I2cFunc.SMBUS_I2C_BLOCK
)


def i2c_tool(name: str, *args: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        pytest.skip(f"{name} (i2c-tools) not installed")
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def chip(i2c_stub_addrs):
    return i2c_stub_addrs[0]


@pytest.fixture
def bus(i2c_stub_bus):
    with smbus2.SMBus(i2c_stub_bus) as smbus:
        yield smbus


def test_reported_functionality_is_smbus_only(bus):
    funcs = bus.funcs
    assert funcs == STUB_FUNCS, f"I2C_FUNCS = {int(funcs):#010x}"
    assert not funcs & I2cFunc.I2C
    assert not funcs & I2cFunc.SMBUS_BLOCK_DATA
    assert not funcs & I2cFunc.SMBUS_PEC


def test_i2cset_word_read_by_smbus2(i2c_stub_bus, chip, bus):
    i2c_tool("i2cset", "-y", str(i2c_stub_bus), hex(chip), "0x00", "0x1234", "w")
    assert bus.read_word_data(chip, 0x00) == 0x1234
    assert bus.read_byte_data(chip, 0x00) == 0x34  # low byte of the register


def test_smbus2_writes_read_by_i2cget(i2c_stub_bus, chip, bus):
    bus.write_byte_data(chip, 0x10, 0xAB)
    bus.write_word_data(chip, 0x20, 0xBEEF)
    busno, addr = str(i2c_stub_bus), hex(chip)
    assert i2c_tool("i2cget", "-y", busno, addr, "0x10", "b").strip() == "0xab"
    assert i2c_tool("i2cget", "-y", busno, addr, "0x20", "w").strip() == "0xbeef"


def test_i2c_block_roundtrip(chip, bus):
    bus.write_i2c_block_data(chip, 0x30, [1, 2, 3, 4])
    assert bus.read_i2c_block_data(chip, 0x30, 4) == [1, 2, 3, 4]


def test_every_configured_chip_answers(i2c_stub_addrs, bus):
    for addr in i2c_stub_addrs:
        bus.write_byte_data(addr, 0x40, addr)
    for addr in i2c_stub_addrs:
        assert bus.read_byte_data(addr, 0x40) == addr


def test_unconfigured_address_fails_with_enodev(i2c_stub_addrs, bus):
    absent = next(a for a in range(0x77, 0x03, -1) if a not in i2c_stub_addrs)
    with pytest.raises(OSError) as exc:
        bus.read_byte_data(absent, 0x00)
    assert exc.value.errno == errno.ENODEV  # i2c-stub's answer; real adapters say ENXIO


def test_plain_i2c_transfer_is_unsupported(chip, bus):
    with pytest.raises(OSError) as exc:
        bus.i2c_rdwr(smbus2.i2c_msg.write(chip, [0x00, 0x12]))
    assert exc.value.errno == errno.EOPNOTSUPP
