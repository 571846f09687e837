"""The console in a real headless Chromium against a real ``broker serve``.

An operator signs in with a token, sees why they cannot approve their own proposal, signs
out; a second operator approves it, resolves an incident and releases a quarantined
service, all by clicking. Then, with data as long as the broker allows (63-character
service ids, 120-character field names, 500-character reasons, every kind of incident
action), no console page reachable from the navigation scrolls sideways in a 1280 px
window, and the audit and incident pages read as they should. Screenshots of each step go
to tests/artifacts/console/.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import ARTIFACTS, Console, served_console
from tests.support.served import billing_world, cli_operator
from tests.support.world import basic, bearer


def _quarantine(database_url: str, service_id: str) -> None:
    """What an anomaly rule's quarantine action does, done directly in the database."""
    from broker.db import make_engine, make_sessionmaker, transaction
    from broker.identity.service import quarantine_service
    from broker.settings import Settings

    async def go() -> None:
        engine = make_engine(Settings(database_url=database_url))
        try:
            async with transaction(make_sessionmaker(engine)) as session:
                assert await quarantine_service(
                    session, service_id, actor="system:rules", reason="browser test"
                )
        finally:
            await engine.dispose()

    asyncio.run(go())


def _ok(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _set_up(api: httpx.Client, admin: str, env: dict[str, str]) -> dict[str, Any]:
    """Two operators, a catalog, two services, a proposed policy and an open incident.

    bob is made on the host (``env``): an approver the bootstrap admin made through the API
    would count as that admin until another admin confirmed it."""
    bob = cli_operator(env, "bob", "approver")
    fields = ("customer.email", "customer.phone")
    world = billing_world(api, admin, None, fields=fields, rate_per_minute=600)
    incident = _ok(
        api.post(
            "/v1/admin/incidents",
            headers=bearer(admin),
            json={
                "title": "billing-api keys seen in a support ticket",
                "severity": "high",
                "selector": {"service": "billing-api"},
            },
        )
    )
    return {
        "bob": bob,
        "secret": world.secret,
        "policy": world.policy_id,
        "incident": incident["id"],
    }


def test_an_operator_approves_resolves_and_releases_in_chromium(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    with served_console(driver, tmp_path, database_url, backend) as (broker, api, admin, ui):
        world = _set_up(api, admin, broker.env)

        # The proposer signs in, sees the proposal and why they cannot approve it.
        ui.sign_in(admin)
        assert "bootstrap-admin" in ui.by("#whoami").text
        header = ui.by("header.top").value_of_css_property("background-color")
        assert header in ("rgba(20, 38, 61, 1)", "rgb(20, 38, 61)")  # the stylesheet loaded
        ui.shot("overview-as-proposer")
        ui.open("/console/approvals")
        card = ui.wait_for(f"#policy-{world['policy']}")
        assert "billing-api → customers-db" in card.text
        assert "You proposed this version" in card.text
        assert not ui.all(f"#policy-{world['policy']} button.approve")
        ui.shot("proposer-cannot-approve")
        ui.sign_out()
        assert "You are signed out." in ui.text()

        # A wrong token is refused on the page.
        ui.wait_for("#token").send_keys("pkbo_not-a-real-token")
        ui.submit(ui.by("#sign-in"), "#error")
        assert "not accepted" in ui.by("#error").text
        ui.shot("wrong-token")

        # Another operator approves it.
        ui.sign_in(world["bob"])
        assert "bob" in ui.by("#whoami").text
        ui.open("/console/approvals")
        card = ui.wait_for(f"#policy-{world['policy']}")
        assert "No version in force: everything below is granted new." in card.text
        assert "sha256:" in card.text  # the terms digest the approval will name
        assert "customer.email" in card.text
        ui.by(f"#comment-{world['policy']}").send_keys("checked: contract purpose only")
        ui.shot("approval-pending")
        ui.submit(ui.by(f"#policy-{world['policy']} button.approve"), "#notice")
        assert "Your approval was recorded." in ui.by("#notice").text
        assert "Nothing is waiting for approval." in ui.text()
        ui.shot("approved")
        policy = _ok(api.get(f"/v1/admin/policies/{world['policy']}", headers=bearer(admin)), 200)
        assert policy["status"] == "approved"
        assert policy["versions"][0]["approvals"][0]["operator"] == "bob"

        # Keys flow (and one is denied), then the service is quarantined by a "rule".
        order = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
        who = basic("billing-api", world["secret"])
        _ok(api.post("/v1/keys", headers=who, json=order))
        denied = api.post("/v1/keys", headers=who, json={**order, "fields": ["customer.phone"]})
        assert denied.status_code == 403, denied.text
        _quarantine(database_url, "billing-api")

        # The incident: evidence shown, then resolved with a comment.
        ui.open("/console/incidents")
        incident = ui.wait_for(f"#incident-{world['incident']}")
        assert "billing-api keys seen in a support ticket" in incident.text
        assert re.search(r"selector\.service\s+billing-api", incident.text)  # the evidence
        assert "Revoked every key of billing-api issued before" in incident.text
        ui.by(f"#resolve-{world['incident']}").send_keys("ticket scrubbed, keys revoked")
        ui.shot("incident-open")
        ui.submit(ui.by(f"#incident-{world['incident']} button.resolve"), "#notice")
        assert "The incident was resolved." in ui.by("#notice").text
        assert not ui.all(f"#incident-{world['incident']}")
        ui.open("/console/incidents?status=resolved")
        assert "ticket scrubbed, keys revoked" in ui.wait_for(f"#incident-{world['incident']}").text
        ui.shot("incident-resolved")

        # Releasing a quarantine is an admin's call: bob sees that, the admin releases it.
        ui.open("/console/services")
        row = ui.wait_for("#service-billing-api")
        assert "quarantined" in row.text
        assert "an admin releases" in row.text
        assert not ui.all("#service-billing-api button.release")
        ui.shot("service-quarantined")
        ui.open("/console/audit?actor=operator:bob")
        trail = ui.wait_for("#audit-events").text
        assert "operator:policy:approved" in trail
        assert "operator:incident:resolved" in trail
        ui.shot("audit-by-bob")
        ui.sign_out()

        ui.sign_in(admin)
        ui.open("/console/services")
        ui.wait_for("#service-billing-api input[name=comment]").send_keys("all keys revoked")
        ui.submit(ui.by("#service-billing-api button.release"), "#notice")
        assert "released from quarantine" in ui.by("#notice").text
        assert "active" in ui.by("#service-billing-api").text
        ui.shot("service-released")

        # The overview's chart, the signing keys and the release in the audit trail.
        ui.open("/console")
        ui.wait_for("#activity-chart")
        assert ui.by("#issued-total").text == "1"
        assert ui.by("#denied-total").text == "1"
        assert len(ui.all("#activity-chart rect.bar")) == 2
        ui.shot("overview-chart")
        ui.open("/console/keys")
        assert ui.wait_for("#next-rotation").text.endswith("UTC")
        ui.shot("signing-keys")
        ui.open("/console/audit?action=operator:service:released")
        trail = ui.wait_for("#audit-events").text
        assert "operator:bootstrap-admin" in trail
        assert "all keys revoked" in trail
        assert ui.csp_violations() == []

        ui.sign_out()
        ui.open("/console/services")
        ui.wait_for("#token")  # signed out: back to the sign-in page
    assert len(list(ARTIFACTS.glob(f"{backend}-*.png"))) == ui.count == 12


# -- every page at 1280 px, with data as long as the broker allows ----------------------------

LONG_SERVICE = "payments-reconciliation-ledger-exporter-eu-central-1-prod-00001"  # 63, the most
LONG_AUDIENCE = "customer-master-data-records-store-eu-central-1-primary-replica"
SPARE_SERVICE = "legacy-invoice-archive-batch-importer-for-the-old-erp-system-v2"
LONG_PURPOSE = "invoice-dispute-resolution-and-chargeback-evidence-collection-for-regulators"
LONG_FIELDS = [
    f"customer.billing_profile.contact_details.{name}_verified_for_invoicing_and_dunning"
    for name in (
        "primary_email_address",
        "secondary_email_address",
        "mobile_phone_number",
        "postal_address_line_one",
        "postal_address_line_two",
        "tax_identification_number",
        "bank_account_iban",
        "date_of_birth",
    )
]
ISSUER = "https://oidc.eks.eu-central-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF01234567"
SOURCE = "2001:db8:ffff:ffff:ffff:ffff:ffff:1234"
TICKET = (
    "https://tickets.example.com/servicedesk/customer/portal/17/SUP-48213?focusedCommentId="
    "9912834&page=com.atlassian.jira.plugin.system.issuetabpanels%3Acomment-tabpanel"
)


def _reason(lead: str) -> str:
    """As long as a reason may be (500), with an unbroken URL in it."""
    text = (
        f"{lead}: keys of the payments reconciliation exporter were pasted into a support "
        f"ticket ({TICKET}) by an on-call engineer debugging a failed nightly export; "
        "everything the service holds stays cut off until the ticket is scrubbed and the "
        "engineer's laptop has been checked by the security team. "
    )
    return (text * 2)[:500].strip()


def _answer(resp: httpx.Response, *status: int) -> dict[str, Any]:
    assert resp.status_code in status, resp.text
    body: dict[str, Any] = resp.json() if resp.content else {}
    return body


def _fill(api: httpx.Client, admin: str, env: dict[str, str]) -> dict[str, Any]:
    """Every console page given something long to show: long ids, names and reasons, many
    fields, policies in every state, a retired service, a deprecated field, a disabled
    operator, revocations and incidents (the rule-made ones come from ``_rule_incidents``)."""
    from tests.support.jwks import Signer

    h = bearer(admin)
    responder = cli_operator(env, "incident-responder-on-call-secondary-rotation-eu", "approver")
    cli_operator(env, "contractor-with-a-rather-long-operator-name-for-the-audit", "auditor")
    for name in LONG_FIELDS:
        _answer(
            api.post(
                "/v1/admin/fields",
                headers=h,
                json={
                    "name": name,
                    "classification": "contact",
                    "description": "Verified contact detail used for invoices, dunning letters "
                    f"and chargeback evidence; never leaves the EU region. See {TICKET}",
                },
            ),
            201,
        )
    _answer(
        api.post(
            "/v1/admin/purposes",
            headers=h,
            json={
                "name": LONG_PURPOSE,
                "description": "Answering a regulator or card scheme about a disputed invoice "
                f"with the evidence the dispute process requires. {TICKET}",
                "legal_basis": "legal_obligation",
            },
        ),
        201,
    )
    signer = Signer("ed25519", kid="eks-oidc-signing-key-2026-01-0123456789abcdef0123456789")
    jwt_binding = {
        "kind": "jwt",
        "issuer": ISSUER,
        "jwks": signer.jwks,
        "audience": "pii-key-broker.payments.internal.example.com",
        "subject": "system:serviceaccount:payments-reconciliation:ledger-exporter-nightly-batch",
        "claims": {
            "kubernetes.io/namespace": "payments-reconciliation",
            "kubernetes.io/serviceaccount/name": "ledger-exporter-nightly-batch",
        },
    }
    exporter = _answer(
        api.post(
            "/v1/admin/services",
            headers=h,
            json={
                "id": LONG_SERVICE,
                "name": "Payments reconciliation ledger exporter (EU central, production, "
                "shard 1 of 4, nightly batch)",
                "bindings": [{"kind": "secret"}, jwt_binding],
            },
        ),
        201,
    )
    for service_id, name in ((LONG_AUDIENCE, "Customer master data"), (SPARE_SERVICE, "ERP")):
        _answer(
            api.post(
                "/v1/admin/services",
                headers=h,
                json={
                    "id": service_id,
                    "name": name,
                    "bindings": [
                        {"kind": "secret"},
                        {**jwt_binding, "subject": f"system:serviceaccount:{service_id}:api"},
                    ],
                },
            ),
            201,
        )

    def approve(policy_id: str) -> None:
        read = _answer(api.get(f"/v1/admin/policies/{policy_id}", headers=h), 200)
        pending = next(v for v in read["versions"] if v["status"] == "proposed")
        body = {
            "comment": f"checked against the dispute process, see {TICKET}",
            "version": pending["version"],
            "terms_digest": pending["terms_digest"],
        }
        approved = api.post(
            f"/v1/admin/policies/{policy_id}/approve", headers=bearer(responder), json=body
        )
        _answer(approved, 200)

    terms = {
        "fields": LONG_FIELDS[:4],
        "purposes": [LONG_PURPOSE],
        "max_ttl_seconds": 900,
        "rate_per_minute": 600,
        "source_cidrs": ["127.0.0.0/8", "10.20.0.0/16", "2001:db8:ffff:ffff::/64"],
        "comment": _reason("Nightly export of disputed invoices"),
    }
    pair = {"service": LONG_SERVICE, "audience": LONG_AUDIENCE}
    in_force = _answer(api.post("/v1/admin/policies", headers=h, json={**pair, **terms}), 201)
    approve(in_force["id"])
    widening = {**terms, "fields": LONG_FIELDS, "max_ttl_seconds": 3600, "rate_per_minute": None}
    _answer(
        api.post(
            f"/v1/admin/policies/{in_force['id']}/versions",
            headers=h,
            json={**widening, "source_cidrs": [], "comment": _reason("Widen to every detail")},
        ),
        201,
    )
    spare = {"service": SPARE_SERVICE, "audience": LONG_AUDIENCE}
    braked = _answer(api.post("/v1/admin/policies", headers=h, json={**spare, **terms}), 201)
    approve(braked["id"])
    reverse = {"service": LONG_AUDIENCE, "audience": SPARE_SERVICE}
    ended = _answer(api.post("/v1/admin/policies", headers=h, json={**reverse, **terms}), 201)
    approve(ended["id"])

    who = basic(LONG_SERVICE, exporter["client_secret"])
    order = {"audience": LONG_AUDIENCE, "fields": LONG_FIELDS[:2], "purpose": LONG_PURPOSE}
    jtis = [_answer(api.post("/v1/keys", headers=who, json=order), 201)["jti"] for _ in range(3)]
    for _ in range(2):
        denied = api.post("/v1/keys", headers=who, json={**order, "fields": LONG_FIELDS})
        assert denied.status_code == 403, denied.text
    revocation = {"selector": {"jti": jtis[0]}, "reason": _reason("One key revoked by hand")}
    _answer(api.post("/v1/admin/revocations", headers=h, json=revocation), 201)
    incident = _answer(
        api.post(
            "/v1/admin/incidents",
            headers=h,
            json={
                "title": "Keys of the payments reconciliation exporter pasted into support "
                "ticket SUP-48213 during the nightly export failure; every key of the service "
                "for the dispute purpose revoked at once",
                "severity": "critical",
                "selector": {"service": LONG_SERVICE, "purpose": LONG_PURPOSE},
                "comment": _reason("Opened by hand"),
            },
        ),
        201,
    )

    # Day two: a policy suspended and one retired, a service quarantined by hand and one
    # retired, a field deprecated while a policy in force uses it, an operator disabled.
    def brake(path: str, reason: str) -> None:
        _answer(api.post(path, headers=h, json={"reason": _reason(reason)}), 200, 201)

    brake(f"/v1/admin/policies/{braked['id']}/suspend", "Suspended")
    brake(f"/v1/admin/policies/{ended['id']}/retire", "Retired")
    brake(f"/v1/admin/services/{LONG_AUDIENCE}/quarantine", "Quarantined by hand")
    brake(f"/v1/admin/services/{SPARE_SERVICE}/retire", "Retired: the old ERP is gone")
    _answer(
        api.patch(f"/v1/admin/fields/{LONG_FIELDS[0]}", headers=h, json={"status": "deprecated"}),
        200,
    )
    listed = api.get("/v1/admin/operators", headers=h)
    assert listed.status_code == 200, listed.text
    contractor = next(o for o in listed.json() if o["name"].startswith("contractor-"))
    _answer(
        api.patch(
            f"/v1/admin/operators/{contractor['id']}",
            headers=h,
            json={"disabled": True, "reason": _reason("Contract ended")},
        ),
        200,
    )
    return {"incident": incident["id"], "jtis": jtis}


def _rule_incidents(database_url: str, env: dict[str, str], jtis: list[str]) -> None:
    """What the anomaly rules do, done directly: a service revoked and quarantined, a key
    revoked, an address throttled, an alert only, and an action that could not be taken."""
    from broker.db import make_engine, make_sessionmaker, transaction
    from broker.incidents.firing import Action, Firing, Severity
    from broker.incidents.service import raise_incident
    from broker.settings import Settings

    settings = Settings(
        database_url=database_url,
        alert_webhook_url=env["BROKER_ALERT_WEBHOOK_URL"],
        alert_webhook_secret=env["BROKER_ALERT_WEBHOOK_SECRET"],
    )
    evidence = {
        "jti": jtis[1],
        "service": LONG_SERVICE,
        "audience": LONG_AUDIENCE,
        "policy": "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d@1",
        "source": SOURCE,
        "source_outside_policy_networks": True,
        "holder_mismatch": False,
        "events_in_window": 17,
        "fields_not_granted": LONG_FIELDS[4:],
        "window_seconds": 300,
    }
    missing = "0" * 32
    cases = [
        (
            Firing(
                "revoked_key_use",
                f"service:{LONG_SERVICE}",
                f"revoked or expired keys of {LONG_SERVICE} still presented",
                {**evidence, "distinct_keys": 9, "holder_proven_keys": 4, "last_jti": jtis[2]},
                service_id=LONG_SERVICE,
                unit=LONG_SERVICE,
            ),
            Severity.HIGH,
            Action.QUARANTINE,
        ),
        (
            Firing(
                "key_replay",
                f"key:{jtis[1]}",
                f"key of {LONG_SERVICE} replayed: used from too many sources",
                evidence,
                service_id=LONG_SERVICE,
                jti=jtis[1],
                unit=jtis[1],
            ),
            Severity.MEDIUM,
            Action.REVOKE_KEY,
        ),
        (
            Firing(
                "failed_secrets",
                f"source:{SOURCE}",
                f"failing client secrets from {SOURCE}",
                {"source": SOURCE, "failures": 250, "services": [LONG_SERVICE, LONG_AUDIENCE]},
                source=SOURCE,
                block_seconds=900,
            ),
            Severity.MEDIUM,
            Action.THROTTLE_SOURCE,
        ),
        (
            Firing(
                "usage_beyond_grant",
                f"key:{jtis[2]}",
                f"key of {LONG_SERVICE} used for fields beyond its grant",
                evidence,
                service_id=LONG_SERVICE,
                jti=jtis[2],
            ),
            Severity.LOW,
            Action.ALERT,
        ),
        (
            Firing(
                "key_replay",
                f"key:{missing}",
                "key of a purged record replayed",
                {**evidence, "jti": missing},
                service_id=LONG_SERVICE,
                jti=missing,
            ),
            Severity.LOW,
            Action.REVOKE_KEY,
        ),
    ]

    async def go() -> None:
        engine = make_engine(settings)
        try:
            for firing, severity, action in cases:
                async with transaction(make_sessionmaker(engine)) as session:
                    await raise_incident(
                        session, settings, firing, severity=severity, action=action
                    )
        finally:
            await engine.dispose()

    asyncio.run(go())


UTC_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$")


def _check_width(ui: Console, path: str, failures: list[str]) -> None:
    measured = ui.overflow()
    if measured["scroll"] > measured["client"] + 1:
        failures.append(
            f"{path} scrolls sideways: {measured['scroll']}px wide in a "
            f"{measured['client']}px window ({'; '.join(measured['wide'])})"
        )


def _shot_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", path.removeprefix("/console")).strip("-") or "overview"


def test_no_console_page_scrolls_sideways_at_1280px(
    driver: Any, database_url: str, backend: str, tmp_path: Path
) -> None:
    """Every page in the navigation, and every console page its links lead to (one level
    deep: a policy's, a service's or an operator's own page), fits a 1280 px window with
    data as long as the broker accepts; the audit trail and the incidents read as they
    should: one line per event, times in one UTC format, filters that take that format,
    ids whole on one line, incident actions as sentences."""
    driver.set_window_size(1280, 1000)
    with served_console(
        driver,
        tmp_path,
        database_url,
        f"width-{backend}",
        timeout=20,
        # Alerts to nowhere, given up at the first failure: the incidents page lists them.
        BROKER_ALERT_WEBHOOK_URL="http://127.0.0.1:9/alerts",
        BROKER_ALERT_WEBHOOK_SECRET="webhook-secret-for-the-console-width-test-0123456789",
        BROKER_ALERT_WEBHOOK_MAX_ATTEMPTS="1",
    ) as (broker, api, admin, ui):
        world = _fill(api, admin, broker.env)
        _rule_incidents(database_url, broker.env, world["jtis"])
        failures: list[str] = []

        # Signed out: the sign-in page.
        ui.open("/console/login")
        ui.wait_for("#token")
        _check_width(ui, "/console/login", failures)
        ui.sign_in(admin)

        # Every page in the navigation, then every console page their links lead to.
        nav = ui.links("header nav")
        assert {"/console", "/console/audit", "/console/incidents"} <= set(nav), nav
        seen: set[str] = set()
        deeper: list[str] = []
        for path in nav:
            ui.open(path)
            ui.wait_for("main")
            seen.add(path)
            _check_width(ui, path, failures)
            ui.shot(_shot_name(path))
            deeper += [p for p in ui.links() if p not in nav and p not in deeper]
        for path in deeper:
            if path in seen or path == "/console/logout":
                continue
            ui.open(path)
            ui.wait_for("main")
            seen.add(path)
            _check_width(ui, path, failures)
        # An error page, with the longest problem type the console shows.
        ui.open("/console/no-such-page/" + "x" * 200)
        ui.wait_for("#problem-detail")
        _check_width(ui, "the error page", failures)
        assert not failures, "\n".join(failures)
        assert len(seen) > len(nav), seen  # the detail pages were reached too

        # The audit trail: one line per event plus one for its details, times in one UTC
        # format, ids whole on one line, every detail there when opened.
        ui.open("/console/audit")
        table = ui.wait_for("#audit-events")
        events = ui.all("#audit-events tbody.event")
        assert len(events) >= 40
        heights = [e.size["height"] for e in events]
        assert max(heights) < 80, heights
        times = [t.text for t in ui.all("#audit-events time")]
        assert times
        assert all(UTC_TIME.match(t) for t in times), times
        ids = ui.all("#audit-events .id")
        line = max(i.size["height"] for i in ids[:5])
        assert all(i.size["height"] <= line + 1 for i in ids), "an id wraps onto two lines"
        assert LONG_SERVICE in table.text  # whole in the page, only shortened on screen
        since = ui.by("#since")
        assert since.get_attribute("type") == "text"
        assert since.get_attribute("placeholder") == "2026-01-31 14:00"
        ui.shot("audit")
        ui.open("/console/audit?open=true&action=operator:revocation:created")
        ui.wait_for("#audit-events tbody.event")
        rows = [r.text for r in ui.all("#audit-events tbody.event")]
        by_hand = next(r for r in rows if "One key revoked by hand" in r)
        assert TICKET[:60] in by_hand  # the whole reason, URL and all
        assert f"selector.jti\n{world['jtis'][0]}" in by_hand
        ui.shot("audit-details-open")

        # The date filters take the time as the page writes it, and say what they kept.
        newest = times[0]
        ui.open("/console/audit")
        ui.wait_for("#since").send_keys(newest)
        ui.by("#until").send_keys(newest.removesuffix(" UTC")[:16])  # to the minute
        ui.submit(ui.by("#filter"), "#range")
        assert newest in ui.by("#range").text
        assert ui.all("#audit-events tbody.event")
        assert ui.by("#since").get_attribute("value") == newest
        ui.shot("audit-filtered")
        ui.open("/console/audit?since=yesterday")
        error = ui.wait_for("#filter-error").text
        assert "such as 2026-01-31 14:05" in error
        assert "in UTC" in error
        assert ui.by("#since").get_attribute("value") == "yesterday"

        # Incidents: what was done, as sentences.
        ui.open("/console/incidents")
        ui.wait_for(f"#incident-{world['incident']}")
        text = ui.text()
        for sentence in (
            f"Revoked every key of {LONG_SERVICE} and quarantined it",
            f"Revoked key {world['jtis'][1]}",
            f"Throttled failing credentials from {SOURCE} until ",
            "Alerted only: nothing was revoked, quarantined or throttled",
            "Could not revoke the key: no issued key has jti",
            f"Revoked every key of {LONG_SERVICE} for purpose {LONG_PURPOSE} issued before ",
        ):
            assert sentence in text, sentence
        assert "=" not in ui.by(f"#incident-{world['incident']} table.actions").text
        ui.shot("incidents")
        assert ui.csp_violations() == []
