"""Builds the native core (native/*.pyx) into the package as v2g_rt._core.

V2G_RT_DEBUG=1 builds with assertions and without optimisation;
V2G_RT_DEBUG_ALLOC_IN_CYCLE=1 makes every cycle allocate, which the
no-allocation test must catch (it builds that variant itself).
"""
import os

import shutil
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class build_py_with_hw(build_py):
    """hw/j1939/*.dbc and hw/modbus/**.json are hardware assets; the installed package needs them
    as data (v2g_rt/data/, v2g_rt/data/modbus/ and v2g_rt/data/modbus/evse/)."""

    def run(self):
        super().run()
        data = Path(self.build_lib) / "v2g_rt" / "data"
        for src, dst in (("hw/j1939", data), ("hw/modbus", data / "modbus"), ("hw/modbus/evse", data / "modbus" / "evse")):
            dst.mkdir(parents=True, exist_ok=True)
            for asset in Path(src).glob("*.dbc" if src.endswith("j1939") else "*.json"):
                shutil.copy(asset, dst / asset.name)

debug = os.environ.get("V2G_RT_DEBUG") == "1"
macros = []
if os.environ.get("V2G_RT_DEBUG_ALLOC_IN_CYCLE") == "1":
    macros.append(("V2G_DEBUG_ALLOC_IN_CYCLE", "1"))

core = Extension(
    "v2g_rt._core",
    sources=["native/_core.pyx"],
    include_dirs=["native"],
    define_macros=macros,
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
)

setup(
    cmdclass={"build_py": build_py_with_hw},
    ext_modules=cythonize(
        [core],
        include_path=["native"],
        compiler_directives={"language_level": 3},
        compile_time_env={},
    ),
)
