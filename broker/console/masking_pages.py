"""The console's masking page: the central masking rules with every catalogued field's
effective rule and where it comes from (every signed-in operator), and a form for admins to
set or clear the rule of one field, one classification or the default.

The form changes one entry of the rule set and sends the whole set to
``broker.masking.store.replace_rules``, as ``PUT /v1/admin/masking-rules`` does (validated,
audited with before and after, in force on every replica within a second); a rule the
service refuses shows the page again with its reason, nothing written.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Redirect, Template

from broker.catalog.service import Classification
from broker.console.auth import ConsoleForm, ConsoleOperator
from broker.console.rendering import page
from broker.errors import InvalidInput
from broker.http.deps import requires
from broker.masking.rules import RULE_HELP
from broker.masking.store import InForce, RuleSet, replace_rules, rules_in_force
from broker.operators.service import Role
from broker.runtime import Runtime

Notice = Annotated[str | None, QueryParameter(name="done", max_length=40)]

NOTICES = {
    "changed": (
        "The masking rules were changed and recorded in the audit trail; they are in force on "
        "every replica within a second."
    ),
    "unchanged": "Nothing changed: that rule was already in force.",
}
CHOICES = ("redact", "remove", "last:4", "email-domain", "hash")


def _page(
    operator: ConsoleOperator,
    in_force: InForce,
    *,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Template:
    rules = in_force.rules
    targets = [("default", "default (every field with no rule of its own or its class)")]
    targets += [(f"classification:{c.value}", f"classification {c.value}") for c in Classification]
    targets += [(f"field:{e.name}", f"field {e.name}") for e in in_force.catalog]
    return page(
        "masking.html",
        operator,
        section="masking",
        title="Masking rules",
        status_code=status_code,
        masking_notice=NOTICES.get(notice or ""),
        error=error,
        in_force=in_force,
        classification_rules=[
            (c.value, rules.classifications.get(c.value)) for c in Classification
        ],
        targets=targets,
        choices=CHOICES,
        rule_help=RULE_HELP,
    )


@requires(Role.AUDITOR)
@get("/masking", name="console-masking")
async def masking_page(
    operator: NamedDependency[ConsoleOperator],
    runtime: NamedDependency[Runtime],
    notice: Notice = None,
) -> Template:
    return _page(operator, await rules_in_force(runtime), notice=notice)


def _changed(rules: RuleSet, target: str, rule: str | None) -> RuleSet:
    """``rules`` with ``target``'s rule set to ``rule`` (``None``: its own rule dropped)."""
    default = rules.default
    fields = dict(rules.fields)
    classes = dict(rules.classifications)
    if target == "default":
        default = rule
    elif target.startswith("field:"):
        name = target.removeprefix("field:")
        fields.pop(name, None) if rule is None else fields.__setitem__(name, rule)
    elif target.startswith("classification:"):
        name = target.removeprefix("classification:")
        classes.pop(name, None) if rule is None else classes.__setitem__(name, rule)
    else:
        raise InvalidInput("target: choose the default, a classification or a field")
    return RuleSet(default, fields, classes)


@requires(Role.ADMIN)
@post("/masking", name="console-masking-change")
async def change_masking(
    form: NamedDependency[ConsoleForm], runtime: NamedDependency[Runtime]
) -> Redirect | Template:
    before = await rules_in_force(runtime)
    target = form.text("target", 200)
    rule = form.text("rule", 32) or None
    try:
        after = _changed(before.rules, target, rule)
        if after.version == before.version:
            return Redirect(
                path="/console/masking", query_params={"done": "unchanged"}, status_code=303
            )
        await replace_rules(runtime, after, actor=form.operator.actor)
    except InvalidInput as exc:
        return _page(form.who, before, error=exc.detail, status_code=exc.status)
    return Redirect(path="/console/masking", query_params={"done": "changed"}, status_code=303)


ROUTES: list[Any] = [masking_page, change_masking]
