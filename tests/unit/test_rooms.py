"""Rooms: a device module opens kernel devices and never imports the simulator; the simulator
reaches a device only through the device's own interface (the far end of its socket pair)."""
import ast
import importlib.util
import pathlib

import pytest

from v2g_rt import Controller, config
from v2g_rt.devices import DeviceError, attach

DEVICES = pathlib.Path(importlib.util.find_spec("v2g_rt.devices").origin).parent


@pytest.mark.parametrize("module", sorted(p.name for p in DEVICES.glob("*.py")))
def test_no_device_module_imports_the_simulator(module):
    tree = ast.parse((DEVICES / module).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for m in imported if "sim" in m.split(".")], (module, imported)


def test_a_sim_backend_without_the_simulator_is_refused_with_the_remedy():
    site = config.load()                               # the packaged site: CAN and I2C on sim backends
    with pytest.raises(DeviceError) as e:
        attach(Controller(site, clock="virtual"), site)
    assert e.value.code == "ERR_DEVICE_MISSING" and "[can] backend = \"sim\"" in str(e.value)
