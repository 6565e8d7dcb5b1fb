"""Transfers paced to a rate the user sets (FUSEVOL_PULL_LIMIT, FUSEVOL_PUSH_LIMIT),
to spare a link that other work shares."""

import os
import threading
import time


def limit(variable: str) -> int | None:
    """Bytes per second from environment variable `variable` (K, M, G suffixes);
    None: as fast as it goes."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
    try:
        value = int(float(text.rstrip("KkMmGg")) * scale)
    except ValueError:
        return None
    return value if value > 0 else None


class Pace:
    """Spaces transfers (from any thread) so that they average `rate` bytes a second."""

    def __init__(self, rate: int):
        self.rate = rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now) + n / self.rate
            delay = self.next - now - n / self.rate
        if delay > 0:
            time.sleep(delay)


def pace_for(variable: str) -> Pace | None:
    rate = limit(variable)
    return Pace(rate) if rate else None
