"""Crash consistency of every fusevol process: rounds of a mixed workload in
which one process is killed with SIGKILL at a random moment, then checked.

Setting: one store; `fusevol serve` on a private socket (as dockerd would use
it); volume `work` created and mounted through the socket (its worker at
STORE/mnt/work); a volume `replica` that receives incremental streams of
`work`; helper volumes px0, px1 and the view pview (work's folder d0) for
Mount/Unmount traffic.

A round (seeded: the round's RNG comes from the run's seed) runs the file
workload of crash_workload.py on `work` and kills one victim:

- worker:   the FUSE worker of `work`, at a random moment of the workload;
            the volume is then served again by a Mount through the daemon.
- daemon:   `fusevol serve`, while Create/Mount/Unmount/Remove calls are in
            flight (starting and stopping workers, binding the view); it is
            then started again.
- snapshot: `fusevol snapshot create work@NAME`, run beside the workload.
- receive / send: `fusevol send [-i BASE] work@S | fusevol receive TARGET`,
            into a new volume or (incremental) into `replica`; one side killed.
- gc:       `fusevol gc`, beside the workload.

Kills of commands land at a random point of their expected run time
(learnt from runs that finished), so some come after the command ended:
the report counts those apart.

Checks after each round (any failure prints the run's seed, the round's
seed and its operation log):

1. `fusevol verify` exits 0 (the store opens, every chunk and object hashes
   right, every reference count and link is right).
2. `work`, read through its mount, shows namespace(k) (crash_model.py) for
   some k: exactly the paths, folders and hardlink groups (with link counts)
   after the first k namespace events. After a worker kill k is at least the
   index of the last fsync/fsyncdir/sync that returned, so every rename (and
   create, link, unlink, mkdir) that such a call covered is there and none is
   half done (a file under both names, or neither; a folder's entries split).
   When the worker was not killed, k is every event: whatever returned is
   visible.
3. Every file's bytes are what crash_model.FileCandidates allows: bytes made
   durable (by an fsync of the file, a sync, or the end of the previous round)
   and not touched since hold exactly their value (counted: durable bytes
   checked, bytes lost: must be 0); every other byte holds a value some write
   put there, or zero where a truncate cut the file or it grew past its durable
   size (torn only at page granularity, where fsync did not cover it); the size
   is one the file had since its durable point. Without a worker kill every
   byte must be exactly what was written. Reads during the workload compare a
   live file with everything written so far.
4. A snapshot taken during the round, if it exists, shows namespace(k) for k
   between the events done when its command started and those started when it
   ended, with bytes as in 3 (all data written before the start included); one
   whose command exited 0 must exist.
5. A receive's target either does not exist (new volume), or is unchanged
   (replica: its root still its base snapshot's), or holds the received
   snapshot whole: snapshot root == the sent snapshot's root (content
   addressed, so equal ids mean equal trees, and verify found every object
   and chunk under it) and the volume's root at it. A receive that exited 0
   must have done so. (A sender killed after writing its whole stream, while
   exiting, lets the receive succeed: that is right.)
6. After a daemon kill: `work`'s worker still serves (same pid) with every
   returned event visible; each mount ID's count in the store is what the
   acknowledged calls made it (a call in flight may or may not have counted);
   within 30 s the restarted daemon serves exactly the counted volumes (a
   worker per mounted data volume, the view bound when counted) and no other.
"""

import contextlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from crash_model import History, Namespace, Observed, match_namespace
from crash_workload import FIXED_DIRS, Failure, PluginLoad, PluginModel, Workload, wait_until
from plugin_daemon import PluginDaemon
from fusevol.fs import registry
from fusevol.store import Store, chunks, snapshots, trees, volumes
from fusevol.store.schema import Inode, vkey

WORK = "work"
REPLICA = "replica"
PLUGIN_VOLUMES = {"px0": {}, "px1": {}, "pview": {"source": WORK, "subpath": "d0"}, WORK: {}}
VICTIMS = {"worker": 30, "daemon": 25, "snapshot": 15, "receive": 15, "gc": 15}


