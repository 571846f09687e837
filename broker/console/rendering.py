"""The console's templates: one Jinja environment with autoescaping and strict undefined
names, and the few filters the pages use for times and durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig

from broker.console.auth import ConsoleOperator
from broker.console.views import pairs
from broker.operators.service import Role

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

NOTICES = {
    "approved": "Your approval was recorded.",
    "rejected": "The version was rejected.",
    "stale": (
        "Nothing was recorded: the proposal changed after you opened the page. "
        "Review the version shown now before you decide."
    ),
    "released": "The service was released from quarantine.",
    "acknowledged": "The incident was acknowledged.",
    "resolved": "The incident was resolved.",
    "alert_retried": "The alert was queued again; its delivery starts over.",
    "signed_out": "You are signed out.",
}


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(value: timedelta | int | float | None) -> str:
    if value is None:
        return "—"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts[:2]) or "0s"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["duration"] = duration
    env.filters["pairs"] = pairs
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


def page(
    name: str,
    who: ConsoleOperator | None,
    *,
    section: str = "",
    title: str = "",
    notice: str | None = None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """Render a page with what every page needs: the operator, the form token, the
    section for the navigation and a fixed notice (never text taken from the request)."""
    return Template(
        template_name=name,
        context={
            "me": who.principal if who else None,
            "csrf": who.csrf if who else "",
            "may_approve": bool(who and who.can(Role.APPROVER)),
            "may_admin": bool(who and who.can(Role.ADMIN)),
            "section": section,
            "title": title,
            "notice": NOTICES.get(notice or ""),
            **context,
        },
        status_code=status_code,
    )
