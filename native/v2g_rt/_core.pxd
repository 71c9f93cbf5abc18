# Cython looks up a module's own .pxd by the module's full name, v2g_rt._core,
# and finds this file; the declarations live beside _core.pyx.
include "../_core.pxd"
