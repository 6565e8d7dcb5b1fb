"""Hot-path helpers in C (native/) with pure-Python twins.

The C modules are used when they were built; FUSEVOL_NATIVE=0 forces the
pure twins (to compare, or to rule the C out). Both give the same answers on
the same inputs (tests/test_native.py runs both). `rows`
(native/_fusevol_rows.c): the request path's inode records and a change's
reads and writes; their twins are where they are used (store/schema.py's
Inode, fs/speculate.py's SpecCorePy), None without the C.
"""

import importlib
import os


def is_zero_py(data) -> bool:
    """Every byte of data is zero (an all-zero block is stored as a hole)."""
    n = len(data)
    # A comparison with a fresh zero buffer is one memcmp that stops at the
    # first difference; a non-zero first byte answers at once.
    return n == 0 or (data[0] == 0 and data == bytes(n))


def _load_c(name: str):
    if os.environ.get("FUSEVOL_NATIVE", "1") == "0":
        return None
    try:
        return importlib.import_module("." + name, __package__)
    except ImportError:
        return None


_c = _load_c("_fusevol_native")
rows = _load_c("_fusevol_rows")
IMPLEMENTATION = "c" if _c is not None else "python"
is_zero = _c.is_zero if _c is not None else is_zero_py
