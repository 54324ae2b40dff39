"""Time formats of the Docker Engine API and Go's human-readable durations.

Times where precision matters are integer nanoseconds since the Unix epoch
(the C{*_ns} functions).  The float variants take or return seconds and keep
microsecond precision, the finest a float64 stores reliably for present-day
epoch values.
"""

from __future__ import annotations

import datetime
import functools
import re

from emiso.errors import InvalidParameter

NS_PER_SECOND = 1_000_000_000

#: Go's zero C{time.Time} in RFC 3339, which Docker writes for "never".
ZERO_TIME = "0001-01-01T00:00:00Z"

#: Length of Docker's fixed-width log timestamp C{2006-01-02T15:04:05.000000000Z}.
FIXED_TIMESTAMP_LENGTH = 30

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_UNIX_TIME = re.compile(r"(-?\d+)(?:\.(\d{1,9}))?")


def seconds_to_ns(t: float) -> int:
    """
    Convert float seconds since the epoch to integer nanoseconds.

    The value is rounded to whole microseconds because a float64 epoch time
    carries no reliable digits below that.
    """
    return round(t * 1_000_000) * 1000


def ns_to_seconds(ns: int) -> float:
    """Convert integer nanoseconds since the epoch to float seconds."""
    return ns / NS_PER_SECOND


def _split_ns(ns: int) -> tuple[str, int]:
    """Return the C{YYYY-MM-DDTHH:MM:SS} UTC text of C{ns} and its nanoseconds."""
    seconds, fraction = divmod(ns, NS_PER_SECOND)
    moment = _EPOCH + datetime.timedelta(seconds=seconds)
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    return text, fraction


def format_rfc3339_nano_ns(ns: int | None) -> str:
    """
    Format a time like Go's C{time.RFC3339Nano} in UTC.

    Go drops the trailing zeros of the fraction and the dot when the
    fraction is zero.  C{None} and 0 give Go's zero time, which Docker uses
    for C{StartedAt} and C{FinishedAt} of a container that never started or
    never finished.
    """
    if not ns:
        return ZERO_TIME
    text, fraction = _split_ns(ns)
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def format_rfc3339_nano(t: float | None) -> str:
    """Format float seconds like L{format_rfc3339_nano_ns}."""
    if not t:
        return ZERO_TIME
    return format_rfc3339_nano_ns(seconds_to_ns(t))


def format_fixed_timestamp_ns(ns: int) -> str:
    """
    Format a time as Docker's fixed-width log timestamp (30 characters).

    The layout is C{2006-01-02T15:04:05.000000000Z}: UTC, always nine
    fraction digits, so log lines align.
    """
    text, fraction = _split_ns(ns)
    return f"{text}.{fraction:09d}Z"


def format_fixed_timestamp(t: float) -> str:
    """Format float seconds like L{format_fixed_timestamp_ns}."""
    return format_fixed_timestamp_ns(seconds_to_ns(t))


