"""`fusevol df` reads right: ratios as "x smaller", and a store that holds more than the
volumes' bytes says why."""

import io
import json
import tarfile

from conftest import run_cli


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_df_of_a_tiny_volume_says_why_stored_is_larger(store_path):
    run_cli(store_path, "volume", "create", "seed")  # the store exists
    run_cli(store_path, "import", "tiny", input=_tar({"f": b"abc"}))
    out = run_cli(store_path, "df").stdout.decode()
    stored = next(line for line in out.splitlines() if line.startswith("stored"))
    assert "0.75x" not in stored
    assert "1 B more, the 1-byte header of each of 1 chunk(s), too small to compress" in stored
    figures = json.loads(run_cli(store_path, "df", "--json").stdout)
    assert (figures["unique_bytes"], figures["stored_bytes"]) == (3, 4)


def test_df_ratios_read_as_x_smaller(store_path):
    run_cli(store_path, "volume", "create", "seed")
    block = bytes(range(256)) * 512  # 128 KiB that compresses well
    run_cli(store_path, "import", "big", input=_tar({"a": block, "b": block}))
    out = run_cli(store_path, "df").stdout.decode()
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "after dedup: 2.00x smaller" in lines["unique"]
    assert "after compression: " in lines["stored"] and "x smaller" in lines["stored"]
    assert "ratio" not in out


def test_df_shows_the_store_file_beside_its_chunks_and_where_the_rest_goes(store_path):
    run_cli(store_path, "volume", "create", "seed")
    files = {f"f{i}": (b"line %d of a small file\n" % i) * (50 + i) for i in range(200)}
    run_cli(store_path, "import", "small", input=_tar(files))
    run_cli(store_path, "snapshot", "create", "small@s")
    figures = json.loads(run_cli(store_path, "df", "--json").stdout)
    stored, file_bytes = figures["stored_bytes"], figures["store_file_bytes"]
    parts = figures["overhead"]
    assert parts.pop("bytes") == file_bytes - stored
    assert parts.pop("ratio") == round((file_bytes - stored) / stored, 4)
    assert parts["object_bytes"] > 0 and parts["dead_bytes"] == 0
    assert stored + sum(parts.values()) == file_bytes
    # 200 chunks of 1-3 KB each in a page of its own would take 800 KiB.
    assert stored < 200 * 4096 / 4 and file_bytes - parts["free_bytes"] < 200 * 4096
    out = run_cli(store_path, "df").stdout.decode()
    assert "over the stored chunks" in out and "tree objects" in out
