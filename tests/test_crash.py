"""Crash consistency: SIGKILL a worker, the driver daemon or a CLI command at a
random moment of a mixed workload, then check the store and every volume
(what is checked: crash_harness.py).

CI runs 50 rounds (about 3 minutes); by hand, for example:
FUSEVOL_CRASH_ROUNDS=1000 pytest -s tests/test_crash.py
FUSEVOL_CRASH_SEED picks the run's seed (printed on failure and at the end);
FUSEVOL_CRASH_VICTIMS=worker,gc limits the victims (worker, daemon, snapshot,
receive, gc).
"""

import os
import random

import pytest

from conftest import needs_fuse
from crash_harness import harness

ROUNDS = int(os.environ.get("FUSEVOL_CRASH_ROUNDS", "50"))
SEED = int(os.environ.get("FUSEVOL_CRASH_SEED") or random.SystemRandom().getrandbits(32))
VICTIMS = [v for v in os.environ.get("FUSEVOL_CRASH_VICTIMS", "").split(",") if v]


@needs_fuse
@pytest.mark.timeout(max(600, ROUNDS * 30))
def test_crash_rounds(tmp_path):
    with harness(str(tmp_path), SEED, VICTIMS) as h:
        try:
            h.run(ROUNDS)
        finally:
            print("\n" + h.summary())
    assert h.stats["bytes lost"] == 0
    assert h.stats["rounds"] == ROUNDS
