"""``GET/PUT /v1/admin/masking-rules``: auditors read the central masking rules (with the
effective rule of every catalogued field and where it comes from), admins replace them."""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from broker.http.deps import requires
from broker.masking.schemas import EffectiveRuleOut, MaskingRulesIn, MaskingRulesOut
from broker.masking.store import InForce, RuleSet, replace_rules, rules_in_force
from broker.operators.service import OperatorPrincipal, Role
from broker.runtime import Runtime


def rules_out(in_force: InForce) -> MaskingRulesOut:
    document = in_force.rules.document()
    return MaskingRulesOut(
        version=in_force.version,
        default=document["default"],
        fields=document["fields"],
        classifications=document["classifications"],
        effective_default=in_force.default,
        effective=[
            EffectiveRuleOut(e.name, e.classification, e.status, e.rule, e.source)  # type: ignore[arg-type]
            for e in in_force.catalog
        ],
    )


class MaskingRulesController(Controller):
    path = "/v1/admin/masking-rules"
    tags = ["masking"]

    @requires(Role.AUDITOR)
    @get("/", summary="The masking rules, with every catalogued field's effective rule")
    async def show_rules(
        self, runtime: NamedDependency[Runtime], operator: NamedDependency[OperatorPrincipal]
    ) -> MaskingRulesOut:
        return rules_out(await rules_in_force(runtime))

    @requires(Role.ADMIN)
    @put("/", summary="Replace the whole masking rule set; audited with before and after")
    async def replace(
        self,
        data: JSONBody[MaskingRulesIn],
        runtime: NamedDependency[Runtime],
        operator: NamedDependency[OperatorPrincipal],
    ) -> MaskingRulesOut:
        rules = RuleSet(data.default, dict(data.fields), dict(data.classifications))
        return rules_out(await replace_rules(runtime, rules, actor=operator.actor))


ROUTES = [MaskingRulesController]
