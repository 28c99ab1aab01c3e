"""What the web UI's pages share: rendering, template filters, the server-side downloads chart."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import Request, Response

from condagate.security.permissions import Principal
from condagate.services.context import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _moment(value: datetime | None) -> str:
    """``2024-05-01 12:34:56 UTC``; naive datetimes from the database are UTC."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - value).total_seconds())
    future = seconds < -5  # a time to come (the next check of a failing upstream)
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            count = seconds // size
            amount = f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"


def _built(timestamp: int) -> str:
    """A repodata ``timestamp`` (milliseconds, or seconds in old packages) as a date."""
    if not timestamp:
        return ""
    seconds = timestamp / 1000 if timestamp > 10**11 else timestamp
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return ""


# A link target from package metadata or another user-supplied value: http(s) only, nothing a browser
# would read differently (no whitespace or control characters that browsers strip or skip).
_HTTP_URL = re.compile(r"https?://[^\s/?#\\]+[^\s\\]*", re.IGNORECASE | re.ASCII)


def http_url(value: object) -> str | None:
    """The URL when its scheme is http or https (so it may become a link), else None: shown as text."""
    if not isinstance(value, str) or len(value) > 2000 or not value.isprintable():
        return None
    return value if _HTTP_URL.fullmatch(value) else None


# What users see for each permission (the words of the mission's "Manage Security" page).
PERMISSION_LABELS = {
    "view": "View/Download",
    "add": "Add Package",
    "promote": "Promote Packages",
    "delete": "Overwrite/Delete",
    "manage-feed": "Manage Feed",
    "admin": "Administer",
}


def _permission_label(value: object) -> str:
    return PERMISSION_LABELS.get(str(value), str(value))


FILTERS = {
    "moment": _moment,
    "iso": _iso,
    "ago": _ago,
    "built": _built,
    "http_url": http_url,
    "permission_label": _permission_label,
}


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    principal: Principal = getattr(request.state, "principal", None) or context.get("principal")  # type: ignore[assignment]
    templates = request.app.state.templates
    if "moment" not in templates.env.filters:
        templates.env.filters.update(FILTERS)
    context = {
        "principal": principal,
        "csrf_token": (principal.csrf_token if principal is not None else None) or "",
        "base_url": str(request.base_url).rstrip("/"),
        **context,
    }
    response: Response = templates.TemplateResponse(request, template, context, status_code=status_code)
    return response


@dataclass(frozen=True)
class Bar:
    day: str
    count: int
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class Tick:
    y: float
    value: int


@dataclass(frozen=True)
class DailyChart:
    """Bars per day, laid out for an inline SVG (the page loads nothing to draw it)."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    bars: list[Bar]
    ticks: list[Tick]
    total: int
    days: int

    @property
    def baseline(self) -> float:
        return self.height - self.bottom


def _nice_ceiling(value: int) -> int:
    if value <= 10:
        return max(value, 1)
    magnitude = int(10 ** math.floor(math.log10(value)))
    return next(step * magnitude for step in (1, 2, 5, 10) if value <= step * magnitude)


def daily_chart(
    per_day: list[tuple[str, int]], *, days: int = 30, width: int = 720, height: int = 160, today: date | None = None
) -> DailyChart:
    """One bar per UTC day, the last ``days`` days up to today, missing days counted as 0."""
    today = today or datetime.now(UTC).date()
    counts = dict(per_day)
    span = [(today - timedelta(days=offset)).isoformat() for offset in range(days - 1, -1, -1)]
    left, right, top, bottom = 40, 8, 10, 24
    plot_width, plot_height = width - left - right, height - top - bottom
    peak = _nice_ceiling(max((counts.get(day, 0) for day in span), default=0))
    slot = plot_width / days
    bar_width = max(2.0, slot * 0.7)
    bars = []
    for index, day in enumerate(span):
        count = counts.get(day, 0)
        bar_height = plot_height * count / peak
        label = f"{day}: {count} download{'' if count == 1 else 's'}"
        bars.append(
            Bar(
                day,
                count,
                round(left + index * slot + (slot - bar_width) / 2, 2),
                round(top + plot_height - bar_height, 2),
                round(bar_width, 2),
                round(bar_height, 2),
                label,
            )
        )
    ticks = [Tick(round(top + plot_height - plot_height * value / peak, 2), value) for value in {0, peak // 2, peak}]
    return DailyChart(
        width,
        height,
        left,
        right,
        top,
        bottom,
        bars,
        sorted(ticks, key=lambda t: t.value),
        sum(counts.get(day, 0) for day in span),
        days,
    )
