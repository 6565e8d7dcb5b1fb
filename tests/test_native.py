"""The C helpers and their pure-Python twins give the same answers on the same inputs."""

import os
import subprocess
import sys

import pytest

from fusevol import native

try:
    from fusevol import _fusevol_native
except ImportError:  # not built: scripts/test.sh builds it, and then requires it
    _fusevol_native = None

REQUIRED = os.environ.get("FUSEVOL_REQUIRE_NATIVE") == "1"

IMPLEMENTATIONS = [
    pytest.param(native.is_zero_py, id="python"),
    pytest.param(getattr(_fusevol_native, "is_zero", None), id="c", marks=pytest.mark.skipif(
        _fusevol_native is None and not REQUIRED,
        reason="C extension not built (python setup.py build_ext --inplace)")),
]

BS = 128 << 10


def inputs():
    yield b""
    yield b"\0"
    yield b"\1"
    for n in (15, 16, 17, 4096, BS - 1, BS):
        yield bytes(n)
        for pos in sorted({0, 1, 15, 16, 17, n // 2, n - 1}):
            if pos < n:
                data = bytearray(n)
                data[pos] = 0x80
                yield bytes(data)
    yield os.urandom(BS)
    yield b"\0" * (BS - 1) + b"\xff"


@pytest.mark.parametrize("is_zero", IMPLEMENTATIONS)
def test_is_zero_matches_a_byte_by_byte_check(is_zero):
    for data in inputs():
        expected = all(b == 0 for b in data)
        assert is_zero(data) is expected, (len(data), data.find(b"\x80"))


@pytest.mark.parametrize("is_zero", IMPLEMENTATIONS)
def test_is_zero_takes_any_contiguous_buffer(is_zero):
    block = bytearray(BS)
    assert is_zero(block) and is_zero(memoryview(block)) and is_zero(memoryview(block)[100:200])
    block[150] = 1
    assert not is_zero(block) and not is_zero(memoryview(block)[100:200])
    assert is_zero(memoryview(block)[151:])


@pytest.mark.parametrize("is_zero", IMPLEMENTATIONS)
def test_is_zero_refuses_what_is_not_a_buffer(is_zero):
    with pytest.raises(TypeError):
        is_zero(12)


def test_c_extension_is_built_when_required():
    if not REQUIRED:
        pytest.skip("FUSEVOL_REQUIRE_NATIVE=1 is set by scripts/test.sh, which builds the extension")
    assert _fusevol_native is not None
    assert native.IMPLEMENTATION == "c"


@pytest.mark.parametrize("setting,expected", [("0", "python"), ("1", None)])
def test_env_switch_chooses_the_implementation(setting, expected):
    env = {**os.environ, "FUSEVOL_NATIVE": setting}
    out = subprocess.run([sys.executable, "-c", "from fusevol import native; print(native.IMPLEMENTATION)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == (expected or ("c" if _fusevol_native is not None else "python"))
