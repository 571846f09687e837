"""The console's pages and forms for services over their whole life: bindings, quarantine by
hand, retirement.

The forms call the same functions as the API routes (``identity.service.quarantine_by_hand``,
``identity.service.replace_bindings``, ``cutoff.services.retire_service``) in the request's
one transaction, then send the browser back with a fixed notice. A refused quarantine or
retirement (a blank reason, a service already retired) is the console's error page, nothing
written. The bindings editor is a JSON text area: "Review" shows the diff (a dry run); a
change that widens who can act as the service shows what widens it and a confirm step that
sends the change's digest, exactly as the API's ``confirm``; a change that only narrows is
applied from the same review. Mistakes in the JSON are shown on the editor, with the text
kept.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.console import views
from broker.console.auth import ConsoleForm, ConsoleOperator
from broker.console.rendering import page
from broker.cutoff.services import retire_service
from broker.errors import BrokerError, InvalidInput
from broker.http.deps import requires
from broker.identity import service as identity
from broker.identity.bindings import summary
from broker.identity.schemas import BindingIn
from broker.identity.service import JWT, ServiceView
from broker.models import ServiceBinding
from broker.operators.service import Role
from broker.runtime import Runtime

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]

# This module's notices (fixed text, never taken from the request).
NOTICES = {
    "quarantined": ("The service is quarantined: it gets no new keys until an admin releases it."),
    "retired": (
        "The service is retired for good: it can no longer authenticate, its live keys "
        "were revoked and its policies closed. Its history is kept."
    ),
    "bindings_replaced": "The identity bindings were replaced.",
    "bindings_unchanged": "Nothing changed: the bindings are already these.",
}
# The badge classes the stylesheet already has, by state.
BADGE = {
    "active": "active",
    "quarantined": "quarantined",
    "disabled": "disabled",
    "retired": "disabled",
}
# A posted bindings document: ten bindings of up to fifty public keys fit well within.
MAX_BINDINGS_TEXT = 200_000
_BindingList = Annotated[list[BindingIn], msgspec.Meta(max_length=10)]


@requires(Role.AUDITOR)
@get("/services", name="console-services")
async def services(
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
) -> Template:
    rows = await views.service_rows(db)
    return page(
        "services.html",
        operator,
        section="services",
        title="Services",
        notice=notice,
        service_notice=NOTICES.get(notice or ""),
        rows=rows,
        badge=BADGE,
    )


@requires(Role.AUDITOR)
@get("/services/{service_id:str}", name="console-service")
async def service_page(
    service_id: FromPath[str],
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
) -> Template:
    view = await identity.get_service_view(db, service_id)
    bindings = [summary(b) for b in view.bindings]
    return _page("service.html", operator, view, f"Service {service_id}", notice, bindings=bindings)


def _page(
    template: str,
    who: ConsoleOperator,
    view: ServiceView,
    title: str,
    notice: str | None,
    **context: Any,
) -> Template:
    """A page on one service: its row and status badge, and this module's notice."""
    return page(
        template,
        who,
        section="services",
        title=title,
        service_notice=NOTICES.get(notice or ""),
        row=views.ServiceRow(view, views.service_status(view)),
        badge=BADGE,
        **context,
    )


def _back(service_id: str, done: str, *, to: str = "") -> Redirect:
    return Redirect(
        path=f"/console/services/{service_id}{to}", query_params={"done": done}, status_code=303
    )


