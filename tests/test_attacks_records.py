"""Issue 22, class 4: one hostile string must not break the permanent record.

The attacker sends text the audit trail then holds for good: a workload JWT whose header
``kid`` is a lone UTF-16 surrogate (JSON can carry one as ``"\\ud800"``), an ``iss`` with a
NUL, a surrogate or U+2028, a request path far longer than the subject column. What they
must get: the ordinary audited ``401`` with its rule signal, an event that is printable and
bounded, and a trail that every reader (the API, the console, ``broker audit
show/export/verify``) still serves, on both databases. Events the old code already wrote
(not normalised) must be readable too: the chain forbids removing them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import operator
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit import AuditAction, normalise, record
from broker.audit.routes import page_json
from broker.audit.schemas import AuditEventOut, AuditPage
from broker.audit.service import GENESIS, chain_digest, serialise_writers
from broker.console.views import AuditRow
from broker.db import utcnow
from broker.models import AuditEvent
from broker.ops_cli.audit import verify_export
from tests.conftest import Operators
from tests.support.asgi import lifespan
from tests.support.console import signed_in
from tests.support.processes import BrokerProcess, broker_env
from tests.support.world import bearer

KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}
# Characters that broke a reader, split a line or rewrite what a line says.
HOSTILE = "\ud800\udfff\u2028\u2029\x85\x00\x1b\u202e\u2066\ufeff\r\n\t\x7f\U000e0001\u200b"
CHARS = st.one_of(
    st.characters(codec=None, exclude_categories=()),  # any code point, surrogates too
    st.sampled_from(HOSTILE),
)
SHORT = st.text(CHARS, max_size=24)
LONG = st.builds(operator.mul, st.text(CHARS, min_size=1, max_size=4), st.integers(60, 400))
TEXT = st.one_of(SHORT, SHORT, LONG)
NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**40, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SHORT, inner, max_size=4),
    max_leaves=12,
)
DETAILS = st.dictionaries(TEXT, VALUES, max_size=6)
PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def b64(data: dict[str, Any] | bytes) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data  # \ud800 as an escape
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def handmade_jwt(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token shaped like a workload JWT; its signature is never reached."""
    return f"{b64(header)}.{b64(claims)}.{b64(b'not-a-signature')}"


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, member in value.items():
            yield key
            yield from strings_in(member)
    elif isinstance(value, list):
        for member in value:
            yield from strings_in(member)


def assert_safe_text(value: Any) -> None:
    """Printable (so: no control, separator, surrogate or bidi control), UTF-8 encodable."""
    for text in strings_in(value):
        assert text.isprintable(), repr(text)
        text.encode("utf-8")