class RoundFailed(AssertionError):
    pass


@dataclass
class SnapCheck:
    name: str
    lo: int          # events done when the command started
    hi: int          # events started when it ended
    must_exist: bool


@dataclass
class ReceiveCheck:
    target: str
    source: str          # the snapshot of work that was sent
    incremental: bool
    source_root: bytes
    base_root: bytes | None
    exited_ok: bool


class CrashHarness:
    def __init__(self, base: str, seed: int, victims: list[str] | None = None):
        self.base = base
        self.seed = seed
        self.victims = {v: w for v, w in VICTIMS.items() if not victims or v in victims}
        self.rng = random.Random(seed)
        self.store_path = os.path.join(base, "store")
        self.daemon = PluginDaemon(self.store_path, os.path.join(base, "run", "crash.sock"),
                                   os.path.join(base, "serve.log"))
        self.stats: Counter = Counter()
        self.seconds: Counter = Counter()  # by victim
        # Expected run times (s), learnt from runs that finished: kills aim inside them.
        self.expected = {"snapshot": 1.0, "send": 1.2, "receive": 1.2, "gc": 1.0}
        # Seconds from a command's opening the store to its end (learnt likewise).
        self.store_phase = {"snapshot": 0.1, "send": 0.1, "receive": 0.2, "gc": 0.1}
        self.model = PluginModel()
        self.store: Store | None = None
        self.replica_base: str | None = None
        self.started = time.monotonic()

    # -- set-up and tear-down ----------------------------------------------------------

    def setup(self) -> None:
        self.daemon.start()
        self._call_ok("/VolumeDriver.Create", {"Name": WORK})
        self.mp = self._call_ok("/VolumeDriver.Mount", {"Name": WORK, "ID": "hold"})["Mountpoint"]
        for d in FIXED_DIRS:
            os.mkdir(os.path.join(self.mp, d))
        self._sync_work()
        self.store = Store.open(self.store_path)
        self.model.exists = {name: name == WORK for name in PLUGIN_VOLUMES}
        self.model.counts = {(WORK, "hold"): (1, 1)}
        self.ns = Namespace({}, {"", *FIXED_DIRS})
        self.content: dict[int, bytes] = {}
        self.next_fid = 0
        # The replica starts from a full stream; later rounds send increments.
        self._snapshot_now("s-init")
        pipe = self._pipeline(["send", f"{WORK}@s-init"], ["receive", REPLICA])
        self._calibrate(pipe.recv, "receive")
        pipe.check()
        self.replica_base = "s-init"
        for what, args in (("snapshot", ["snapshot", "create", f"{WORK}@s-calibrate"]), ("gc", ["gc"])):
            proc = subprocess.Popen(self._cli(*args), stdout=subprocess.DEVNULL)
            self._calibrate(proc, what)
            if proc.returncode:
                raise RoundFailed(f"fusevol {' '.join(args)} exited {proc.returncode}")

    def _calibrate(self, proc: subprocess.Popen, what: str) -> None:
        """Time a command that is not killed: its whole run, and its store phase."""
        t0 = time.monotonic()
        opened = self._store_opened(proc)
        proc.wait()
        end = time.monotonic()
        self.expected[what] = end - t0
        if opened is not None:
            self.store_phase[what] = end - opened

    def teardown(self) -> None:
        self.daemon.cleanup()
        store = Store._instances.pop(self.store_path, None)
        if store is not None:
            store.close()

    # -- helpers ---------------------------------------------------------------------------

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fusevol", "--store", self.store_path, *args]

    def _call_ok(self, endpoint: str, body: dict) -> dict:
        status, reply = self.daemon.call(endpoint, body)
        if status != 200 or "Err" in reply:
            raise RoundFailed(f"{endpoint} {body} failed: {status} {reply}")
        return reply

    def _sync_work(self) -> None:
        if not registry.flush_worker(self.store_path, WORK):
            raise RoundFailed("no worker serves volume work")

    def _snapshot_now(self, name: str) -> None:
        """What `fusevol snapshot create` does, in this process."""
        self._sync_work()
        with Store.open(self.store_path).write() as txn:
            snapshots.create(txn, WORK, name)

    def _pipeline(self, send_args: list[str], recv_args: list[str]) -> "_Pipe":
        return _Pipe(self._cli(*send_args), self._cli(*recv_args))

    def _learn(self, what: str, seconds: float) -> None:
        self.expected[what] = 0.7 * self.expected[what] + 0.3 * seconds

    def _store_opened(self, proc: subprocess.Popen) -> float | None:
        """When the command opened the store (its LMDB file shows among its
        fds), or None if it ended first."""
        fd_dir = f"/proc/{proc.pid}/fd"
        while proc.poll() is None:
            try:
                for fd in os.listdir(fd_dir):
                    if os.readlink(os.path.join(fd_dir, fd)).endswith("/db/data.mdb"):
                        return time.monotonic()
            except OSError:
                pass
            time.sleep(0.002)
        return None

    # -- one round -----------------------------------------------------------------------

    def run(self, rounds: int) -> None:
        for r in range(rounds):
            self.round(r)
            if (r + 1) % 100 == 0 and r + 1 < rounds:
                print(f"after {r + 1} rounds: {self.summary()}", flush=True)

    def round(self, r: int) -> None:
        t0 = time.monotonic()
        round_seed = self.rng.getrandbits(48)
        rng = random.Random(round_seed)
        victim = rng.choices(list(self.victims), list(self.victims.values()))[0]
        hist = History(self.ns, self.content, self.next_fid)
        notes: list[str] = []
        snaps: list[SnapCheck] = []
        receives: list[ReceiveCheck] = []
        source = None
        if victim == "receive":
            source = f"s{r}"
            self._snapshot_now(source)  # before the workload: it must equal the start state
            snaps.append(SnapCheck(source, 0, 0, True))
        # Most worker kills land in a workload that runs until the kill; the
        # others after a workload that ended (a worker at rest, or flushing).
        until_killed = victim == "worker" and rng.random() < 0.8
        workload = Workload(random.Random(rng.getrandbits(48)), hist, self.mp, self.store_path,
                            WORK, r, ops=200 if until_killed else rng.randint(10, 24))
        plugin = None
        if victim == "daemon":
            plugin = PluginLoad(random.Random(rng.getrandbits(48)), self.daemon, self.model,
                                PLUGIN_VOLUMES, calls=400)
        workload.start()
        if plugin:
            plugin.start()
        worker_pid = registry.worker_of(self.store_path, volume=WORK).pid
        problems: list[str] = []
        crashed = victim == "worker"
        try:
            if victim == "worker":
                self._kill_worker(rng, workload, worker_pid, until_killed, notes)
            elif victim == "daemon":
                self._kill_daemon(rng, plugin, notes)
            elif victim == "snapshot":
                self._kill_snapshot(rng, r, hist, snaps, notes, problems)
            elif victim == "receive":
                victim = self._kill_receive(rng, r, source, receives, notes, problems)
            else:
                self._kill_gc(rng, notes, problems)
            workload.join()
            if workload.failure:
                problems.append(f"workload: {workload.failure}")
            if plugin:
                plugin.join()
                if plugin.failure:
                    problems.append(f"plugin calls: {plugin.failure}")
            self._recover(victim, r, problems)
            if not problems:
                self._check(victim, crashed, hist, worker_pid, snaps, receives, problems)
        except Failure as e:
            problems.append(str(e))
        except Exception as e:  # the store or a command broke a check itself: report the round
            problems.append(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        if problems:
            raise RoundFailed(self._report(r, round_seed, victim, notes, problems, hist, plugin))
        self.stats["rounds"] += 1
        self.stats[f"victim {victim}"] += 1
        self.seconds[victim] += time.monotonic() - t0
        self.stats["events"] += len(hist.events)
        self.stats["live reads checked"] += workload.reads_checked
        self._settle(receives)

    # -- victims ----------------------------------------------------------------------------

    def _kill_worker(self, rng, workload: Workload, pid: int, until_killed: bool, notes: list) -> None:
        if until_killed:
            delay = rng.uniform(0.05, 1.5)
            workload.done.wait(delay)
        else:
            workload.done.wait(120)
            delay = rng.uniform(0.0, 0.5)
            time.sleep(delay)
        workload.worker_killed.set()
        during = not workload.done.is_set()
        os.kill(pid, signal.SIGKILL)
        notes.append(f"worker {pid} killed {delay:.2f}s {'into' if during else 'after'} the "
                     f"workload (after event {len(workload.hist.events) - 1})")
        self.stats["worker kills during the workload" if during else "worker kills after it"] += 1
        if not wait_until(lambda: not registry.pid_alive(pid), 30):
            raise Failure(f"worker {pid} still alive 30 s after SIGKILL")

    def _kill_daemon(self, rng, plugin: PluginLoad, notes: list[str]) -> None:
        delay = rng.uniform(0.05, 2.0)
        plugin.thread.join(delay)
        plugin.daemon_killed.set()
        in_flight = plugin.in_flight
        self.daemon.kill(signal.SIGKILL)
        notes.append(f"daemon killed {delay:.2f}s in, call in flight: {in_flight}")
        self.stats["daemon kills with a call in flight" if in_flight else "daemon kills between calls"] += 1

    def _kill_command(self, rng, proc: subprocess.Popen, what: str) -> tuple[bool, str]:
        """SIGKILL a command at a random moment: (whether the kill landed, when).
        Its imports take most of its run, so most kills wait until it has the
        store open and land within the time its store work takes (learnt from
        runs that ended); the others land anywhere, start-up included."""
        t0 = time.monotonic()
        if rng.random() < 0.25:
            opened, delay, when = None, rng.uniform(0.0, self.expected[what]), "at any moment"
        else:
            opened = self._store_opened(proc)
            delay, when = rng.uniform(0.0, 1.2 * self.store_phase[what]), "with the store open"
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.stats[f"{what} kills landed {when}"] += 1
            return True, f"killed {when}, {time.monotonic() - t0:.2f}s after its start"
        end = time.monotonic()
        self._learn(what, end - t0)
        if opened is not None:
            self.store_phase[what] = 0.7 * self.store_phase[what] + 0.3 * (end - opened)
        self.stats[f"{what} ended before the kill"] += 1
        return False, f"ended before the kill ({end - t0:.2f}s)"

    def _kill_snapshot(self, rng, r: int, hist: History, snaps: list, notes: list, problems: list) -> None:
        time.sleep(rng.uniform(0.0, 0.3))  # let the workload change things first
        name = f"r{r}"
        lo = hist.completed()
        proc = subprocess.Popen(self._cli("snapshot", "create", f"{WORK}@{name}"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        killed, when = self._kill_command(rng, proc, "snapshot")
        hi = len(hist.events)
        err = proc.stderr.read().decode(errors="replace")
        notes.append(f"snapshot {name} {when} (events {lo}..{hi}); exit {proc.returncode} {err.strip()}")
        if not killed and proc.returncode != 0:
            problems.append(f"fusevol snapshot create exited {proc.returncode}: {err}")
        snaps.append(SnapCheck(name, lo, hi, must_exist=not killed))

    def _kill_receive(self, rng, r: int, source: str, receives: list, notes: list, problems: list) -> str:
        """Kill one side of send | receive; returns which ("send" or "receive")."""
        incremental = rng.random() < 0.5
        target = REPLICA if incremental else f"rcv{r}"
        with self.store.read() as txn:
            source_root = bytes.fromhex(snapshots.get(txn, WORK, source).root)
            base_root = bytes.fromhex(snapshots.get(txn, REPLICA, self.replica_base).root) \
                if incremental else None
        send = ["send"] + (["-i", f"{WORK}@{self.replica_base}"] if incremental else []) + [f"{WORK}@{source}"]
        pipe = self._pipeline(send, ["receive", target])
        which = "send" if rng.random() < 0.25 else "receive"
        killed, when = self._kill_command(rng, pipe.send if which == "send" else pipe.recv, which)
        pipe.wait()
        notes.append(f"{'incremental' if incremental else 'full'} stream of {source} into {target}; "
                     f"{which} {when}; "
                     f"send exit {pipe.send.returncode}, receive exit {pipe.recv.returncode} "
                     f"{pipe.recv_err.strip()}")
        if not killed and (pipe.send.returncode or pipe.recv.returncode):
            problems.append(f"send | receive failed without a kill: {pipe.send_err} {pipe.recv_err}")
        receives.append(ReceiveCheck(target, source, incremental, source_root, base_root,
                                     pipe.recv.returncode == 0))
        return which

    def _kill_gc(self, rng, notes: list, problems: list) -> None:
        time.sleep(rng.uniform(0.0, 0.3))
        proc = subprocess.Popen(self._cli("gc", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        killed, when = self._kill_command(rng, proc, "gc")
        out, err = proc.stdout.read(), proc.stderr.read().decode(errors="replace")
        notes.append(f"gc {when}; exit {proc.returncode}")
        if not killed:
            if proc.returncode != 0:
                problems.append(f"fusevol gc exited {proc.returncode}: {err}")
            else:
                report = json.loads(out)
                if report["counts_fixed"] or report["missing"] or report["totals_fixed"]:
                    problems.append(f"gc found wrong counts (a crash left them): {report}")

    # -- recovery -----------------------------------------------------------------------------

    def _recover(self, victim: str, r: int, problems: list) -> None:
        if victim == "worker":
            # A Mount through the daemon replaces a dead worker (as a container start would).
            status, reply = self.daemon.call("/VolumeDriver.Mount", {"Name": WORK, "ID": f"recover{r}"})
            if status != 200 or "Err" in reply:
                problems.append(f"Mount after the worker's death failed: {reply}")
                return
            self._call_ok("/VolumeDriver.Unmount", {"Name": WORK, "ID": f"recover{r}"})
        elif victim == "daemon":
            self.daemon.start()

    # -- checks ---------------------------------------------------------------------------------

    def _check(self, victim: str, crashed: bool, hist: History, worker_pid: int, snaps: list, receives: list,
               problems: list) -> None:
        proc = subprocess.run(self._cli("verify"), capture_output=True, text=True)
        if proc.returncode != 0:
            problems.append(f"fusevol verify exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        if victim == "daemon":
            info = registry.worker_of(self.store_path, volume=WORK)
            if info is None or info.pid != worker_pid:
                problems.append(f"the worker of work changed after a daemon kill: {info}")
        self.observed = observe_mount(self.mp)
        self._check_volume(crashed, hist, problems)
        with self.store.read() as txn:
            for snap in snaps:
                self._check_snapshot(txn, hist, snap, problems)
            for rc in receives:
                self._check_receive(txn, rc, problems)
        if victim == "daemon":
            self._check_daemon(problems)

    def _check_volume(self, crashed: bool, hist: History, problems: list) -> None:
        hi = len(hist.events)
        lo = hist.durable_namespace_index() if crashed else hist.completed()
        fits, why = find_prefixes(self.observed, hist, lo, hi)
        if not fits:
            problems.append(f"volume work after the round: no namespace of events {lo}..{hi} "
                            f"matches it; against all {hi} events: {why}")
            return
        k = self._fitting_content(fits, lambda k, found, stats: self._check_files(
            self.observed, hist, hist.namespace(k), hi, crashed, "volume work", found,
            counted="durable bytes checked after a worker kill" if crashed
            else "bytes checked live", stats=stats), problems)
        for ev in hist.events:
            if ev.kind != "rename" or not ev.done:
                continue
            if not crashed:
                self.stats["renames visible live"] += 1
            elif ev.index < lo:
                self.stats["renames covered by a durable call, kept after a worker kill"] += 1
            else:
                self.stats["renames not covered, " + ("kept" if ev.index < k else "undone")
                           + " after a worker kill"] += 1

    def _fitting_content(self, fits: list[int], check, problems: list) -> int:
        """The largest prefix k (of `fits`, whose namespaces the volume shows) whose
        files' content fits too: the same names may stand for other files at
        different k (a name unlinked and made again). Its figures join the stats;
        if none fits, the largest k's problems are the round's."""
        first = None
        for k in fits:
            found, stats = [], Counter()
            check(k, found, stats)
            if first is None:
                first = (k, found, stats)
            if not found:
                self.stats.update(stats)
                return k
        k, found, stats = first
        self.stats.update(stats)
        problems.extend(found)
        return k

    def _check_files(self, observed: Observed, hist: History, ns: Namespace, hi: int, crashed: bool,
                     where: str, problems: list, counted: str, lo: int | None = None,
                     stats: Counter | None = None) -> None:
        stats = self.stats if stats is None else stats
        for fid, paths in ns.groups().items():
            ino = observed.files[paths[0]][0]
            if lo is not None:
                start = lo
            else:
                start = hist.durable_data_index(fid) if crashed else hi
            report = hist.candidates(fid, start, hi).check(observed.content[ino])
            stats[counted] += report.durable_bytes
            stats["bytes lost"] += report.lost_bytes
            for p in report.problems:
                problems.append(f"{where}: {paths[0]} (fid {fid}, durable up to event {start}): {p}")

    def _check_snapshot(self, txn, hist: History, snap: SnapCheck, problems: list) -> None:
        raw = txn.get("snapshots", snapshots._key(WORK, snap.name))
        if raw is None:
            if snap.must_exist:
                problems.append(f"snapshot {WORK}@{snap.name} is missing although its command succeeded")
            else:
                self.stats["snapshots absent after a kill"] += 1
            return
        observed = tree_state(txn, bytes.fromhex(json.loads(bytes(raw))["root"]))
        fits, why = find_prefixes(observed, hist, snap.lo, snap.hi)
        if not fits:
            problems.append(f"snapshot {snap.name}: no namespace of events {snap.lo}..{snap.hi} "
                            f"matches it; against event {snap.hi}: {why}")
            return
        self._fitting_content(fits, lambda k, found, stats: self._check_files(
            observed, hist, hist.namespace(k), snap.hi, True, f"snapshot {snap.name}", found,
            counted="snapshot bytes checked", lo=snap.lo, stats=stats), problems)
        self.stats["snapshots checked"] += 1

    def _check_receive(self, txn, rc: ReceiveCheck, problems: list) -> None:
        record = volumes.get(txn, rc.target, missing_ok=True)
        snaps = {s.name: bytes.fromhex(s.root) for s in snapshots.list_all(txn, rc.target)} \
            if record else {}
        live = None
        if record:
            raw = txn.get("inodes", vkey(record.vid, 1))
            live = Inode.unpack(raw).tree_id if raw is not None else None
        received = rc.source_root in snaps.values()
        if rc.exited_ok and not received:
            problems.append(f"receive into {rc.target} exited 0 but holds no snapshot of the sent root")
        if received:
            if live != rc.source_root:
                problems.append(f"{rc.target} holds the received snapshot, but its root is "
                                f"{live and live.hex()[:16]}, not the snapshot's")
            self.stats["receives checked: complete"] += 1
        elif rc.incremental:
            if live != rc.base_root:
                problems.append(f"replica changed by a receive that did not complete "
                                f"(root {live and live.hex()[:16]}, base {rc.base_root.hex()[:16]})")
            self.stats["receives checked: absent (replica unchanged)"] += 1
        else:
            if record is not None:
                problems.append(f"volume {rc.target} exists without the received snapshot")
            self.stats["receives checked: absent"] += 1

    def _check_daemon(self, problems: list) -> None:
        model = self.model
        with self.store.read() as txn:
            records = {name: volumes.get(txn, name, missing_ok=True) for name in PLUGIN_VOLUMES}
        counts = {(name, mid): n for name, rec in records.items() if rec
                  for mid, n in rec.mounts.items()}
        for name, rec in records.items():
            want = model.exists.get(name)
            if want is not None and want != (rec is not None):
                problems.append(f"volume {name} {'exists' if rec else 'is gone'} against the "
                                f"acknowledged calls")
        for key in set(model.counts) | set(counts):
            lo, hi = model.counts.get(key, (0, 0))
            got = counts.get(key, 0)
            if not lo <= got <= hi:
                problems.append(f"mount count of {key[0]} for ID {key[1]} is {got}; the "
                                f"acknowledged calls make it {lo}" + (f"..{hi}" if hi != lo else ""))
        if problems:
            return
        # What the store says is now the model.
        model.exists = {name: rec is not None for name, rec in records.items()}
        model.counts = {key: (n, n) for key, n in counts.items()}
        want = {name: sum(n for (v, _), n in counts.items() if v == name) > 0 for name in PLUGIN_VOLUMES}
        if not wait_until(lambda: self._serving() == want, 30, 0.2):
            problems.append(f"30 s after the restart the daemon serves {self._serving()}, "
                            f"the counts say {want}")

    def _serving(self) -> dict[str, bool]:
        out = {}
        for name in PLUGIN_VOLUMES:
            path = self.daemon.mountpoint_of(name)
            bound = registry.is_mountpoint(path) and _answers(path)
            if PLUGIN_VOLUMES[name].get("source"):
                out[name] = bound
            else:
                out[name] = bound and registry.worker_of(self.store_path, volume=name) is not None
        return out

    # -- between rounds ---------------------------------------------------------------------------

    def _settle(self, receives: list) -> None:
        """Make the checked state durable and the next round's start; drop what the round made."""
        self._sync_work()
        observed = self.observed
        ns, content, by_ino = Namespace({}, set(observed.dirs)), {}, {}
        for path, (ino, _) in sorted(observed.files.items()):
            if ino not in by_ino:
                self.next_fid += 1
                by_ino[ino] = self.next_fid
                content[self.next_fid] = observed.content[ino]
            ns.files[path] = by_ino[ino]
        self.ns, self.content = ns, content
        with self.store.write() as txn:
            # The replica's snapshot of that name, not any with the same root: a
            # killed receive of a snapshot equal to the base left no such name.
            held = {s.name: bytes.fromhex(s.root) for s in snapshots.list_all(txn, REPLICA)}
            for rc in receives:
                if rc.incremental and held.get(rc.source) == rc.source_root:
                    self.replica_base = rc.source
            keep = {self.replica_base}
            for s in snapshots.list_all(txn, WORK):
                if s.name not in keep:
                    snapshots.remove(txn, WORK, s.name)
            for s in snapshots.list_all(txn, REPLICA):
                if s.name not in keep:
                    snapshots.remove(txn, REPLICA, s.name)
            for rc in receives:
                if not rc.incremental and volumes.get(txn, rc.target, missing_ok=True):
                    for s in snapshots.list_all(txn, rc.target):
                        snapshots.remove(txn, rc.target, s.name)
                    volumes.remove(txn, rc.target)

    # -- reporting ------------------------------------------------------------------------------

    def _report(self, r, round_seed, victim, notes, problems, hist: History, plugin) -> str:
        lines = [f"crash round {r} failed: run seed {self.seed} (FUSEVOL_CRASH_SEED={self.seed} "
                 f"FUSEVOL_CRASH_ROUNDS={r + 1} replays the choices), round seed {round_seed}, "
                 f"victim {victim}"]
        lines += [f"  {n}" for n in notes]
        lines.append("problems:")
        lines += [f"  - {p}" for p in problems]
        lines.append("operation log of the round (index, operation):")
        lines.append(hist.log())
        if plugin:
            lines.append("plugin calls: " + "; ".join(plugin.log))
        lines.append(f"store: {self.store_path}; daemon log: {self.daemon.log_path}")
        return "\n".join(lines)

    def summary(self) -> str:
        s = self.stats
        s["seconds"] = round(time.monotonic() - self.started)
        per_round = ", ".join(f"{v} {self.seconds[v] / s[f'victim {v}']:.1f}"
                              for v in sorted(self.seconds))
        return (f"crash rounds: {s['rounds']} in {s['seconds']} s (seed {self.seed}); "
                + ", ".join(f"{k}: {v}" for k, v in sorted(s.items()) if k not in ("rounds", "seconds"))
                + f"; seconds per round by victim: {per_round}")


class _Pipe:
    """`fusevol send ... | fusevol receive ...`"""

    def __init__(self, send_cmd: list[str], recv_cmd: list[str]):
        self.send = subprocess.Popen(send_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.recv = subprocess.Popen(recv_cmd, stdin=self.send.stdout, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.send.stdout.close()  # the receiver holds the only read end
        self.send_err = self.recv_err = ""

    def wait(self) -> None:
        for proc in (self.send, self.recv):
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.send_err = self.send.stderr.read().decode(errors="replace")
        self.recv_err = self.recv.stderr.read().decode(errors="replace")

    def check(self) -> None:
        self.wait()
        if self.send.returncode or self.recv.returncode:
            raise RoundFailed(f"send | receive failed: {self.send_err} {self.recv_err}")


def _answers(path: str) -> bool:
    try:
        os.statvfs(path)
        return True
    except OSError:
        return False


def find_prefixes(observed: Observed, hist: History, lo: int, hi: int) -> tuple[list[int], str]:
    """Every k in [lo, hi] whose namespace the volume shows, the largest first, and
    why hi does not fit."""
    why = match_namespace(observed, hist.namespace(hi)) or ""
    fits = [k for k in range(hi, lo - 1, -1) if match_namespace(observed, hist.namespace(k)) is None]
    return fits, why


def observe_mount(mp: str) -> Observed:
    files, dirs, content = {}, {""}, {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(mp, rel) if rel else mp) as it:
            for entry in it:
                path = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    dirs.add(path)
                    stack.append(path)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise Failure(f"{path} is neither a file nor a folder (mode {st.st_mode:o})")
                files[path] = (st.st_ino, st.st_nlink)
                if st.st_ino not in content:
                    with open(entry.path, "rb") as f:
                        content[st.st_ino] = f.read()
                    if len(content[st.st_ino]) != st.st_size:
                        raise Failure(f"{path}: stat says {st.st_size} bytes, read gave "
                                      f"{len(content[st.st_ino])}")
    return Observed(files, dirs, content)


def tree_state(txn, root: bytes) -> Observed:
    """A snapshot's tree as the same kind of view (inode numbers are the tree's)."""
    files, dirs, content = {}, set(), {}
    bs = txn.store.block_size
    for path, _, obj in trees.walk(txn, root):
        p = path.decode()
        if obj.kind == trees.DIR:
            dirs.add(p)
            continue
        files[p] = (obj.ino, obj.inode.nlink)
        if obj.ino not in content:
            buf = bytearray(obj.inode.size)
            for index, cid in obj.blocks:
                data = chunks.read(txn, cid)[: max(0, obj.inode.size - index * bs)]
                buf[index * bs: index * bs + len(data)] = data
            content[obj.ino] = bytes(buf)
    return Observed(files, dirs, content)


@contextlib.contextmanager
def harness(base: str, seed: int, victims: list[str] | None = None):
    h = CrashHarness(base, seed, victims)
    try:
        h.setup()
        yield h
    finally:
        h.teardown()
