"""The Chinese a driver and a dispatcher read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from patrol.domain import texts
from patrol.domain.models import TaskType
from patrol.domain.routing import DEPARTMENTS
from patrol.domain.texts import CHINA_STANDARD_TIME, DEPARTMENT_NAMES, sms_warning, task_summary
from patrol.domain.zones import OUTSIDE, Scene, Zone

ZONE = Zone("anwen-wancang-rd", "万苍路", "安文街道", Scene.urban_road, True, 10)
T0 = datetime.fromisoformat("2026-11-27T10:00:00+08:00")


def test_sms_warning_reads_as_a_driver_expects() -> None:
    text = sms_warning("浙G12345", ZONE, T0, T0 + timedelta(minutes=10))
    assert text == (
        "【磐安综合行政执法】您的车辆浙G12345于11月27日10:00在万苍路(安文街道)违停,"
        "请于10:10前驶离并自行纠正,逾期将依法处理。"
    )


def test_sms_times_are_shown_in_china_standard_time() -> None:
    first_seen = T0.astimezone(UTC)
    text = sms_warning("浙G12345", ZONE, first_seen, first_seen + timedelta(minutes=10))
    assert "11月27日10:00" in text and "10:10前" in text


def test_sms_deadline_on_the_next_day_shows_its_date() -> None:
    first_seen = datetime.fromisoformat("2026-11-27T23:55:00+08:00")
    text = sms_warning("浙G12345", ZONE, first_seen, first_seen + timedelta(minutes=10))
    assert "于11月27日23:55在" in text
    assert "请于11月28日00:05前驶离" in text


def test_parking_summary_says_what_where_who_and_by_when() -> None:
    due_by = datetime.fromisoformat("2026-11-27T04:10:00+00:00")
    summary = task_summary(
        TaskType.illegal_parking, ZONE, "comprehensive_enforcement", due_by, "浙G12345"
    )
    assert summary == (
        "【违停】安文街道万苍路车辆浙G12345违停超时未驶离,"
        "请县综合行政执法局于11月27日12:10前处置并反馈。"
    )


def test_hazard_summary_names_the_hazard_and_department() -> None:
    reservoir = Zone("anwen-reservoir", "安文水库", "安文街道", Scene.water_source, False)
    summary = task_summary(
        TaskType.open_burning, reservoir, "ecology_environment", T0 + timedelta(minutes=30), None
    )
    assert summary == (
        "【露天焚烧】安文街道安文水库发现露天焚烧,请市生态环境局磐安分局于11月27日10:30前处置并反馈。"
    )


def test_summary_outside_every_zone_does_not_show_an_internal_township() -> None:
    summary = task_summary(TaskType.roadside_vending, OUTSIDE, "market_supervision", T0, None)
    assert summary.startswith("【占道经营】未划定区域发现占道经营")
    assert OUTSIDE.township not in summary


def test_every_routable_department_has_a_chinese_name() -> None:
    assert set(DEPARTMENT_NAMES) == set(DEPARTMENTS)
    assert all(name.endswith("局") for name in DEPARTMENT_NAMES.values())


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])))
def test_times_read_as_strftime_would_write_them(moment: datetime) -> None:
    local = moment.astimezone(CHINA_STANDARD_TIME)
    assert texts._day_and_time(moment) == f"{local.month}月{local.day}日{local:%H:%M}"
    assert texts._time_after(moment, moment) == f"{local:%H:%M}"
