"""The `fusevol` command line (`python -m fusevol`, the `fusevol` script)."""

from .app import main

__all__ = ["main"]
