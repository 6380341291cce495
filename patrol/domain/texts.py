"""The Chinese a driver or a dispatcher reads: SMS warnings and task summaries.

Times are shown in China Standard Time (UTC+08:00, no daylight saving), whatever offset the
detection carried.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from patrol.domain.models import Lamp, TaskState, TaskType
from patrol.domain.zones import OUTSIDE, Zone

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")
SMS_SIGNATURE = "【磐安综合行政执法】"

DEPARTMENT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "comprehensive_enforcement": "县综合行政执法局",
        "market_supervision": "县市场监督管理局",
        "ecology_environment": "市生态环境局磐安分局",
        "transport": "县交通运输局",
        "culture_tourism": "县文化和广电旅游体育局",
        "emergency_management": "县应急管理局",
        "agriculture_rural": "县农业农村局",
    }
)
"""Chinese names of the county's "1+6" departments, keyed like the routing table."""

TASK_TYPE_NAMES: Mapping[TaskType, str] = MappingProxyType(
    {
        TaskType.illegal_parking: "违停",
        TaskType.roadside_vending: "占道经营",
        TaskType.open_burning: "露天焚烧",
    }
)


def department_name(department: str) -> str:
    """The Chinese name of a department; an unlisted one is shown as its identifier."""
    return DEPARTMENT_NAMES.get(department, department)


def _local(moment: datetime) -> datetime:
    return moment.astimezone(CHINA_STANDARD_TIME)


def _day_and_time(moment: datetime) -> str:
    local = _local(moment)
    return f"{local.month}月{local.day}日{local.hour:02d}:{local.minute:02d}"


def _time_after(moment: datetime, reference: datetime) -> str:
    """HH:MM when on the reference's local day, else with the date, so no one misreads a day."""
    local = _local(moment)
    if local.date() == _local(reference).date():
        return f"{local.hour:02d}:{local.minute:02d}"  # not strftime: several times slower
    return _day_and_time(moment)


def _place(zone: Zone) -> str:
    if zone.zone_id == OUTSIDE.zone_id:
        return zone.name
    return f"{zone.name}({zone.township})"


def sms_warning(plate: str, zone: Zone, first_seen: datetime, deadline: datetime) -> str:
    """The warning a driver receives when the grace period of a parking case starts."""
    return (
        f"{SMS_SIGNATURE}您的车辆{plate}于{_day_and_time(first_seen)}在{_place(zone)}违停,"
        f"请于{_time_after(deadline, first_seen)}前驶离并自行纠正,逾期将依法处理。"
    )


def task_summary(
    task_type: TaskType, zone: Zone, department: str, due_by: datetime, plate: str | None
) -> str:
    """One line for the dispatcher: what, where, which department, by when."""
    where = zone.name if zone.zone_id == OUTSIDE.zone_id else f"{zone.township}{zone.name}"
    if task_type is TaskType.illegal_parking:
        what = f"车辆{plate}违停超时未驶离" if plate else "车辆违停超时未驶离"
    else:
        what = f"发现{TASK_TYPE_NAMES[task_type]}"
    return (
        f"【{TASK_TYPE_NAMES[task_type]}】{where}{what},"
        f"请{department_name(department)}于{_day_and_time(due_by)}前处置并反馈。"
    )


STATE_NAMES: Mapping[TaskState, str] = MappingProxyType(
    {
        TaskState.dispatched: "已派单",
        TaskState.accepted: "已受理",
        TaskState.arrived: "已到场",
        TaskState.resolved: "已处置,待核查",
        TaskState.extended: "已延期",
        TaskState.returned: "已回退指挥中心",
        TaskState.unresolvable: "挂账",
        TaskState.reopened: "复查发现问题复现,重新处置",
        TaskState.closed: "已结案",
    }
)
LAMP_NAMES: Mapping[Lamp, str] = MappingProxyType(
    {Lamp.green: "绿灯", Lamp.yellow: "黄灯(即将超期)", Lamp.red: "红灯(已超期)"}
)


def status_summary(
    task_type: TaskType, township: str, state: TaskState, lamp: Lamp, due_by: datetime
) -> str:
    """One line for the dispatcher on a task's change: what, where, where it stands, its lamp."""
    return (
        f"【{TASK_TYPE_NAMES[task_type]}】{township}任务{STATE_NAMES[state]},"
        f"{LAMP_NAMES[lamp]},时限{_day_and_time(due_by)}。"
    )
