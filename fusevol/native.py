"""Hot-path helpers in C (native/_fusevol_native.c) with pure-Python twins.

The C module is used when it was built; FUSEVOL_NATIVE=0 forces the pure
twins (to compare, or to rule the C out). Both give the same answers on the
same inputs (tests/test_native.py runs both).
"""

import os


def is_zero_py(data) -> bool:
    """Every byte of data is zero (an all-zero block is stored as a hole)."""
    n = len(data)
    # A comparison with a fresh zero buffer is one memcmp that stops at the
    # first difference; a non-zero first byte answers at once.
    return n == 0 or (data[0] == 0 and data == bytes(n))


def _load_c():
    if os.environ.get("FUSEVOL_NATIVE", "1") == "0":
        return None
    try:
        from . import _fusevol_native
    except ImportError:
        return None
    return _fusevol_native


_c = _load_c()
IMPLEMENTATION = "c" if _c is not None else "python"
is_zero = _c.is_zero if _c is not None else is_zero_py