@requires(Role.ADMIN)
@post("/services/{service_id:str}/quarantine", name="console-service-quarantine")
async def quarantine(
    service_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Redirect:
    await identity.quarantine_by_hand(
        db, service_id, actor=form.operator.actor, reason=form.text("reason", identity.MAX_REASON)
    )
    return _back(service_id, "quarantined")


@requires(Role.ADMIN)
@post("/services/{service_id:str}/retire", name="console-service-retire")
async def retire(
    service_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
    runtime: NamedDependency[Runtime],
) -> Redirect:
    # Irreversible: the operator types the service's id, so a slip of the mouse on the
    # wrong row retires nothing.
    if form.text("confirm_id", 100) != service_id:
        raise InvalidInput("type the service's id to confirm its retirement")
    await retire_service(
        db,
        service_id,
        actor=form.operator.actor,
        reason=form.text("reason", identity.MAX_REASON),
        settings=runtime.settings,
    )
    return _back(service_id, "retired")


# -- the bindings editor -----------------------------------------------------------------------


def binding_input(b: ServiceBinding) -> dict[str, Any]:
    """A stored binding in the shape the API and the editor take (registration's)."""
    if b.kind != JWT:
        return {"kind": b.kind}
    out: dict[str, Any] = {
        "kind": JWT,
        "issuer": b.issuer,
        "audience": b.audience,
        "subject": b.subject,
    }
    if b.claims:
        out["claims"] = dict(b.claims)
    if b.algorithms:
        out["algorithms"] = list(b.algorithms)
    if b.jwks_url is not None:
        out["jwks_url"] = b.jwks_url
    else:
        out["jwks"] = b.jwks
    return out


def bindings_text(view: ServiceView) -> str:
    return json.dumps([binding_input(b) for b in view.bindings], indent=2)


def parse_bindings(text: str) -> list[BindingIn]:
    """The editor's JSON: a list of bindings, or ``{"bindings": [...]}``; 422 naming what
    is wrong."""
    if len(text) > MAX_BINDINGS_TEXT:
        raise InvalidInput(f"the bindings are longer than {MAX_BINDINGS_TEXT} characters")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the bindings are not valid JSON: {str(exc)[:200]}") from None
    if isinstance(document, dict) and set(document) == {"bindings"}:
        document = document["bindings"]
    try:
        return msgspec.convert(document, _BindingList)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"the bindings do not fit: {str(exc)[:300]}") from None


async def _editor(
    db: AsyncSession,
    who: ConsoleOperator,
    service_id: str,
    *,
    text: str | None = None,
    review: identity.BindingsOutcome | None = None,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Template:
    view = await identity.get_service_view(db, service_id)
    return _page(
        "service_bindings.html",
        who,
        view,
        f"Bindings of {service_id}",
        notice,
        status_code=status_code,
        current=bindings_text(view),
        text=bindings_text(view) if text is None else text,
        review=review.change if review is not None else None,
        error=error,
    )


@requires(Role.AUDITOR)
@get("/services/{service_id:str}/bindings", name="console-service-bindings")
async def bindings_page(
    service_id: FromPath[str],
    operator: NamedDependency[ConsoleOperator],
    db: NamedDependency[AsyncSession],
    notice: Notice = None,
) -> Template:
    return await _editor(db, operator, service_id, notice=notice)


@requires(Role.ADMIN)
@post("/services/{service_id:str}/bindings", name="console-service-bindings-change")
async def change_bindings(
    service_id: FromPath[str],
    form: NamedDependency[ConsoleForm],
    db: NamedDependency[AsyncSession],
) -> Template | Redirect:
    """``step=review``: a dry run, shown as the diff. ``step=apply``: the reviewed change,
    with its digest (``confirm``) as the page showed it."""
    text = form.values.get("bindings", "")
    apply = form.values.get("step") == "apply"
    await identity.get_service(db, service_id)  # 404 for an unknown service, as a page
    try:
        specs = parse_bindings(text)
        outcome = await identity.replace_bindings(
            db,
            service_id,
            specs,
            actor=form.operator.actor,
            confirm=(form.text("confirm", 100) or None) if apply else None,
            dry_run=not apply,
        )
    except (identity.StaleChange, identity.UnconfirmedWidening) as exc:
        # The bindings changed since the review (or it was never reviewed): review again.
        review = await identity.replace_bindings(
            db, service_id, specs, actor=form.operator.actor, dry_run=True
        )
        return await _editor(
            db, form.who, service_id, text=text, review=review, error=exc.detail, status_code=409
        )
    except BrokerError as exc:
        if exc.status == 404:
            raise
        return await _editor(
            db, form.who, service_id, text=text, error=exc.detail, status_code=exc.status
        )
    if not apply:
        return await _editor(db, form.who, service_id, text=text, review=outcome)
    done = "bindings_replaced" if outcome.applied else "bindings_unchanged"
    return _back(service_id, done, to="/bindings")


ROUTES: list[Any] = [
    services,
    service_page,
    quarantine,
    retire,
    bindings_page,
    change_bindings,
]
