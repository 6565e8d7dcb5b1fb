"""A second process that holds one read transaction of a store open a while:
`python old_reader.py STORE SECONDS`. It reads every row of every table at
the start and again at the end; the same transaction must read the same rows
(LMDB keeps the pages of a reader's snapshot, and so must whatever gives free
pages back to the disk). Prints `ready` once its transaction is open, and
exits non-zero with the first difference (or LMDB's error) if they differ."""

import hashlib
import sys
import time

from fusevol.store import Store, schema


def _digests(txn) -> dict[str, tuple[int, str]]:
    out = {}
    for name in schema.TABLES:
        h, rows = hashlib.sha256(), 0
        for key, value in txn.txn.cursor(txn.store.dbs[name]):
            h.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(8, "big") + value)
            rows += 1
        out[name] = (rows, h.hexdigest())
    return out


def main(path: str, seconds: float) -> int:
    store = Store.open(path)
    with store.read() as txn:
        before = _digests(txn)
        print("ready", flush=True)
        time.sleep(seconds)
        try:
            after = _digests(txn)
        except Exception as e:  # a page of the snapshot gone: LMDB reads it as damage
            print(f"the old read transaction fails: {type(e).__name__}: {e}", flush=True)
            return 1
    changed = [name for name in before if before[name] != after[name]]
    if changed:
        print(f"the old read transaction reads other rows in {', '.join(changed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
