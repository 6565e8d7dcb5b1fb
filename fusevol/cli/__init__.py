"""The `fusevol` command line (`python -m fusevol`, the `fusevol` script).

`main` runs a command line (entry.py: the common commands without click);
`app.main` is the click command tree.
"""

from .entry import main

__all__ = ["main"]
