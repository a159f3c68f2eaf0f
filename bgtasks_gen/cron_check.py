"""Will a schedule ever fire? Answered from the arguments add-task renders, read the way
celery's `crontab` and arq's `cron` read them, without either library installed.

Both libraries fire only on a day that matches the month, the day of month *and* the day
of week: celery's `crontab.remaining_delta` tests all three, arq's `next_cron` skips a
day on any mismatch. Standard cron fires when either day field matches once both are
restricted; neither runner does, so "0 9 31 2 1" (Mondays, or the 31st of February)
never fires with them: celery's crontab refuses it when `celery_app` is imported, arq's
worker searches day by day until the year 10000 and crashes.

The search walks the candidate dates year by year. The Gregorian calendar repeats every
400 years (146,097 days, a whole number of weeks), so 400 years without a match means
never.
"""

from __future__ import annotations

import ast
import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from bgtasks_gen.errors import BadInput
from bgtasks_gen.schedules import CELERY_FIELDS, arq_cron_kwargs, celery_crontab_kwargs
from bgtasks_gen.task_request import TaskRequest

CALENDAR_CYCLE_YEARS = 400
# the longest each month can be; 29 February exists in leap years
LONGEST_MONTH = {month: calendar.monthrange(2000, month)[1] for month in range(1, 13)}


@dataclass(frozen=True)
class ScheduleFields:
    """The values a schedule matches, per field, as the runner expands them."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # of the month, 1-31
    months: frozenset[int]  # 1-12
    weekdays: frozenset[int]  # datetime.weekday(): Monday is 0


def _first_time(fields: ScheduleFields, earliest: time) -> time | None:
    for hour in sorted(h for h in fields.hours if h >= earliest.hour):
        for minute in sorted(fields.minutes):
            if (hour, minute) >= (earliest.hour, earliest.minute):
                return time(hour, minute)
    return None


def next_fire(fields: ScheduleFields, after: datetime) -> datetime | None:
    """The first whole minute strictly after `after` (naive, UTC) the schedule matches,
    or None when it never does."""
    start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for year in range(start.year, start.year + CALENDAR_CYCLE_YEARS + 1):
        for month in sorted(fields.months):
            if (year, month) < (start.year, start.month):
                continue
            last_day = calendar.monthrange(year, month)[1]
            for day in sorted(d for d in fields.days if d <= last_day):
                when = date(year, month, day)
                if when < start.date() or when.weekday() not in fields.weekdays:
                    continue
                found = _first_time(fields, start.time() if when == start.date() else time())
                if found is not None:
                    return datetime.combine(when, found)
    return None


# -- celery: crontab(minute="0", hour="9", ...) with string arguments -------------------


class UnreadableField(ValueError):
    """A field celery's crontab parser would raise on."""


def _celery_values(spec: str, size: int, low: int) -> frozenset[int]:
    """crontab_parser(size, low).parse(spec) for the forms add-task renders."""
    values: list[int] = []
    for part in spec.split(","):
        base, slash, step = part.partition("/")
        if base == "*":
            numbers = list(range(low, low + size))
        elif "-" in base:
            first, _, last = base.partition("-")
            numbers = list(range(int(first), int(last) + 1))
        elif slash or not base.isdigit():
            # "5/15" is not a range, so celery reads it as a weekday name, and fails
            raise UnreadableField(part)
        else:
            numbers = [int(base)]
        values += numbers[:: int(step)] if slash else numbers
    return frozenset(values)


def celery_fields(kwargs: Iterable[tuple[str, str]]) -> ScheduleFields:
    given = dict(kwargs)
    expanded = {
        key: _celery_values(given.get(key, "*"), size, low) for key, size, low in CELERY_FIELDS
    }
    return ScheduleFields(
        minutes=expanded["minute"],
        hours=expanded["hour"],
        days=expanded["day_of_month"],
        months=expanded["month_of_year"],
        # crontab counts Sunday as 0 (isoweekday() % 7)
        weekdays=frozenset((d - 1) % 7 for d in expanded["day_of_week"]),
    )


# -- arq: cron(month={1, 6}, minute=set(range(0, 60, 5)), ...) with Python literals -----


def _arq_values(literal: str) -> frozenset[int]:
    node = ast.parse(literal, mode="eval").body
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "set"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Call)
    ):
        bounds = [ast.literal_eval(a) for a in node.args[0].args]
        return frozenset(range(*bounds))
    value = ast.literal_eval(node)
    return frozenset({value} if isinstance(value, int) else value)


