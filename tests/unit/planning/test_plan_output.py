"""How `vmvault plan` writes an estimate's duration: nothing under an hour reads as hours."""

from __future__ import annotations

import pytest

from vmvault.cli.render.planning import _duration


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.74, "0.7 s"),
        (2.8, "2.8 s"),
        (42.4, "42 s"),
        (59.6, "1 min"),  # rounds to a minute: not "60 s"
        (60.0, "1 min"),  # was "0:01 h", read as an hour
        (17 * 60 + 10, "17 min"),
        (3569, "59 min"),
        (3590, "1:00 h"),  # rounds to an hour: not "60 min"
        (2 * 3600 + 5 * 60, "2:05 h"),
        (50_000, "13:53 h"),
    ],
)
def test_durations_under_an_hour_read_in_seconds_or_minutes(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown
