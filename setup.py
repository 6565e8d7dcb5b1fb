"""Build the optional C helpers (native/); metadata lives in pyproject.toml.

optional=True: where the C compiler or Python headers are missing, the package
still installs and fusevol.native uses its pure-Python twins.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("fusevol._fusevol_native", ["native/_fusevol_native.c"],
              extra_compile_args=["-O2"], optional=True),
    Extension("fusevol._fusevol_rows", ["native/_fusevol_rows.c"],
              extra_compile_args=["-O2"], optional=True),
])
