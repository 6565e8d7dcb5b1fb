"""Volumes Docker asked for from a remote, pulled in the daemon after Create returns.

dockerd gives a Create two minutes, and a volume of many GiB takes longer to
pull. So Create does at once what can fail at once (the options, the remote,
the snapshot's manifest: a wrong name, endpoint or credentials fail the
Create itself), notes the pull in the store (store/remotes.note_pull) and
returns; a thread of the daemon pulls. Until the pulled volume is installed:

- Get and List show the volume; its Status (`docker volume inspect`) has a
  `pull` entry: from where, state (pulling or failed), bytes done and total,
  the error of a failed pull. The log tells the progress every few seconds.
- Mount waits for the pull up to MOUNT_WAIT seconds (under dockerd's two
  minutes); if it is not done by then, the Mount fails saying how far the
  pull is (the container can be started again later). A Mount of a volume
  whose pull failed starts the pull again: what the failed one stored is not
  downloaded again.
- Remove stops the pull and forgets it; the store is left as it was.

The note outlives the daemon: a daemon started again resumes every pull
noted (Docker already lists the volume, so it must still exist for it).

The same goes for a volume that follows a remote (-o remote=NAME, follow.py)
whose copy here is older than the remote's newest snapshot: its first Mount
starts a pull that rolls the existing volume forward (`catch_up`) and waits
for it as above; Get shows the volume with its `pull` entry beside.
"""

import datetime
import logging
import os
import threading
import time

from ..errors import Busy, FusevolError
from ..store import remotes, snapshots, volumes
from ..store.env import Store

log = logging.getLogger(__name__)
MOUNT_WAIT = 100.0   # seconds a Mount waits for a running pull (dockerd gives it 120)
STOP_WAIT = 45.0     # seconds a Remove waits for a pull to stop (dockerd gives it 60)
LOG_EVERY = 10.0     # seconds between progress lines in the log


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Job:
    """One volume's pull: its note, its thread, how far it went."""

    def __init__(self, name: str, note: dict):
        self.name = name
        self.note = note  # remote, volume, snapshot, opts, created_at
        self.state = "pulling"
        self.error: str | None = None
        self.done_bytes = 0
        self.total_bytes: int | None = None
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None
        self._logged = 0.0

    @property
    def source(self) -> str:
        return f"{self.note['remote']}:{self.note['volume']}@{self.note['snapshot']}"

    def status(self) -> dict:
        out = {"from": self.source, "state": self.state, "bytes_done": self.done_bytes}
        if self.total_bytes is not None:
            out["bytes_total"] = self.total_bytes
        if self.error:
            out["error"] = self.error
        return out

    def how_far(self) -> str:
        done = self.done_bytes / (1 << 20)
        if self.total_bytes:
            return (f"{done:.0f} of {self.total_bytes / (1 << 20):.0f} MiB, "
                    f"{100 * self.done_bytes / self.total_bytes:.0f}%")
        return f"{done:.0f} MiB so far"

    # The Progress protocol (progress.py), fed by the pull.
    def start(self, what: str, total: int | None = None) -> None:
        self.total_bytes, self.done_bytes = total, 0
        log.info("%s: %s, %s", self.name, what, self.how_far())

    def advance(self, n: int) -> None:
        self.done_bytes += n
        if time.monotonic() - self._logged >= LOG_EVERY:
            self._logged = time.monotonic()
            log.info("%s: pulling %s: %s", self.name, self.source, self.how_far())

    def warn(self, message: str) -> None:
        log.warning("%s: %s", self.name, message)


