"""Point ids as people type and read them: unique prefixes, never cut."""

from __future__ import annotations

import pytest

from vmvault.errors import PointNotFound
from vmvault.point_refs import SHORTEST_REF, AmbiguousPoint, match_point, short_refs

IDS = [
    "20261129T124701.272561Z-3c07d97d",
    "20261129T124708.631933Z-079db4cb",
    "20261129T124708.700001Z-5a5a5a5a",
    "20261130T000000.000000Z-00000000",
]


def test_short_refs_are_the_second_unless_two_points_share_it() -> None:
    refs = short_refs(IDS)
    assert refs[IDS[0]] == "20261129T124701" and len(refs[IDS[0]]) == SHORTEST_REF
    assert refs[IDS[1]] == "20261129T124708.6" and refs[IDS[2]] == "20261129T124708.7"
    assert refs[IDS[3]] == "20261130T000000"
    for point_id, ref in refs.items():  # each names its point and no other
        assert match_point(IDS, ref) == point_id


def test_an_id_that_begins_another_keeps_its_whole_length() -> None:
    refs = short_refs(["20261129T124701", "20261129T124701.5"])
    assert refs == {"20261129T124701": "20261129T124701", "20261129T124701.5": "20261129T124701."}


def test_match_point_names_the_problem() -> None:
    assert match_point(IDS, IDS[2]) == IDS[2]
    with pytest.raises(AmbiguousPoint, match=r"names 2 points .*give more of the id") as raised:
        match_point(IDS, "20261129T124708")
    assert raised.value.code == "ambiguous_point" and raised.value.http_status == 400
    with pytest.raises(PointNotFound):
        match_point(IDS, "2099")
    with pytest.raises(PointNotFound):
        match_point(IDS, "")
