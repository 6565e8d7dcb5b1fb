"""The rates a user sets for pulls and pushes (FUSEVOL_PULL_LIMIT, FUSEVOL_PUSH_LIMIT)."""

import pytest

from fusevol.remote import pace


@pytest.mark.parametrize("text, rate", [
    ("", None), ("20M", 20 << 20), ("512k", 512 << 10), ("1.5G", int(1.5 * (1 << 30))),
    ("1000", 1000), ("0", None), ("-5M", None), ("fast", None),
])
def test_a_limit_is_read_with_its_suffix_and_nonsense_means_none(monkeypatch, text, rate):
    monkeypatch.setenv("FUSEVOL_PUSH_LIMIT", text)
    assert pace.limit("FUSEVOL_PUSH_LIMIT") == rate
    assert (pace.pace_for("FUSEVOL_PUSH_LIMIT") is None) == (rate is None)
