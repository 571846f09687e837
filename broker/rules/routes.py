"""``GET/PUT /v1/admin/rules``: auditors read the anomaly rules, admins tune them."""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import UNSET
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.operators.service import OperatorPrincipal, Role
from broker.rules import config
from broker.rules.config import RuleChange, RuleView
from broker.rules.schemas import EscalationOut, RuleOut, RulesUpdate, ThresholdOut
from broker.runtime import Runtime

_SIGNAL_NAMES = {
    "Use": "usage",
    "Introspected": "introspection",
    "Issued": "issuance",
    "AuthFailed": "auth_failure",
    "LeakReported": "leak",
}


def _out(view: RuleView) -> RuleOut:
    rule, cfg = view.rule, view.config
    return RuleOut(
        name=rule.name,
        description=rule.description,
        signals=[_SIGNAL_NAMES[s.__name__] for s in rule.signals],
        subject=rule.subject_kind,
        enabled=cfg.enabled,
        severity=cfg.severity.value,
        action=cfg.action.value,
        allowed_actions=[a.value for a in sorted(rule.actions, key=lambda a: a.rank)],
        window_seconds=cfg.window_seconds,
        thresholds=[
            ThresholdOut(t.name, cfg.threshold(t.name), t.default, t.low, t.high, t.description)
            for t in rule.thresholds
        ],
        escalation=(
            EscalationOut(
                cfg.escalation.after, cfg.escalation.window_seconds, cfg.escalation.action.value
            )
            if cfg.escalation
            else None
        ),
        updated_at=view.updated_at,
        updated_by=view.updated_by,
    )


class RuleController(Controller):
    path = "/v1/admin/rules"
    tags = ["rules"]

    @requires(Role.AUDITOR)
    @get("/", summary="The anomaly rules with their thresholds and actions")
    async def list_rules(
        self, db: NamedDependency[AsyncSession], operator: NamedDependency[OperatorPrincipal]
    ) -> list[RuleOut]:
        return [_out(view) for view in await config.rule_views(db)]

    @requires(Role.ADMIN)
    @put("/", summary="Change rules' thresholds, windows, actions; all or nothing")
    async def update_rules(
        self,
        data: JSONBody[RulesUpdate],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> list[RuleOut]:
        changes = [
            RuleChange(
                name=item.name,
                enabled=item.enabled,
                severity=item.severity,
                action=item.action,
                window_seconds=item.window_seconds,
                thresholds=item.thresholds,
                set_escalation=item.escalation is not UNSET,
                escalation=(
                    None
                    if item.escalation is UNSET or item.escalation is None
                    else {
                        "after": item.escalation.after,
                        "window_seconds": item.escalation.window_seconds,
                        "action": item.escalation.action,
                    }
                ),
            )
            for item in data.rules
        ]
        # Its own transaction, so this process's rule cache is dropped only once the change
        # is committed (a reload in between would cache the old configuration).
        async with runtime.transaction() as session:
            views = await config.update_rules(session, changes, actor=operator.actor)
        runtime.parts.get(config.RuleConfigCache).drop_cached_state()
        return [_out(view) for view in views]


ROUTES = [RuleController]
