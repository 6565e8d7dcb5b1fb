"""The rules of a volume's life (fusevol/service/rules.py) as pure functions of
typed records, and the records themselves (fusevol/records.py): no store, no
root, no worker."""

import pytest

from fusevol.errors import InUse
from fusevol.records import MountSpec, Snapshot, Volume, Worker
from fusevol.service import rules


def data(name="vol", **kw) -> Volume:
    return Volume(name=name, vid=1, **kw)


def view(name="site", source="vol", **kw) -> Volume:
    return Volume(name=name, source=source, subpath="public", **kw)


def worker(volume="vol", mountpoint="/srv/vol", subpath=None) -> Worker:
    return Worker(pid=4242, volume=volume, mountpoint=mountpoint, subpath=subpath)


# -- records -------------------------------------------------------------------------


def test_a_volume_record_reads_and_writes_back_unchanged():
    stored = {"name": "vol", "vid": 3, "created_at": "2026-01-01T00:00:00Z",
              "options": {"size": "1M"}, "readonly": False, "source": None, "subpath": None,
              "quota": 1 << 20, "compression": "zstd", "atime": None, "suid": False, "dev": False,
              "mounts": {"id1": 2}, "received_from": "a@b", "future_key": [1, 2]}
    volume = Volume.from_dict(stored)
    assert (volume.quota, volume.mount_count, volume.extra) == (1 << 20, 2, {"future_key": [1, 2]})
    assert volume.to_dict() == stored


def test_an_old_record_gets_the_defaults_and_keeps_its_shape():
    old = {"name": "vol", "vid": 1, "created_at": "x", "options": {}}
    volume = Volume.from_dict(old)
    assert (volume.readonly, volume.compression, volume.mounts, volume.removed) == \
        (False, "zstd", {}, False)
    # Keys written only when set stay absent: `volume inspect` shows what it showed.
    assert not {"mounts", "removed", "received_from"} & set(volume.to_dict())


def test_family_and_views():
    assert (data().family, data().is_view) == ("vol", False)
    assert (view().family, view().is_view) == ("vol", True)


def test_worker_and_snapshot_records_round_trip():
    entry = {"pid": 7, "volume": "vol", "mounted_as": "site", "mountpoint": "/m",
             "readonly": True, "subpath": "public", "options": "noatime"}
    assert Worker.from_dict(entry).to_dict() == entry
    snap = {"volume": "vol", "name": "s1", "root": "ab", "created_at": "t", "created_ns": 5,
            "logical_bytes": 1, "inodes": 2, "next_ino": 3, "hardlinks": [],
            "received_from": "x@y"}
    assert Snapshot.from_dict(snap).to_dict() == snap
    assert Snapshot.from_dict(snap).ref == "vol@s1"


def test_records_behave_as_the_dataclasses_they_were():
    """Written out by hand (no dataclasses at a command's start), with what the
    decorator gave them: equality by value within a class, no hash unless
    frozen, a repr of every field, a copy with changes, defaults not shared."""
    assert data() == data() and data() != Volume(name="vol", vid=2) and data() != view()
    assert Worker(1, "v", "/m") == Worker(pid=1, volume="v", mountpoint="/m")
    assert data().__eq__(object()) is NotImplemented
    with pytest.raises(TypeError):
        hash(data())
    assert repr(worker()) == ("Worker(pid=4242, volume='vol', mountpoint='/srv/vol', mounted_as=None, "
                              "readonly=False, subpath=None, options=None, pidns=None, "
                              "takes_snapshots=False, extra={})")
    one, two = Volume("a"), Volume("b")
    one.options["k"] = "v"
    assert two.options == {} and two.mounts == {} and two.extra == {}
    moved = worker().replace(pid=1, subpath="x")
    assert (moved.pid, moved.subpath, moved.volume) == (1, "x", "vol") and worker().pid == 4242
    with pytest.raises(TypeError):
        worker().replace(nosuch=1)
    spec = MountSpec("site", data(), None, True)
    assert spec == MountSpec(name="site", data=data(), subpath=None, readonly=True)
    assert MountSpec.from_dict(spec.to_dict()) == spec
    for frozen, field in ((spec, "name"), (rules.Holders(data()), "worker")):
        with pytest.raises(AttributeError):
            setattr(frozen, field, None)
    assert rules.Holders(data()).family_mounts == {}


