"""The console's templates: one Jinja environment with autoescaping and strict undefined
names, and the few filters the pages use for times, durations, ids and JSON details.

Every filter that returns markup builds it with ``markupsafe`` from escaped text, so a
value never becomes markup however it was stored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig
from markupsafe import Markup, escape

from broker.console.auth import ConsoleOperator
from broker.console.views import Piece, action_lines, details_of, pairs, when
from broker.operators.service import Role

__all__ = [
    "NOTICES",
    "STATIC",
    "TEMPLATES",
    "duration",
    "ident",
    "listing",
    "page",
    "pieces",
    "stamp",
    "template_config",
    "when",
]

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


def ident(value: object, mono: bool = False) -> Markup:
    """An id (a service id, a key's jti, a kid, a digest, a URL) on one line, never broken
    mid-token: where the room ends the stylesheet shortens it with an ellipsis, the tooltip
    shows it whole, and a click selects all of it for copying (the full value is in the
    page, only hidden from view)."""
    text = "" if value is None else str(value)
    if mono:
        return Markup('<code class="id" title="{0}">{0}</code>').format(text)
    return Markup('<span class="id" title="{0}">{0}</span>').format(text)


def stamp(value: datetime | None) -> Markup:
    """A time as the console writes it (``when``), machine-readable in ``datetime``."""
    if value is None:
        return Markup("—")
    utc = value.astimezone(UTC)
    date, _, clock = when(utc).partition(" ")
    # Two unbreakable halves: a narrow column wraps a time between its date and its time
    # of day, never inside either.
    return Markup(
        '<time datetime="{}"><span class="nowrap">{}</span> <span class="nowrap">{}</span></time>'
    ).format(utc.strftime("%Y-%m-%dT%H:%M:%SZ"), date, clock)


def pieces(parts: Any) -> Markup:
    """Words and the ids between them (``views.Piece``): each id through ``ident``."""
    out = Markup("")
    for part in parts:
        out += ident(part.text) if isinstance(part, Piece) and part.token else escape(part.text)
    return out


def listing(values: Any) -> Markup:
    """A detail's values (``views.Detail.values``), comma-separated, ids through ``ident``."""
    return Markup(", ").join(pieces([v]) for v in values)


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
    env.filters["pairs"] = pairs  # kept for the other parts' templates
    env.filters["ident"] = ident
    env.filters["stamp"] = stamp
    env.filters["pieces"] = pieces
    env.filters["listing"] = listing
    env.filters["details"] = details_of
    env.filters["evidence"] = lambda value: details_of(value, humane=True)
    env.filters["action_lines"] = action_lines
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
            "who": who,
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