@functools.lru_cache(maxsize=64)
def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Return the number of days from 1970-01-01 to a date (ValueError if invalid)."""
    return (datetime.date(year, month, day) - _EPOCH.date()).days


def _clock_seconds(hour: int, minute: int, second: int) -> int:
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time of day out of range: {hour}:{minute}:{second}")
    return hour * 3600 + minute * 60 + second


def parse_fixed_timestamp_ns(text: str | bytes) -> int:
    """
    Parse a fixed-width log timestamp into integer nanoseconds.

    @param text: exactly C{YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ} (30 characters).
    @raise ValueError: if C{text} has another layout or an invalid date.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii")
    if (
        len(text) != FIXED_TIMESTAMP_LENGTH
        or text[4] != "-"
        or text[7] != "-"
        or text[10] != "T"
        or text[13] != ":"
        or text[16] != ":"
        or text[19] != "."
        or text[29] != "Z"
    ):
        raise ValueError(f"not a fixed-width timestamp: {text!r}")
    digits = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16])
    digits += (text[17:19], text[20:29])
    if not all(part.isdigit() and part.isascii() for part in digits):
        raise ValueError(f"not a fixed-width timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction = map(int, digits)
    days = _days_since_epoch(year, month, day)
    seconds = days * 86400 + _clock_seconds(hour, minute, second)
    return seconds * NS_PER_SECOND + fraction


def parse_fixed_timestamp(text: str | bytes) -> float:
    """Parse a fixed-width log timestamp into float seconds (microsecond precision)."""
    return ns_to_seconds(parse_fixed_timestamp_ns(text))


def _fraction_to_ns(digits: str | None) -> int:
    if not digits:
        return 0
    return int(digits.ljust(9, "0"))


def parse_rfc3339_ns(text: str) -> int:
    """
    Parse an RFC 3339 time with an optional fraction of up to nine digits.

    @raise ValueError: if C{text} is not RFC 3339 or names an invalid date.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    seconds = _days_since_epoch(year, month, day) * 86400
    seconds += _clock_seconds(hour, minute, second)
    if match.group(9):
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        if match.group(9) == "+":
            seconds -= offset
        else:
            seconds += offset
    return seconds * NS_PER_SECOND + _fraction_to_ns(match.group(7))


def parse_docker_time_ns(value: str, parameter: str = "time") -> int:
    """
    Parse a C{since} or C{until} query value into integer nanoseconds.

    Accepted forms: Unix seconds (C{1733327000}), seconds with a fraction of
    up to nine digits (C{1733327000.5}, C{1733327000.123456789}, the docker
    CLI's form), and RFC 3339 times (C{2026-12-04T15:43:11.5Z}).  A fraction
    is a decimal fraction of a second, as in Docker's C{timetypes}.

    @param parameter: the query parameter's name, used in the error message.
    @raise InvalidParameter: for any other value.
    """
    text = value.strip()
    match = _UNIX_TIME.fullmatch(text)
    if match is not None:
        seconds = int(match.group(1))
        # Like Go's timetypes, "-1.5" means -1 s plus 0.5 s.
        return seconds * NS_PER_SECOND + _fraction_to_ns(match.group(2))
    try:
        return parse_rfc3339_ns(text)
    except ValueError:
        pass
    raise InvalidParameter(
        f'invalid value for "{parameter}": {value!r}. Use Unix seconds,'
        f" seconds.nanoseconds or an RFC 3339 time."
    )


def parse_docker_time(value: str, parameter: str = "time") -> float:
    """Parse a C{since} or C{until} value like L{parse_docker_time_ns}, as seconds."""
    return ns_to_seconds(parse_docker_time_ns(value, parameter))


_MINUTE_NS = 60 * NS_PER_SECOND
_HOUR_NS = 60 * _MINUTE_NS
_DAY_NS = 24 * _HOUR_NS
_WEEK_NS = 7 * _DAY_NS
_MONTH_NS = 30 * _DAY_NS
_YEAR_NS = 365 * _DAY_NS


def _round_to_unit(duration_ns: int, unit_ns: int) -> int:
    # Go: int(float64(d)/float64(unit) + 0.5), float64 division then truncation.
    return int(duration_ns / unit_ns + 0.5)


def human_duration_ns(duration_ns: int) -> str:
    """
    Describe a duration the way Docker's C{Status} text does.

    The rules follow C{HumanDuration} in github.com/docker/go-units
    (duration.go, as vendored by docker/cli): seconds and minutes are
    truncated, hours and larger units are rounded to the nearest whole unit,
    and every negative duration is "Less than a second".
    """
    if duration_ns < NS_PER_SECOND:
        return "Less than a second"
    seconds = duration_ns // NS_PER_SECOND
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = duration_ns // _MINUTE_NS
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = _round_to_unit(duration_ns, _HOUR_NS)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if duration_ns < 2 * _WEEK_NS:
        return f"{_round_to_unit(duration_ns, _DAY_NS)} days"
    if duration_ns < 2 * _MONTH_NS:
        return f"{_round_to_unit(duration_ns, _WEEK_NS)} weeks"
    if duration_ns < 2 * _YEAR_NS:
        return f"{_round_to_unit(duration_ns, _MONTH_NS)} months"
    return f"{_round_to_unit(duration_ns, _YEAR_NS)} years"


def human_duration(seconds: float) -> str:
    """Describe a duration given in float seconds like L{human_duration_ns}."""
    return human_duration_ns(round(seconds * NS_PER_SECOND))