class Incoming:
    """The pulls of one daemon. Methods block briefly (a store transaction,
    one request to the remote at Create); `wait` and `forget` block longer."""

    def __init__(self, store: Store, mount_wait: float | None = None):
        self.store = store
        # FUSEVOL_PULL_MOUNT_WAIT: shorter, for a dockerd given a shorter timeout (and tests).
        self.mount_wait = mount_wait if mount_wait is not None else \
            float(os.environ.get("FUSEVOL_PULL_MOUNT_WAIT", MOUNT_WAIT))
        self.jobs: dict[str, _Job] = {}
        self.lock = threading.Lock()
        with store.read() as txn:
            noted = remotes.pulls(txn)
        for name, note in noted.items():  # a daemon started again: go on
            log.info("%s: resuming its pull from %s", name, note["remote"])
            self._run(_Job(name, note))

    # -- Create ---------------------------------------------------------------------

    def start(self, name: str, opts: dict) -> bool:
        """Check what can be checked at once, note the pull and start it;
        False for -o remote=NAME when the remote has no snapshot of the volume
        (the caller makes an empty volume)."""
        from . import follow, manifests
        from .s3 import Bucket

        volumes.parse_options(opts)  # every problem named before any download
        if "from-remote" in opts:
            remote_name, _, ref = opts["from-remote"].partition(":")
            volume, snap = snapshots.parse_ref(ref)
            with self.store.read() as txn:
                remote = remotes.get(txn, remote_name)
            manifests.read(Bucket(remote), volume, snap)  # there, and readable with these keys
        else:
            with self.store.read() as txn:
                remote = remotes.get(txn, opts["remote"])
            newest = follow.newest_on_remote(Bucket(remote), name)
            if newest is None:
                return False
            volume, snap = name, newest["name"]
        note = {"remote": remote["name"], "volume": volume, "snapshot": snap, "opts": opts,
                "created_at": _now_rfc3339()}
        self._begin(name, note)
        return True

    def _begin(self, name: str, note: dict) -> None:
        """Note the pull and start it, unless one of that volume runs already."""
        with self.lock:
            if name in self.jobs:
                return  # a call beside this one started it
            job = self.jobs[name] = _Job(name, note)
        with self.store.write() as txn:
            remotes.note_pull(txn, name, note)
        self._run(job)

    # -- a newer snapshot, before the first Mount of a -o remote=NAME volume -------------

    def catch_up(self, name: str, remote: dict, snapshot: str) -> None:
        """Roll the existing volume forward to the remote's SNAPSHOT of it in
        the background, and wait for it as a Mount does (`wait`)."""
        with self.store.read() as txn:
            created_at = volumes.get(txn, name).created_at or _now_rfc3339()
        self._begin(name, {"remote": remote["name"], "volume": name, "snapshot": snapshot,
                           "catch_up": True, "created_at": created_at})
        self.wait(name)

    def _run(self, job: _Job) -> None:
        with self.lock:
            self.jobs[job.name] = job
        job.thread = threading.Thread(target=self._pull, args=(job,), daemon=True,
                                      name=f"pull-{job.name}")
        job.thread.start()

    def _pull(self, job: _Job) -> None:
        from . import pull

        from . import follow

        note = job.note
        try:
            with self.store.read() as txn:
                remote = remotes.get(txn, note["remote"])
                exists = volumes.get(txn, job.name, missing_ok=True) is not None
            if note.get("catch_up"):
                if exists:  # not removed while the daemon was down
                    started = time.monotonic()
                    follow.catch_up(self.store, remote, job.name, note["snapshot"], progress=job,
                                    stop=job.stop)
                    log.info("%s: pulled %s in %.1f s", job.name, job.source,
                             time.monotonic() - started)
            elif exists:
                log.info("%s: installed before the daemon stopped", job.name)
            else:
                started = time.monotonic()
                report = pull.pull(self.store, remote, note["volume"], note["snapshot"],
                                   new_volume=job.name, opts=note["opts"], progress=job,
                                   stop=job.stop)
                log.info("%s: pulled %s: %.0f MiB downloaded in %.1f s", job.name, job.source,
                         report["downloaded_bytes"] / (1 << 20), time.monotonic() - started)
            with self.store.write() as txn:
                remotes.drop_pull(txn, job.name)
            job.state = "done"
            with self.lock:
                if self.jobs.get(job.name) is job:
                    del self.jobs[job.name]
        except pull.Stopped:
            job.state = "stopped"
        except Exception as e:
            job.state = "failed"
            job.error = str(e) if isinstance(e, FusevolError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, FusevolError):
                log.exception("%s: pull from %s failed", job.name, job.source)
            else:
                log.warning("%s: pull from %s failed: %s", job.name, job.source, job.error)
        finally:
            job.finished.set()

    # -- what Docker sees --------------------------------------------------------

    def pending(self, name: str) -> _Job | None:
        with self.lock:
            return self.jobs.get(name)

    def describe(self, name: str) -> dict | None:
        """Get's answer for a volume still being pulled, or None."""
        job = self.pending(name)
        if job is None:
            return None
        return {"Name": name, "CreatedAt": job.note["created_at"], "Status": {"pull": job.status()}}

    def names(self) -> list[str]:
        with self.lock:
            return list(self.jobs)

    # -- Mount and Remove ----------------------------------------------------------

    def wait(self, name: str) -> None:
        """Return once the volume's pull is done (at once if there is none);
        a failed one is started again. Raises Busy if it runs on past the
        Mount's wait, or the error of a pull that failed again."""
        job = self.pending(name)
        if job is None:
            return
        if job.finished.is_set() and job.state == "failed":
            log.info("%s: pulling again (%s)", name, job.error)
            job = _Job(name, job.note)
            self._run(job)
        if not job.finished.wait(self.mount_wait):
            raise Busy(f"volume {name} is still being pulled from remote {job.source} "
                       f"({job.how_far()})", reason="pulling", volume=name)
        if job.state == "failed":
            raise FusevolError(f"volume {name}: its pull from remote {job.source} failed: "
                               f"{job.error}", reason="pull_failed", volume=name)

    def forget(self, name: str) -> bool:
        """Stop the volume's pull and drop its note; False if there was none.
        A pull that installed its volume meanwhile leaves it to the caller."""
        job = self.pending(name)
        if job is None:
            return False
        job.stop.set()
        if not job.finished.wait(STOP_WAIT):
            raise Busy(f"volume {name}: its pull from remote {job.source} did not stop in "
                       f"{STOP_WAIT:.0f} s", volume=name)
        with self.store.write() as txn:
            remotes.drop_pull(txn, name)
        with self.lock:
            if self.jobs.get(name) is job:
                del self.jobs[name]
        return True
