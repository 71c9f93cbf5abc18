"""The native core's units: Cython compiles _core.pyx as one module and accepts a cdef function
or C variable used above its definition, so this reads the sources in the order _core.pyx includes
them and holds them to the rule the compiler does not check: a name is used only after a unit's
.pxd declares it (_core.pxd includes them all before any .pxi) or after its own definition."""
import re

DEFINITION = re.compile(r"cdef (?:inline )?[\w*\s]+?\b(\w+)\s*[(=]")       # at the start of a line
DECLARATION = re.compile(r"^cdef [\w*\s]*?\b(\w+)\(", re.M)


def test_nothing_is_used_before_it_is_declared(repo_root):
    native = repo_root / "native"
    core = (native / "_core.pyx").read_text()
    units = re.findall(r'^include "(\w+\.pxi)"', core, re.M)
    assert units, "_core.pyx includes no unit"
    lines = [(f, n, line) for f in units for n, line in enumerate((native / f).read_text().splitlines(), 1)]
    lines += [("_core.pyx", n, line) for n, line in enumerate(core.splitlines(), 1)]
    declared = {name for pxd in native.glob("*.pxd") for name in DECLARATION.findall(pxd.read_text())}
    defined = {}
    for k, (_, _, line) in enumerate(lines):
        m = DEFINITION.match(line)
        if m and m.group(1) not in declared:
            defined.setdefault(m.group(1), k)
    early = [f"{f}:{n} uses {name} ({lines[at][0]}:{lines[at][1]} defines it)"
             for name, at in defined.items() for f, n, line in lines[:at]
             if re.search(rf"\b{name}\b", line.split("#")[0])]
    assert not early, early
