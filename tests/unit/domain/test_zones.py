"""Zones: the shipped Pan'an file, point look-ups and the errors a bad file gives."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from patrol.domain import zones as zones_module
from patrol.domain.zones import OUTSIDE, Scene, ZoneFileError, ZoneMap, load_zones, parse_zones

SQUARE = [[120.0, 29.0], [120.001, 29.0], [120.001, 29.001], [120.0, 29.001], [120.0, 29.0]]


def feature(**overrides: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "zone_id": "z1",
        "name": "文溪路",
        "township": "安文街道",
        "scene": "urban_road",
        "no_parking": True,
    }
    geometry: dict[str, Any] = {"type": "Polygon", "coordinates": [SQUARE]}
    for key, value in overrides.items():
        if key == "geometry":
            geometry = value
        elif value is ...:
            properties.pop(key)
        else:
            properties[key] = value
    return {"type": "Feature", "properties": properties, "geometry": geometry}


def collection(*features: dict[str, Any]) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


@pytest.fixture(scope="module")
def shipped() -> ZoneMap:
    return load_zones()


def test_shipped_zones_cover_the_county_scenes(shipped: ZoneMap) -> None:
    assert len(shipped.zones) >= 12
    assert len({zone.township for zone in shipped.zones}) >= 3
    assert {zone.scene for zone in shipped.zones} == set(Scene)
    assert any(z.no_parking for z in shipped.zones)
    assert any(z.scene is Scene.residential and not z.no_parking for z in shipped.zones)


def test_shipped_zones_do_not_overlap(shipped: ZoneMap) -> None:
    for a, b in combinations(shipped.zones, 2):
        overlap = shipped.polygon(a.zone_id).intersection(shipped.polygon(b.zone_id))
        assert overlap.area == 0, (a.zone_id, b.zone_id)


def test_locate_a_point_on_wenxi_road(shipped: ZoneMap) -> None:
    zone = shipped.locate(29.0542, 120.4425)
    assert zone.zone_id == "anwen-wenxi-rd"
    assert zone.no_parking and zone.grace_minutes == 10
    assert zone.township == "安文街道"


def test_a_point_beside_the_road_is_outside(shipped: ZoneMap) -> None:
    # 60 m north of the 30 m wide road's centre line.
    assert shipped.locate(29.0542 + 60 / 111_320, 120.4425) is OUTSIDE
    assert shipped.locate(30.5, 121.0) is OUTSIDE


def test_every_zone_locates_its_own_interior(shipped: ZoneMap) -> None:
    for zone in shipped.zones:
        inside = shipped.polygon(zone.zone_id).representative_point()
        assert shipped.locate(inside.y, inside.x) == zone


def test_boundary_point_belongs_to_the_zone() -> None:
    zones = parse_zones(collection(feature()))
    assert zones.locate(29.0, 120.0005).zone_id == "z1"  # on the southern edge
    assert zones.locate(29.0005, 120.0005).zone_id == "z1"
    assert zones.locate(28.9999, 120.0005) is OUTSIDE


def test_overlapping_zones_pick_the_smallest() -> None:
    small = [[120.0002, 29.0002], [120.0004, 29.0002], [120.0004, 29.0004], [120.0002, 29.0004]]
    zones = parse_zones(
        collection(
            feature(zone_id="big"),
            feature(
                zone_id="small",
                scene="market",
                geometry={"type": "Polygon", "coordinates": [[*small, small[0]]]},
            ),
        )
    )
    assert zones.locate(29.0003, 120.0003).zone_id == "small"
    assert zones.locate(29.0008, 120.0008).zone_id == "big"


def test_get_returns_outside_for_outside_and_unknown_ids(shipped: ZoneMap) -> None:
    assert shipped.get("outside") is OUTSIDE
    assert shipped.get("no-such-zone") is OUTSIDE
    assert shipped.get("anwen-market").scene is Scene.market


def test_grace_minutes_defaults_to_ten_and_can_be_set() -> None:
    zones = parse_zones(
        collection(
            feature(),
            feature(
                zone_id="z2",
                grace_minutes=5,
                geometry={
                    "type": "MultiPolygon",
                    "coordinates": [[[[x + 0.01, y] for x, y in SQUARE]]],
                },
            ),
        )
    )
    assert zones.get("z1").grace_minutes == 10
    assert zones.get("z2").grace_minutes == 5
    assert zones.locate(29.0005, 120.0105).zone_id == "z2"


def test_grace_minutes_written_as_a_whole_float_is_that_many_minutes() -> None:
    zone = parse_zones(collection(feature(grace_minutes=10.0))).get("z1")
    assert zone.grace_minutes == 10
    assert isinstance(zone.grace_minutes, int)


def test_load_zones_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "zones.geojson"
    path.write_text(collection(feature()), encoding="utf-8")
    assert [z.zone_id for z in load_zones(path).zones] == ["z1"]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ZoneFileError, match=r"missing\.geojson.*PATROL_ZONES"):
        load_zones(tmp_path / "missing.geojson")


def test_not_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    path.write_text('{"type": "FeatureCollection",\n "features": [', encoding="utf-8")
    with pytest.raises(ZoneFileError, match=r"broken\.geojson: not valid JSON \(line 2"):
        load_zones(path)


def test_not_a_feature_collection() -> None:
    with pytest.raises(
        ZoneFileError, match="expected a GeoJSON FeatureCollection, found 'Feature'"
    ):
        parse_zones(json.dumps(feature()), source="zones.geojson")


BOWTIE = [[120.0, 29.0], [120.001, 29.001], [120.001, 29.0], [120.0, 29.001], [120.0, 29.0]]

BAD_FEATURES = [
    (
        {"geometry": {"type": "Point", "coordinates": [120.0, 29.0]}},
        "geometry must be a Polygon or MultiPolygon, found 'Point'",
    ),
    (
        {"geometry": {"type": "Polygon", "coordinates": [BOWTIE]}},
        "invalid Polygon: Self-intersection",
    ),
    (
        {"geometry": {"type": "Polygon", "coordinates": [[[y, x] for x, y in SQUARE]]}},
        "coordinates out of range",
    ),
    ({"scene": "highway"}, "unknown scene 'highway'; use one of urban_road"),
    ({"no_parking": "yes"}, "no_parking must be true or false, found 'yes'"),
    ({"grace_minutes": 0}, "grace_minutes must be a positive whole number"),
    ({"grace_minutes": 7.5}, "grace_minutes must be a positive whole number"),
    ({"grace_minutes": True}, "grace_minutes must be a positive whole number"),
    ({"name": ...}, "name is missing or empty"),
    ({"township": ""}, "township is missing or empty"),
    ({"no_parking_hours": "07:00-09:00"}, "no_parking_hours must be a list of"),
    ({"no_parking_hours": ["7:00-9:00"]}, "'7:00' is not a time \"HH:MM\""),
    ({"no_parking_hours": ["07:00"]}, "entry '07:00' is not \"HH:MM-HH:MM\""),
    ({"no_parking_hours": ["07:00-25:00"]}, "'25:00' is not a time of day"),
    ({"no_parking_hours": ["07:60-09:00"]}, "'07:60' is not a time of day"),
    ({"no_parking_hours": ["24:00-06:00"]}, "'24:00' is not a time of day"),
    ({"no_parking_hours": ["08:00-08:00"]}, "starts and ends at the same time"),
    ({"no_parking_hours": [7]}, "entry 7 is not"),
]


@pytest.mark.parametrize(("overrides", "problem"), BAD_FEATURES)
def test_bad_feature_names_file_index_zone_and_problem(
    overrides: dict[str, Any], problem: str
) -> None:
    text = collection(feature(zone_id="ok"), feature(zone_id="bad-one", **overrides))
    with pytest.raises(ZoneFileError) as raised:
        parse_zones(text, source="county.geojson")
    message = str(raised.value)
    assert message.startswith("county.geojson: feature 1 (zone_id 'bad-one'): ")
    assert problem in message


def test_shipped_zones_have_restricted_hours_where_they_fit(shipped: ZoneMap) -> None:
    school = shipped.get("anwen-school-gate")
    assert [str(h) for h in school.no_parking_hours] == ["07:00-08:30", "15:30-17:30"]
    assert [str(h) for h in shipped.get("fangqian-market").no_parking_hours] == ["05:30-12:00"]
    assert shipped.get("anwen-wenxi-rd").no_parking_hours == ()  # all day


def test_no_parking_hours_parse_with_midnight_crossing_and_a_24_00_end() -> None:
    zones = parse_zones(
        collection(
            feature(zone_id="night", no_parking_hours=["22:00-06:00"]),
            feature(
                zone_id="evening",
                geometry={"type": "Polygon", "coordinates": [[[x + 1, y] for x, y in SQUARE]]},
                no_parking_hours=["18:00-24:00"],
            ),
            feature(
                zone_id="empty",
                geometry={"type": "Polygon", "coordinates": [[[x + 2, y] for x, y in SQUARE]]},
                no_parking_hours=[],
            ),
        )
    )
    night = zones.get("night").no_parking_hours[0]
    assert (night.start, night.end) == (22 * 3600, 6 * 3600)
    assert str(zones.get("evening").no_parking_hours[0]) == "18:00-24:00"
    assert zones.get("empty").no_parking_hours == ()


def test_midnight_to_24_00_restricts_every_second_of_the_day() -> None:
    zone = parse_zones(collection(feature(no_parking_hours=["00:00-24:00"]))).get("z1")
    (hours,) = zone.no_parking_hours
    assert str(hours) == "00:00-24:00"
    assert all(hours.contains(second) for second in (0, 1, 12 * 3600, 86_399))


def test_missing_zone_id_names_the_feature_index() -> None:
    with pytest.raises(ZoneFileError, match=r"county\.geojson: feature 0: zone_id is missing"):
        parse_zones(collection(feature(zone_id=...)), source="county.geojson")


def test_duplicate_zone_id_names_both_features() -> None:
    with pytest.raises(
        ZoneFileError,
        match=r"feature 2 \(zone_id 'z1'\): duplicate zone_id, already used by feature 0",
    ):
        parse_zones(collection(feature(), feature(zone_id="z2"), feature()))


def test_outside_is_a_reserved_zone_id() -> None:
    with pytest.raises(ZoneFileError, match="reserved"):
        parse_zones(collection(feature(zone_id="outside")))


def test_remembered_points_stay_bounded_and_look_ups_stay_right() -> None:
    zones = load_zones()  # its own map: the shared fixture's memory is not this test's
    road = zones.locate(29.0542, 120.4425)
    assert road.zone_id == "anwen-wenxi-rd"
    # points that move (a drone's, a hazard's frames) fill the memory past its bound
    for i in range(zones_module.LOCATE_CACHE_SIZE + 10):
        zones.locate(29.2 + i * 1e-6, 120.9)
    assert len(zones._located) <= zones_module.LOCATE_CACHE_SIZE
    assert zones.locate(29.0542, 120.4425) == road  # found again after the memory was cleared