def arq_fields(kwargs: Iterable[tuple[str, str]]) -> ScheduleFields:
    given = {key: _arq_values(value) for key, value in kwargs}

    def field(key: str, everything: range) -> frozenset[int]:
        return given.get(key, frozenset(everything))  # arq matches any value of a field left out

    return ScheduleFields(
        minutes=field("minute", range(60)),
        hours=field("hour", range(24)),
        days=field("day", range(1, 32)),
        months=field("month", range(1, 13)),
        weekdays=field("weekday", range(7)),
    )


# -- the check add-task runs ------------------------------------------------------------


def _listed(words: list[str], joiner: str) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" {joiner} " + words[-1]


def _why_never(fields: ScheduleFields, runner: str) -> str:
    if not any(day <= LONGEST_MONTH[month] for month in fields.months for day in fields.days):
        days = _listed([str(d) for d in sorted(fields.days)], "and")
        months = _listed([calendar.month_name[m] for m in sorted(fields.months)], "or")
        subject = (
            f"day {days} never occurs" if len(fields.days) == 1 else f"days {days} never occur"
        )
        return f"{subject} in {months}"
    return (
        f"no date within {CALENDAR_CYCLE_YEARS} years matches its month, day of month and "
        f"day of week together, and {runner} needs all three to match"
    )


def schedule_fields(runner: str, request: TaskRequest) -> ScheduleFields:
    """The fields of the schedule add-task renders for `runner`, as that runner reads them
    (its spec's cron_reader)."""
    from bgtasks_gen.runners import get_runner

    if get_runner(runner).cron_reader == "crontab":
        return celery_fields(celery_crontab_kwargs(request))
    return arq_fields(arq_cron_kwargs(request))


def refuse_never_firing(runner: str, request: TaskRequest, now: datetime | None = None) -> None:
    """Raise BadInput when the request's --cron would never fire on `runner`, or its
    --every is an interval the runner's scheduler cannot keep."""
    cron = request.cron
    if cron is None:
        if request.every:
            refuse_unkept_interval(runner, request.every)
        return
    try:
        fields = schedule_fields(runner, request)
    except UnreadableField as exc:
        raise BadInput(
            f"--cron {cron.expression!r}: {runner} cannot read the field {str(exc)!r}",
            "write a step over a range (a-b/n) or over * (*/n)",
        ) from exc
    moment = now or datetime.now(UTC).replace(tzinfo=None)
    if next_fire(fields, moment) is not None:
        return
    both = cron.day_of_week != "*"
    raise BadInput(
        f"--cron {cron.expression!r} never fires: {_why_never(fields, runner)}",
        (
            f"{runner} runs it only on days matching the day of month and the day of week "
            "both (not either, as standard cron does); "
            if both
            else ""
        )
        + "pick days that exist in those months (29 February fires in leap years only)",
    )


def both_day_fields_note(runner: str, request: TaskRequest) -> str | None:
    """A note for a schedule that restricts the day of month and the day of week: the
    runners match both, where standard cron matches either."""
    cron = request.cron
    if cron is None or cron.day_of_month == "*" or cron.day_of_week == "*":
        return None
    return (
        f"schedule: {runner} runs {request.name} only on days that match both the day of "
        f"month ({cron.day_of_month}) and the day of week ({cron.day_of_week}); standard "
        "cron would run it on days matching either"
    )


# how a message names a clock period, and the unit of the period before it
PERIOD_NAMES = {60: "a minute", 3600: "an hour", 86400: "a day"}
UNIT_NAMES = {1: "seconds", 60: "whole minutes", 3600: "whole hours"}


def refuse_unkept_interval(runner: str, seconds: int) -> None:
    """Raise BadInput when `runner` cannot run a job every `seconds` seconds: a scheduler
    that matches clock fields (its spec's every_clock_periods) repeats only at steps that
    divide one of those periods evenly, in whole units of the period before it."""
    from bgtasks_gen.runners import get_runner

    periods = get_runner(runner).every_clock_periods
    if not periods:
        return
    units = (1, *periods[:-1])
    if any(
        seconds % unit == 0 and period % seconds == 0
        for unit, period in zip(units, periods, strict=True)
    ):
        return
    names = [
        f"{UNIT_NAMES.get(unit, f'multiples of {unit} s')} that divide "
        f"{PERIOD_NAMES.get(period, f'{period} s')}"
        for unit, period in zip(units, periods, strict=True)
    ]
    spelled = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    examples = sorted({p // d for p in periods for d in (12, 2) if p % d == 0})[:4]
    raise BadInput(
        f"--every {seconds}: {runner} cannot run a job every {seconds} seconds: its "
        f"scheduler fires on clock values, so the interval must be {spelled}",
        f"use a number of seconds such as {', '.join(map(str, examples))}, or --cron",
    )
