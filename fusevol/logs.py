"""Module loggers that import the logging package when they first log.

Every process that opens the store imports the store's environment, the volume
service and the worker registry; importing logging there (with re, traceback,
threading, ...) cost `fusevol volume ls` a tenth of its start, and it logs
nothing. Settings given before logging is loaded (`configure`) are applied
when it is.
"""

import sys

_pending: dict | None = None  # logging.basicConfig's arguments, until logging is loaded


def configure(now: bool = False, **settings) -> None:
    """logging.basicConfig(**settings): now if logging is loaded (or `now`), else
    when a logger of this module first logs. Where modules log through logging
    itself, it must be now: they would not apply it."""
    global _pending
    _pending = settings
    if now or "logging" in sys.modules:
        _logging()


def _logging():
    global _pending
    import logging

    if _pending is not None:
        settings, _pending = _pending, None
        logging.basicConfig(**settings)
    return logging


class _Logger:
    """Stands for logging.getLogger(name): the first call of one of its methods
    loads logging; the method is then kept here and later calls go straight to it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        value = getattr(_logging().getLogger(self._name), attr)
        if callable(value):
            setattr(self, attr, value)
        return value


def logger(name: str) -> _Logger:
    return _Logger(name)