def numbers_in(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for member in value.values():
            yield from numbers_in(member)
    elif isinstance(value, list):
        for member in value:
            yield from numbers_in(member)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def assert_one_line_per_event(text: str, count: int) -> list[dict[str, Any]]:
    """Split the way the most eager readers split (every Unicode line break)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == count, [line[:80] for line in lines]
    events = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) and "seq" in e for e in events)
    return events


# --- the normalisation itself ----------------------------------------------------------------


@PROPERTY
@given(actor=TEXT, subject=TEXT, details=DETAILS)
def test_a_normalised_event_is_printable_bounded_and_stable(
    actor: str, subject: str, details: dict[str, Any]
) -> None:
    parts = normalise.event_parts(actor, "service:auth:failed", subject, details)
    got_actor, _, got_subject, got_details = parts
    assert len(got_actor) <= normalise.MAX_ACTOR
    assert len(got_subject) <= normalise.MAX_SUBJECT
    assert_safe_text([got_actor, got_subject, got_details])
    for text in strings_in(got_details):
        assert len(text) <= normalise.MAX_TEXT
    for number in numbers_in(got_details):
        assert math.isfinite(number) if isinstance(number, float) else -(2**63) <= number < 2**63
    msgspec.json.encode(got_details)  # what the API's encoder takes
    json.dumps(got_details, allow_nan=False)
    # What is stored is a fixed point: normalising it again changes nothing.
    assert normalise.event_parts(got_actor, "service:auth:failed", got_subject, got_details) == (
        parts
    )
    if actor.isprintable() and len(actor) <= normalise.MAX_ACTOR:
        assert got_actor == actor  # ordinary text is left alone


def test_escapes_are_visible_and_cuts_are_marked() -> None:
    actor, _, subject, details = normalise.event_parts(
        "anonymous\u2028forged line",
        "service:auth:failed",
        "/v1/" + "a" * 1000,
        {"kid": "\ud800", "iss": "x\x00y\u202ez", "n": float("nan"), "big": 10**30},
    )
    assert actor == "anonymous\\u2028forged line"
    assert len(subject) == normalise.MAX_SUBJECT
    assert subject.endswith(normalise.CUT)
    assert details == {
        "kid": "\\ud800",
        "iss": "x\\u0000y\\u202ez",
        "n": "NaN",
        "big": str(10**30),
    }


def test_details_are_bounded_in_depth_width_and_size() -> None:
    deep: Any = "bottom"
    for _ in range(50):
        deep = {"down": deep}
    wide = list(range(10_000))
    bushy = {f"k{i}": {f"j{j}": list(range(50)) for j in range(50)} for i in range(50)}
    texts = ["\u2028" * 5000] * 100
    got = normalise.details({"deep": deep, "wide": wide, "bushy": bushy, "texts": texts})
    assert depth_of(got) <= normalise.MAX_DEPTH
    assert len(got["wide"]) == normalise.MAX_MEMBERS + 1
    assert got["wide"][-1] == f"{normalise.MORE}[{10_000 - normalise.MAX_MEMBERS} more cut]"
    values = sum(1 for _ in strings_in(got)) + sum(1 for _ in numbers_in(got))
    assert values <= 2 * normalise.MAX_NODES
    assert sum(map(len, strings_in(got))) <= normalise.MAX_CHARS + 10 * normalise.MAX_TEXT
    assert_safe_text(got)
    # Ordinary details, as the broker writes them, pass unchanged.
    ordinary = {
        "reason": "bad-signature",
        "fields": [f"customer.f{i}" for i in range(300)],
        "comment": "Approved after review.\nSee ticket SEC-9 (owner: Zoë ☃).",
        "nested": {"z": 1, "a": [None, True, 2.5]},
    }
    got = normalise.details(ordinary)
    assert got == {
        **ordinary,
        "comment": "Approved after review.\\nSee ticket SEC-9 (owner: Zoë ☃).",
    }


@PROPERTY
@given(value=st.dictionaries(TEXT, VALUES.filter(lambda v: v == v), max_size=6))
def test_any_stored_value_is_shown_printable_and_exported_on_one_line(
    value: dict[str, Any],
) -> None:
    """What an old trail may hold, unnormalised: every reader's presentation copes."""
    if any(n != n for n in numbers_in(value)):
        return  # NaN is never equal to itself; nothing to compare
    shown = normalise.visible_value(value)
    assert_safe_text(shown)
    line = normalise.json_line({"seq": 1, "details": value})
    assert len(line.splitlines()) == 1
    line.encode("utf-8")
    assert json.loads(line)["details"] == value  # exact: the hash still checks offline
    # The API's page: the stored values exactly, even where msgspec cannot encode them.
    event = AuditEventOut(
        seq=1,
        at=utcnow(),
        actor="x\ud800",
        action="a",
        subject="",
        details=value,
        prev_hash=GENESIS,
        hash=GENESIS,
    )
    decoded = json.loads(page_json(AuditPage([event], None, 1)))
    assert decoded["events"][0]["details"] == value
    assert decoded["events"][0]["actor"] == "x\ud800"


# --- through record() and every reader, on both databases -------------------------------------


@PROPERTY
@given(actor=TEXT, subject=TEXT, details=DETAILS)
async def test_any_text_through_record_reads_back_everywhere(
    runtime: Any,
    client: httpx.AsyncClient,
    operators: Operators,
    tmp_path: Path,
    actor: str,
    subject: str,
    details: dict[str, Any],
) -> None:
    async with runtime.transaction() as session:
        event = await record(
            session, AuditAction.SERVICE_AUTH_FAILED, actor=actor, subject=subject, details=details
        )
    assert event.seq is not None
    expected = normalise.event_parts(actor, AuditAction.SERVICE_AUTH_FAILED, subject, details)
    auditor = bearer(operators.auditor)
    page = await client.get(
        "/v1/admin/audit", params={"after": event.seq - 1, "limit": 1}, headers=auditor
    )
    assert page.status_code == 200, page.text
    (got,) = page.json()["events"]
    assert (got["actor"], got["action"], got["subject"], got["details"]) == expected
    assert_safe_text(got)
    newest = await client.get("/v1/admin/audit", params={"order": "desc"}, headers=auditor)
    assert newest.status_code == 200, newest.text
    verified = await client.get("/v1/admin/audit/verify", headers=auditor)
    assert verified.status_code == 200, verified.text
    assert verified.json()["ok"], verified.json()
    line = normalise.json_line(got)
    assert len(line.splitlines()) == 1
    export = tmp_path / "one.jsonl"
    export.write_text(line + "\n", encoding="utf-8")
    assert verify_export(export)["ok"]


async def append_as_the_old_code_did(
    session: AsyncSession, actor: str, subject: str, details: dict[str, Any]
) -> None:
    """An event as written before the normalisation: the raw text, hashed as it was."""
    await serialise_writers(session)
    tail = (
        await session.exec(select(AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1))
    ).first()
    prev = tail or GENESIS
    at = utcnow()
    action = str(AuditAction.SERVICE_AUTH_FAILED)
    session.add(
        AuditEvent(
            at=at,
            actor=actor,
            action=action,
            subject=subject,
            details=details,
            prev_hash=prev,
            hash=chain_digest(prev, at, actor, action, subject, details),
        )
    )
    await session.flush()


def old_events(backend: str) -> list[tuple[str, str, dict[str, Any]]]:
    """What the old code let in: surrogates and NULs inside details (JSON escapes on both
    databases), line separators and bidi controls anywhere, a NUL in text on SQLite."""
    events = [
        ("anonymous", "", {"reason": "bad-signature", "kid": "\ud800", "alg": "EdDSA"}),
        ("anonymous\u2028forged: operator:alice", "\u202eevil", {"iss": "https://x\u2028y"}),
        ("anonymous", "/v1/admin/\x85", {"iss": "a\x00b", "nested": [{"k\udfff": "\x1b[2J"}]}),
    ]
    if backend == "sqlite":
        events.append(("anonymous\x00", "sub\x00ject", {"kid": "\x00"}))
    return events


def assert_console_shows_escapes(page: httpx.Response) -> None:
    assert page.status_code == 200, page.text[:500]
    assert "\\ud800" in page.text
    assert "\\u2028" in page.text
    for raw in ("\u2028", "\u202e", "\x00", "\x85"):
        assert raw not in page.text


async def test_events_the_old_code_wrote_are_readable_in_process(
    runtime: Any, operators: Operators, backend: str, tmp_path: Path
) -> None:
    from broker.app import create_app

    async with runtime.transaction() as session:
        for actor, subject, details in old_events(backend):
            await append_as_the_old_code_did(session, actor, subject, details)
    app = create_app(runtime=runtime, configure_logs=False)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as api:
            auditor = bearer(operators.auditor)
            for params in (
                {},
                {"order": "desc"},
                {"action": "service:auth:*"},
                {"actor": "anonymous*"},
                {"actor": "anonymous\u2028forged: operator:alice"},
                {"subject": "\u202eevil"},
                {"before": 100, "order": "desc", "limit": 2},
            ):
                resp = await api.get("/v1/admin/audit", params=params, headers=auditor)
                assert resp.status_code == 200, (params, resp.text[:300])
            events = (
                await api.get("/v1/admin/audit", params={"limit": 1000}, headers=auditor)
            ).json()["events"]
            kept = [e for e in events if e["action"] == "service:auth:failed"]
            # The stored values exactly, so the export still checks against the hashes.
            assert [(e["actor"], e["subject"], e["details"]) for e in kept] == old_events(backend)
            verified = await api.get("/v1/admin/audit/verify", headers=auditor)
            assert verified.json()["ok"], verified.text
            export = tmp_path / "audit.jsonl"
            export.write_text("".join(normalise.json_line(e) + "\n" for e in events))
            assert_one_line_per_event(export.read_text(), len(events))
            assert verify_export(export)["checked"] == len(events)
            assert verify_export(export)["ok"]
        async with signed_in(app, operators.auditor) as console:
            assert_console_shows_escapes(await console.get("/console/audit"))
            for row in [AuditRow.of(e) for e in await _stored(runtime)]:
                assert_safe_text([row.actor, row.subject, row.details])


async def _stored(runtime: Any) -> list[AuditEvent]:
    async with runtime.transaction() as session:
        return list(await session.exec(select(AuditEvent)))


# --- end to end: a served broker, its HTTP API, its console and the CLI ----------------------


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[BrokerProcess]:
    with BrokerProcess(broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")) as broker:
        yield broker


def cli(
    broker: BrokerProcess, token: str, config: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in broker.env.items() if k not in ("BROKER_DATABASE_URL", "BROKER_HOME")}
    env.update(BROKER_ADDR=broker.url, BROKER_TOKEN=token, XDG_CONFIG_HOME=str(config))
    done = subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    return done


def every_reader_copes(broker: BrokerProcess, admin: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The API (with each filter), the console, and ``broker audit show/export/verify``."""
    auditor = bearer(admin)
    with httpx.Client(base_url=broker.url, timeout=30) as api:
        for params in (
            {},
            {"order": "desc"},
            {"action": "service:auth:failed"},
            {"action": "operator:auth:*"},
            {"actor": "anonymous"},
            {"subject": "/v1/*"},
            {"after": 1, "limit": 3},
            {"before": 10_000, "order": "desc"},
            {"actor": "x\u2028y"},
            {"subject": "\x00"},
        ):
            resp = api.get("/v1/admin/audit", params=params, headers=auditor)
            # A NUL filter is a value PostgreSQL cannot compare: a 422, never a 5xx.
            assert resp.status_code in (200, 422), (params, resp.status_code, resp.text[:300])
        verified = api.get("/v1/admin/audit/verify", headers=auditor)
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"], verified.json()
    console = httpx.Client(base_url=broker.url, timeout=30)
    with console:
        form = console.get("/console/login")
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        done = console.post("/console/login", data={"csrf": csrf, "token": admin})
        assert done.status_code == 303, done.text[:300]
        page = console.get("/console/audit")
        assert page.status_code == 200, page.text[:300]
        for raw in ("\u2028", "\u202e", "\x00", "\x85"):
            assert raw not in page.text
        filtered = console.get("/console/audit", params={"actor": "anonymous", "action": "*"})
        assert filtered.status_code == 200, filtered.text[:300]
    with httpx.Client(base_url=broker.url, timeout=30) as api:
        head = api.get("/v1/admin/audit/verify", headers=auditor).json()["head_seq"]
    config = tmp_path / "cli-config"
    cli(broker, admin, config, "audit", "show", "--limit", "1000")
    shown = cli(broker, admin, config, "audit", "show", "--limit", "1000", "--json").stdout
    assert len(json.loads(shown)) == head
    export = tmp_path / "audit.jsonl"
    cli(broker, admin, config, "audit", "export", "-o", str(export), "--no-progress")
    events = assert_one_line_per_event(export.read_text(encoding="utf-8"), head)
    assert "intact" in cli(broker, admin, config, "audit", "verify", "--no-progress").stdout
    offline = cli(broker, admin, config, "audit", "verify", "--file", str(export)).stdout
    assert "intact" in offline
    return events


def test_hostile_workload_jwts_are_refused_audited_and_every_reader_copes(
    served: BrokerProcess, tmp_path: Path
) -> None:
    admin = served.bootstrap_token
    assert admin is not None
    iss = "https://k8s.test"
    attacks = {
        "lone surrogate kid": ({"alg": "EdDSA", "kid": "\ud800"}, {"iss": iss}),
        "low surrogate kid": ({"alg": "EdDSA", "kid": "k\udfff"}, {"iss": iss}),
        "U+2028 in iss": ({"alg": "EdDSA", "kid": "k1"}, {"iss": "https://x\u2028forged"}),
        "NUL in iss": ({"alg": "EdDSA", "kid": "k1"}, {"iss": "https://x\x00y"}),
        "surrogate in iss": ({"alg": "EdDSA", "kid": "k1"}, {"iss": "https://x\ud800y"}),
        "bidi override in kid": ({"alg": "EdDSA", "kid": "\u202ek1"}, {"iss": iss}),
        "escape sequence in kid": ({"alg": "EdDSA", "kid": "\x1b[2J"}, {"iss": iss}),
        "NUL in typ": ({"alg": "EdDSA", "typ": "\x00", "kid": "k"}, {"iss": iss}),
        "long kid": ({"alg": "EdDSA", "kid": "\u2029" * 150}, {"iss": iss}),
        "nested header": ({"alg": "EdDSA", "kid": "k", "x": [[[[[[[[[]]]]]]]]]}, {"iss": iss}),
    }
    with httpx.Client(base_url=served.url, timeout=30) as api:
        for name, (header, claims) in attacks.items():
            token = handmade_jwt(header, claims)
            resp = api.post("/v1/keys", headers=bearer(token), json=KEY_REQUEST)
            assert resp.status_code == 401, (name, resp.status_code, resp.text[:300])
            assert resp.headers["content-type"].startswith("application/problem+json")
        deep = "[" * 5000 + "]" * 5000  # past the JSON parser's recursion limit
        token = f"{b64(deep.encode())}.{b64({'iss': iss})}.{b64(b'x')}"
        resp = api.post("/v1/keys", headers=bearer(token), json=KEY_REQUEST)
        assert resp.status_code == 401, resp.text[:300]
        failed = api.get(
            "/v1/admin/audit",
            params={"action": "service:auth:failed", "limit": 1000},
            headers=bearer(admin),
        )
        assert failed.status_code == 200, failed.text[:300]
    events = failed.json()["events"]
    assert len(events) == len(attacks) + 1  # every refusal audited, none lost
    assert_safe_text(events)
    kids = [e["details"].get("kid") for e in events]
    assert "\\ud800" in kids
    assert "\\u2029" * 150 in kids  # escaped whole: within the bound, nothing cut
    issuers = [e["details"].get("issuer") for e in events]
    assert "https://x\\u2028forged" in issuers
    assert "https://x\\u0000y" in issuers
    assert "https://x\\ud800y" in issuers
    exported = every_reader_copes(served, admin, tmp_path)
    assert {e["seq"] for e in events} <= {e["seq"] for e in exported}


def test_a_storm_of_unstorable_issuers_reaches_the_rules(served: BrokerProcess) -> None:
    """A NUL (PostgreSQL) or a surrogate (SQLite) in ``iss`` used to end in a 422 or a 500
    before anything was audited, so ``credential_guessing`` never heard of it."""
    admin = served.bootstrap_token
    assert admin is not None
    with httpx.Client(base_url=served.url, timeout=30) as api:
        rules = api.get("/v1/admin/rules", headers=bearer(admin)).json()
        guessing = next(r for r in rules if r["name"] == "credential_guessing")
        failures = next(t["value"] for t in guessing["thresholds"] if t["name"] == "failures")
        hostile = ["https://x\x00y", "https://x\ud800y", "https://x\udfff\x00"]
        for n in range(failures):
            claims = {"iss": hostile[n % len(hostile)], "sub": "s"}
            token = handmade_jwt({"alg": "EdDSA", "kid": f"k{n}"}, claims)
            resp = api.post("/v1/keys", headers=bearer(token), json=KEY_REQUEST)
            # 429 once the rule throttles the address: still a refusal it counted.
            assert resp.status_code in (401, 429), (n, resp.status_code, resp.text[:300])
        deadline = time.monotonic() + 30
        incidents: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not incidents:
            incidents = api.get(
                "/v1/admin/incidents",
                params={"rule": "credential_guessing"},
                headers=bearer(admin),
            ).json()
            if not incidents:
                time.sleep(0.2)
        assert incidents, "the rule never heard of the refusals"
        assert incidents[0]["subject"] == "source:127.0.0.1"
        audited = api.get(
            "/v1/admin/audit",
            params={"action": "service:auth:failed", "limit": 1000},
            headers=bearer(admin),
        ).json()["events"]
        assert len(audited) >= failures


def test_an_old_trail_holding_hostile_text_is_served_by_every_reader(
    tmp_path: Path, database_url: str, backend: str
) -> None:
    """A database the old code wrote: the chain keeps those events, so readers must cope."""
    from broker.db import make_engine
    from broker.settings import Settings

    async def write_old_events() -> None:
        engine = make_engine(Settings(database_url=database_url))
        try:
            async with AsyncSession(engine) as session, session.begin():
                for actor, subject, details in old_events(backend):
                    await append_as_the_old_code_did(session, actor, subject, details)
        finally:
            await engine.dispose()

    with BrokerProcess(broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")) as broker:
        admin = broker.bootstrap_token
        assert admin is not None
        asyncio.run(write_old_events())
        exported = every_reader_copes(broker, admin, tmp_path)
    old = [e for e in exported if e["action"] == "service:auth:failed"]
    assert [(e["actor"], e["subject"], e["details"]) for e in old] == old_events(backend)


def test_operator_token_failure_on_a_very_long_path_is_audited(served: BrokerProcess) -> None:
    """Class 6: the subject (the path) was longer than its column; PostgreSQL refused the
    event, so the failure went unaudited and the caller got a 4xx/5xx of the wrong kind."""
    admin = served.bootstrap_token
    assert admin is not None
    paths = [
        "/v1/admin/services/" + "a" * 3000,
        "/v1/admin/services/" + "%00" * 50,
        "/v1/admin/services/%E2%80%A8" + "b" * 400,
    ]
    with httpx.Client(base_url=served.url, timeout=30) as api:
        for path in paths:
            resp = api.get(path, headers=bearer("pkbo_" + "x" * 40))
            assert resp.status_code == 401, (resp.status_code, resp.text[:300])
        events = api.get(
            "/v1/admin/audit",
            params={"action": "operator:auth:failed", "limit": 1000},
            headers=bearer(admin),
        ).json()["events"]
    assert len(events) == len(paths)
    for event in events:
        assert event["subject"].startswith("/v1/admin/services/")
        assert len(event["subject"]) <= normalise.MAX_SUBJECT
        assert event["subject"].endswith(normalise.CUT)
    assert_safe_text(events)
    assert "\\u0000" in events[1]["subject"]
    assert "\\u2028" in events[2]["subject"]


# --- bindings can never hold such text ---------------------------------------------------------


async def test_a_binding_with_unprintable_text_is_refused(
    client: httpx.AsyncClient, operators: Operators
) -> None:
    from tests.support.world import WORKLOAD_AUDIENCE, WorkloadIssuer

    jwks = WorkloadIssuer().jwks
    good = {
        "kind": "jwt",
        "issuer": "https://k8s.test",
        "jwks": jwks,
        "audience": WORKLOAD_AUDIENCE,
        "subject": "system:serviceaccount:*",
        "claims": {"kubernetes.io/namespace": "billing"},
    }
    bad = [
        {"issuer": "https://k8s.test\x00"},
        {"issuer": "https://k8s\u200e.test"},
        {"audience": "pii\x7fbroker"},
        {"subject": "system:serviceaccount:\u2028*"},
        {"subject": "a\x00b"},
        {"claims": {"kubernetes.io/namespace": "bill\x1bing"}},
        {"claims": {"name\u2029": "billing"}},
    ]
    for n, change in enumerate(bad):
        resp = await client.post(
            "/v1/admin/services",
            headers=bearer(operators.admin),
            json={"id": f"svc-{n}", "name": "x", "bindings": [{**good, **change}]},
        )
        assert resp.status_code in (400, 422), (change, resp.status_code, resp.text)
    ok = await client.post(
        "/v1/admin/services",
        headers=bearer(operators.admin),
        json={"id": "svc-good", "name": "x", "bindings": [good]},
    )
    assert ok.status_code == 201, ok.text


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        DETAILS,
        # What the broker writes about itself: printable names, ids, counts, short lists.
        st.dictionaries(
            st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
            st.recursive(
                st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30)),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
                ),
                max_leaves=12,
            ),
            max_size=12,
        ),
    )
)
def test_the_fast_path_stores_exactly_what_the_full_walk_would(value: dict[str, Any]) -> None:
    """Details already within every bound are copied as they are (the key-issuance hot
    path); whatever they hold, the result is the full normalisation's, value for value."""
    assert normalise.details(value) == normalise._Details().container(value, 1)
