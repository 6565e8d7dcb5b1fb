"""Holding a runner's store thread still, so that a test queues work behind it."""

import threading

import trio


class Gate:
    """A store operation that holds the store thread until opened, so that
    what the test queues meanwhile is queued all at once."""

    def __init__(self):
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, txn):
        self.entered.set()
        assert self.opened.wait(10)

    async def hold(self, runner):
        # Queued as run() queues (waking the thread), by a task of its own:
        # nothing of the test waits for it.
        trio.lowlevel.spawn_system_task(self._queue, runner)
        await trio.to_thread.run_sync(self.entered.wait)

    async def _queue(self, runner):
        try:
            await runner.run(self, foreseen=True)
        except Exception:
            pass  # never opened: the test that held it failed, and says why

    def open(self):
        self.opened.set()