# -- removal -------------------------------------------------------------------------


def test_nothing_holds_it_it_goes():
    rules.check_remove(rules.Holders(data()))


def test_removal_refused_while_containers_count_mounts():
    with pytest.raises(InUse, match=r"volume vol is mounted \(3 mount\(s\)\)") as e:
        rules.check_remove(rules.Holders(data(mounts={"a": 1, "b": 2})))
    assert (e.value.holder, e.value.action, e.value.details["count"]) == ("containers", "remove", 3)


def test_removal_refused_while_a_worker_serves_the_data():
    with pytest.raises(InUse, match="mounted at /srv/vol") as e:
        rules.check_remove(rules.Holders(data(), worker=worker()))
    assert e.value.holder == "worker" and e.value.details["pid"] == 4242


def test_a_view_goes_while_its_source_is_served():
    # The worker serves the source's rows; the view has none of its own.
    rules.check_remove(rules.Holders(view(), worker=worker()))


def test_removal_refused_while_something_is_mounted_at_its_place():
    with pytest.raises(InUse, match="still mounted at /store/mnt/site") as e:
        rules.check_remove(rules.Holders(view(), mounted_at_driver="/store/mnt/site"))
    assert e.value.holder == "mount"


# -- rollback ------------------------------------------------------------------------


def test_rollback_refused_while_containers_use_the_volume_or_its_views():
    holders = rules.Holders(data(), family_mounts={"site": 1, "vol": 2}, worker=worker())
    with pytest.raises(InUse, match=r"in use by containers \(through site, vol\)") as e:
        rules.check_rollback(holders, force=True)  # force never stops containers
    assert e.value.holder == "containers"


def test_rollback_of_a_served_volume_needs_force():
    holders = rules.Holders(data(), worker=worker())
    with pytest.raises(InUse, match="mounted at /srv/vol") as e:
        rules.check_rollback(holders, force=False)
    assert e.value.details["force_helps"] is True
    assert rules.check_rollback(holders, force=True) == worker()  # to stop and start again


def test_rollback_of_an_idle_volume():
    assert rules.check_rollback(rules.Holders(data()), force=False) is None


# -- the rest ------------------------------------------------------------------------


def test_the_driver_adopts_only_its_own_worker():
    rules.check_adoptable("vol", worker(mountpoint="/store/mnt/vol"), "/store/mnt/vol")
    with pytest.raises(InUse, match="outside Docker") as e:
        rules.check_adoptable("vol", worker(mountpoint="/home/me/vol"), "/store/mnt/vol")
    assert e.value.action == "mount"
    with pytest.raises(InUse):  # a view's worker (`fusevol mount --subpath`) at that place
        rules.check_adoptable("vol", worker(mountpoint="/store/mnt/vol", subpath="a"),
                              "/store/mnt/vol")


def test_flush_before_read_asks_the_worker_of_the_family():
    assert rules.flush_target(view(), "site") == "vol"
    assert rules.flush_target(data(), "vol") == "vol"
    assert rules.flush_target(None, "gone") == "gone"


def test_receive_is_blocked_by_a_serving_worker():
    assert rules.receive_blocked(worker()) and not rules.receive_blocked(None)


def test_gc_leaves_orphans_of_served_volumes():
    vols = [data("a"), Volume(name="b", vid=2), view("v", source="a")]
    assert rules.served_vids(vols, [worker("a")]) == {1}


def test_a_view_mounted_on_the_host_is_named_by_its_place():
    held = view(mounts={"host:/mnt/site": 1})
    with pytest.raises(InUse, match="volume site is mounted at /mnt/site") as e:
        rules.check_remove(rules.Holders(volume=held))
    assert (e.value.holder, e.value.details["mountpoint"]) == ("mount", "/mnt/site")
    both = view(mounts={"host:/mnt/site": 1, "c1": 1})
    with pytest.raises(InUse, match=r"mounted \(2 mount\(s\)\)") as e:
        rules.check_remove(rules.Holders(volume=both))
    assert e.value.holder == "containers"
