"""How many days the store is asked to retain a vault's objects, as `vault immutability`
decides it: the default where the store can, refusals where it cannot, never shorter while
the vault stays immutable."""

from __future__ import annotations

import pytest

from vmvault.policy import (
    STORE_RETENTION_DAYS,
    ImmutableVaultError,
    PolicyError,
    StoreRetentionUnavailable,
    choose_store_retention_days,
)


def test_nothing_said_takes_the_default_where_the_store_can() -> None:
    assert choose_store_retention_days("off", None, "locked", None, available=True) == 30
    assert STORE_RETENTION_DAYS == 30
    assert choose_store_retention_days("off", None, "on", None, available=False) is None
    # What was recorded stays, the store able or not (a copy in a plainer bucket).
    assert choose_store_retention_days("on", 90, "locked", None, available=True) == 90
    assert choose_store_retention_days("on", 90, "locked", None, available=False) == 90
    # Turning it off keeps the record, unapplied, for the next time it is turned on.
    assert choose_store_retention_days("on", 90, "off", None, available=True) == 90
    assert choose_store_retention_days("off", None, "off", None, available=True) is None


def test_asking_a_store_that_cannot_is_refused_with_its_reason() -> None:
    why = "bucket 'b' has no Object Lock"
    with pytest.raises(StoreRetentionUnavailable, match="has no Object Lock") as refused:
        choose_store_retention_days("off", None, "locked", 7, available=False, why_not=why)
    assert refused.value.code == "store_retention_unavailable"
    assert refused.value.exit_code == 2 and refused.value.http_status == 409
    # "vmvault only" is always possible where nothing was promised.
    assert choose_store_retention_days("off", None, "locked", 0, available=False) is None


def test_never_shorter_while_immutable() -> None:
    assert choose_store_retention_days("locked", 30, "locked", 60, available=True) == 60
    for shorter in (29, 0):
        with pytest.raises(ImmutableVaultError, match="cannot be shortened from 30 days"):
            choose_store_retention_days("locked", 30, "locked", shorter, available=True)
        with pytest.raises(ImmutableVaultError):
            choose_store_retention_days("on", 30, "locked", shorter, available=True)
    # Before immutability, or while turning it off (from "on"), anything goes.
    assert choose_store_retention_days("off", 30, "locked", 5, available=True) == 5
    assert choose_store_retention_days("on", 30, "off", 0, available=True) is None


def test_out_of_range() -> None:
    for bad in (-1, 36501):
        with pytest.raises(PolicyError, match="0 \\(none\\) or 1 to 36500"):
            choose_store_retention_days("off", None, "locked", bad, available=True)
    with pytest.raises(PolicyError, match="must be one of"):
        choose_store_retention_days("off", None, "sealed", 5, available=True)  # type: ignore[arg-type]
