"""The outside review's smaller findings (issue 22, class 6), each played by an attacker
against a real ``broker serve`` process on both databases, and through the SDK and the CLI
where they are involved:

* one service holding every revocation-stream slot of a replica;
* a deeply nested JWKS (from an issuer's ``jwks_url``, inline at registration, and as the
  SDK fetches it) breaking the parser and escaping the refetch limit;
* numbers written with other digits than ASCII, and a ``jkt`` that is no thumbprint, on
  ``POST /v1/token`` (and ``/v1/keys``, and ``Last-Event-ID``);
* ``broker scan`` stalled by lines of ``@``, ``eyJ`` or groups of digits, so that a leaked
  secret in the same log would go unreported;
* the rule-firing and incident series on the public ``/metrics`` telling a prober that it
  was noticed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from broker.client import KeyVerifier, VerifierUnavailable
from tests.support.problems import assert_oauth_error
from tests.support.served import Served, served_broker
from tests.support.streaming import SSEReader
from tests.support.world import World, basic, bearer, build_world

PROBLEM = "application/problem+json"
STREAM_MAX = 4
STREAM_MAX_PER_SERVICE = 2
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
DETAILS = json.dumps([{"type": "pii_access", "fields": ["customer.email"], "purpose": "billing"}])
KEY_REQUEST = {"audience": "customers-db", "fields": ["customer.email"], "purpose": "billing"}


def assert_problem(resp: httpx.Response, *statuses: int) -> dict[str, Any]:
    try:
        shown = resp.text[:300]
    except httpx.ResponseNotRead:
        shown = "(an open stream)"
    assert resp.status_code in statuses, (resp.status_code, shown)
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == resp.status_code
    return body


@dataclass
class Broker:
    """A served broker with its operators, an HTTP client and the shared test world."""

    served: Served
    http: httpx.AsyncClient
    world: World

    @property
    def admin(self) -> str:
        return self.served.admin

    @property
    def port(self) -> int:
        return self.served.broker.port

    async def service(self, service_id: str, bindings: list[dict[str, Any]]) -> httpx.Response:
        return await self.http.post(
            "/v1/admin/services",
            headers=bearer(self.admin),
            json={"id": service_id, "name": service_id, "bindings": bindings},
        )


@pytest.fixture
async def broker(tmp_path: Path, database_url: str) -> AsyncIterator[Broker]:
    with served_broker(
        tmp_path,
        database_url,
        BROKER_STREAM_MAX=str(STREAM_MAX),
        BROKER_STREAM_MAX_PER_SERVICE=str(STREAM_MAX_PER_SERVICE),
    ) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            world = await build_world(http, served.admin, served.approver)
            yield Broker(served, http, world)


# --- revocation streams: one service cannot take every slot ---------------------------------


async def test_one_service_cannot_hold_every_revocation_stream(broker: Broker) -> None:
    """customers-db (any authenticated service would do) opens streams until refused: it
    gets its share and a 429, and billing-api still gets streams; only when the replica is
    full for everyone is the answer 503. Before the per-service cap customers-db took all
    four slots and every other service was left to polling."""
    http, world = broker.http, broker.world
    made = await broker.service("third-svc", [{"kind": "secret"}])
    assert made.status_code == 201, made.text
    third = basic("third-svc", made.json()["client_secret"])
    async with contextlib.AsyncExitStack() as stack:

        async def open_stream(headers: dict[str, str]) -> httpx.Response:
            resp = await stack.enter_async_context(
                http.stream("GET", "/v1/revocations/stream", headers=headers)
            )
            if resp.status_code == 200:
                readers.append(SSEReader(resp))  # keep it: dropping it closes the stream
                assert (await readers[-1].next()).comment == "keep-alive"
            else:
                await resp.aread()
            return resp

        readers: list[SSEReader] = []
        statuses = [(await open_stream(world.customers)).status_code for _ in range(STREAM_MAX)]
        assert statuses[:STREAM_MAX_PER_SERVICE] == [200] * STREAM_MAX_PER_SERVICE, statuses
        refused = await open_stream(world.customers)
        body = assert_problem(refused, 429)
        assert body["type"].endswith("/rate-limited")
        assert refused.headers["retry-after"] == "30"
        assert "poll" in body["detail"]
        # The service that hit its cap still polls.
        page = await http.get("/v1/revocations", headers=world.customers)
        assert page.status_code == 200, page.text
        # Another service still gets its streams, up to the replica's maximum.
        for _ in range(STREAM_MAX - STREAM_MAX_PER_SERVICE):
            assert (await open_stream(world.billing)).status_code == 200
        full = await open_stream(third)
        assert "poll" in assert_problem(full, 503)["detail"]
    # Slots come back when the subscribers go: customers-db streams again.
    deadline = time.monotonic() + 20
    while True:
        async with http.stream("GET", "/v1/revocations/stream", headers=world.customers) as again:
            if again.status_code == 200:
                assert (await SSEReader(again).next()).comment == "keep-alive"
                break
        assert time.monotonic() < deadline, "the slots were not given back"
        await asyncio.sleep(0.2)


# --- deeply nested JWKS -----------------------------------------------------------------------


class HostileJwks:
    """An issuer's key-set URL on 127.0.0.1 that answers a JSON document nested deeper than
    any parser recurses, and counts how often it is asked."""

    def __init__(self, depth: int = 100_000) -> None:
        body = ('{"keys":' + "[" * depth + "]" * depth + "}").encode()
        self.requests = 0
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hostile.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks"

    def __enter__(self) -> HostileJwks:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _workload_token(key: Ed25519PrivateKey, issuer: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "sub": "deep", "aud": "pii-broker", "iat": now, "nbf": now}
    return jwt.encode({**claims, "exp": now + 300}, key, algorithm="EdDSA", headers={"kid": "d1"})


async def test_a_deeply_nested_jwks_is_one_failed_fetch(broker: Broker) -> None:
    """An issuer (or whoever controls its key-set URL) answers a 100,000-deep array. The
    broker refuses the token as it does for any unusable key set (503, the documented
    answer when the issuer's keys cannot be had), and asks the URL once however many
    tokens arrive within the refetch interval. Before, the parser's RecursionError
    escaped: a 400 "body nested too deeply" about a body the client never sent, and no
    attempt recorded, so every request fetched the document again."""
    http = broker.http
    with HostileJwks() as hostile:
        made = await broker.service(
            "deep-svc",
            [
                {
                    "kind": "jwt",
                    "issuer": "https://deep.test",
                    "jwks_url": hostile.url,
                    "audience": "pii-broker",
                    "subject": "deep",
                }
            ],
        )
        assert made.status_code == 201, made.text
        token = _workload_token(Ed25519PrivateKey.generate(), "https://deep.test")
        for _ in range(4):
            resp = await http.post("/v1/keys", headers=bearer(token), json=KEY_REQUEST)
            assert_problem(resp, 503)
        exchanged = await http.post(
            "/v1/token",
            data={
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": token,
                "subject_token_type": JWT_TYPE,
                "audience": "customers-db",
                "authorization_details": DETAILS,
            },
        )
        assert_oauth_error(exchanged, 503, "temporarily_unavailable")
        assert hostile.requests == 1
        # The broker is still itself: a valid service gets its key.
        ok = await http.post("/v1/keys", headers=broker.world.billing, json=KEY_REQUEST)
        assert ok.status_code == 201, ok.text

        # The SDK fetching the same document: unavailable, fail closed, and one fetch per
        # refetch interval (it already recorded the attempt first; kept here as a guard).
        before = hostile.requests
        key = ok.json()["key"]
        async with KeyVerifier(
            broker.served.url,
            "customers-db",
            jwks_url=hostile.url,
            follow_revocations=False,
            min_refetch_interval=60,
        ) as verifier:
            for _ in range(3):
                with pytest.raises(VerifierUnavailable):
                    await verifier.verify(key)
        assert hostile.requests == before + 1


async def test_an_inline_jwks_with_a_deeply_nested_member_is_refused(broker: Broker) -> None:
    """An admin (or a script fed by someone else's JWKS) registers a key set whose key has a
    member nested hundreds deep. It decodes, so it used to reach the database, whose JSON
    serialisation then ran out of stack deeper in the call: a 500 at some depths. A JWK
    member is a string or a list of strings, so anything nested is refused as invalid."""
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate().public_key()))
    for depth in (50, 400, 800, 900, 940, 960, 975, 990, 5000):
        member = '{"a":' * depth + "1" + "}" * depth
        key = json.dumps({**jwk, "kid": "k1"})[:-1] + f', "x-extra": {member}}}'
        body = (
            f'{{"id": "nested-{depth}", "name": "n", "bindings": [{{"kind": "jwt", '
            f'"issuer": "https://nested-{depth}.test", "audience": "pii-broker", '
            f'"subject": "s", "jwks": {{"keys": [{key}]}}}}]}}'
        )
        resp = await broker.http.post(
            "/v1/admin/services",
            headers={**bearer(broker.admin), "content-type": "application/json"},
            content=body,
        )
        assert_problem(resp, 400, 422)
    listed = await broker.http.get("/v1/admin/services", headers=bearer(broker.admin))
    assert listed.status_code == 200
    assert not [s for s in listed.json() if s["id"].startswith("nested-")]


# --- numbers and thumbprints on the key routes -------------------------------------------------


def _thumbprint(key: Ed25519PrivateKey) -> str:
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x")}, separators=(",", ":"))
    return (
        base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    )


NOT_NUMBERS = (
    "²",  # SUPERSCRIPT TWO: str.isdigit() says yes, int() raises (the 500)
    "٣",  # ARABIC-INDIC DIGIT THREE: int() reads 3
    "\uff16\uff10",  # FULLWIDTH "60"
    "\U0001d7d4",  # MATHEMATICAL BOLD DIGIT SIX
    "६०",  # DEVANAGARI "60"
    "+60",
    "-60",
    " 60",
    "60 ",
    "6\u00a00",
    "6_0",
    "0",
    "60.0",
    "6e1",
    "0x3c",
    "99999999999999999999999999999999",
    "9" * 5000,
)
NOT_THUMBPRINTS = (
    "short",
    "A" * 44,
    "A" * 43 + "\n",
    "A" * 42 + "B",  # 43 characters, but no SHA-256 digest encodes to this
    "A" * 42 + "=",
    "+" * 43,
    "²" * 43,
    "A" * 41 + "٣A",
)


async def test_key_routes_take_only_ascii_numbers_and_real_thumbprints(broker: Broker) -> None:
    """A service fuzzes the numeric and holder-key parameters of both key routes: every
    refusal is a 400 problem naming the parameter, never a 500, and nothing written with
    other digits is read as a number. Before, ``ttl_seconds=²`` was a 500 on /v1/token,
    ``٣`` was quietly read as 3, and any string at all was put in ``cnf.jkt``."""
    http, world = broker.http, broker.world
    exchange = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": world.workload.token(),
        "subject_token_type": JWT_TYPE,
        "audience": "customers-db",
        "authorization_details": DETAILS,
    }
    for name in ("ttl_seconds", "expires_in", "max_uses"):
        for value in NOT_NUMBERS:
            resp = await http.post("/v1/token", data={**exchange, name: value})
            body = assert_oauth_error(resp, 400, "invalid_request")
            assert name in body["error_description"]
    for value in NOT_THUMBPRINTS:
        resp = await http.post("/v1/token", data={**exchange, "jkt": value})
        body = assert_oauth_error(resp, 400, "invalid_request")
        assert "jkt" in body["error_description"]
        keys = await http.post(
            "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "jkt": value}
        )
        assert "jkt" in assert_problem(keys, 400)["detail"]
    # An audience no service could be is a target the broker does not serve (RFC 8693).
    for audience in ("https://customers.example", "Customers-DB", "c²"):
        resp = await http.post("/v1/token", data={**exchange, "audience": audience})
        assert_oauth_error(resp, 400, "invalid_target")
    # The same values as JSON numbers on /v1/keys are numbers or not by JSON's own grammar.
    for raw in ('"60"', "60.5", "1e400", "-60", "99999999999999999999999"):
        body = json.dumps(KEY_REQUEST)[:-1] + f', "ttl_seconds": {raw}}}'
        resp = await http.post(
            "/v1/keys", headers={**world.billing, "content-type": "application/json"}, content=body
        )
        assert_problem(resp, 400)

    # What is well formed still works, on both routes, and means the same.
    holder = _thumbprint(Ed25519PrivateKey.generate())
    good = await http.post(
        "/v1/token",
        data={**exchange, "ttl_seconds": "60", "max_uses": "3", "jkt": holder, "expires_in": ""},
    )
    assert good.status_code == 200, good.text
    assert good.json()["expires_in"] == 60
    assert good.json()["token_type"] == "DPoP"
    claims = jwt.decode(good.json()["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": holder}
    assert claims["max_uses"] == 3
    keyed = await http.post(
        "/v1/keys", headers=world.billing, json={**KEY_REQUEST, "ttl_seconds": 60, "jkt": holder}
    )
    assert keyed.status_code == 201, keyed.text
    assert keyed.json()["cnf_jkt"] == holder


def test_every_unicode_digit_is_refused_as_a_number() -> None:
    """The one parser, over every character Unicode calls a digit: only ASCII 0-9 count."""
    from broker.http.asgi_io import whole_number

    digits = [
        chr(c)
        for c in range(0x110000)
        if unicodedata.category(chr(c)) in ("Nd", "No") or chr(c).isdigit()
    ]
    assert len(digits) > 600
    for d in digits:
        expected = int(d) if d in "0123456789" else None
        assert whole_number(d, low=0, high=9) == expected, repr(d)
        assert whole_number("1" + d, low=0, high=99) == (
            10 + expected if expected is not None else None
        )


def _raw_get(port: int, path: str, headers: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers)
        sock.sendall(b"Connection: close\r\n\r\n")
        return sock.recv(4096)


async def test_last_event_id_in_other_digits_is_a_problem(broker: Broker) -> None:
    """``Last-Event-ID: ²`` (byte B2, which the server reads as Latin-1) was a 500."""
    authorization = broker.world.customers["Authorization"].encode()
    for value in (b"\xb2", b"\xc2\xb2", "٣".encode(), b"+1", b"1_0", b"9" * 30):
        answer = _raw_get(
            broker.port,
            "/v1/revocations/stream",
            b"Authorization: " + authorization + b"\r\nLast-Event-ID: " + value + b"\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 422 "), (value, answer[:200])


# --- broker scan on text written to stall it -------------------------------------------------

ADVERSARIAL_UNITS = (b"@", b"a@", b"eyJ", b"1234 ", b"0 1", b"12-", b"DE89", b"pkbo_")


def _adversarial_log(path: Path, secret: str) -> None:
    """Long lines of what starts a candidate and never ends one (about 24 MB, 16 of them
    '@' and 'a@': minutes for the scanner as it was, about a second now), with the leaked
    client secret on one ordinary line in the middle."""
    line = 64 * 1024
    with path.open("wb") as fh:
        for unit in ADVERSARIAL_UNITS:
            repeat = (unit * (line // len(unit)))[:line] + b"\n"
            fh.write(repeat * (128 if unit in (b"@", b"a@") else 16))
            if unit == b"1234 ":
                fh.write(f"2026-03-16 12:00:00 INFO retry with secret={secret}\n".encode())


async def test_scan_of_adversarial_logs_still_reports_the_leak(
    broker: Broker, tmp_path: Path
) -> None:
    """Whoever writes log lines (a path, a user agent) fills them with ``@``, ``eyJ`` and
    groups of digits so that ``broker scan`` in CI runs for hours and gets switched off.
    The scan of such a log finishes, finds exactly the one leaked client secret among
    them, and reports it, which retires the secret. The bound below is a cap two orders of
    magnitude above what the scan takes now, not a benchmark (bench/scan.py is)."""
    made = await broker.service("leaky-svc", [{"kind": "secret"}])
    assert made.status_code == 201, made.text
    secret = made.json()["client_secret"]
    assert (await broker.http.get("/v1/revocations", headers=basic("leaky-svc", secret))).is_success
    log = tmp_path / "app.log"
    _adversarial_log(log, secret)
    env = {**os.environ, "BROKER_TOKEN": broker.admin, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    env.pop("BROKER_CONFIG", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "scan",
            "--json",
            "--report-to",
            broker.served.url,
            str(log),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert [f["kind"] for f in report["findings"]] == ["client_secret"]
    assert secret not in result.stdout + result.stderr
    refused = await broker.http.get("/v1/revocations", headers=basic("leaky-svc", secret))
    assert refused.status_code == 401


# --- /metrics: nothing a prober can read about what was detected ------------------------------

DETECTION_SERIES = (
    "broker_rule_firings",
    "broker_rule_errors",
    "broker_incidents",
    "broker_alerts",
    "broker_revocations",
    "broker_source_block_refusals",
    "broker_operator_lockout_refusals",
    "broker_keys_denied",
    "broker_verification_failures",
    "broker_service_auth_failures",
    "broker_signing_key_rotations",
)


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


async def test_a_prober_cannot_read_from_metrics_whether_it_was_detected(broker: Broker) -> None:
    """A prober forges keys and guesses operator tokens, then reads ``/metrics`` to learn
    whether that was noticed (an incident opened, a key refused as forged, operator routes
    being used). The public page shows none of it; the full page needs an operator
    token. Before, every series (rule firings and incidents by rule among them) was on
    the public page."""
    http, world = broker.http, broker.world
    key = (await http.post("/v1/keys", headers=world.billing, json=KEY_REQUEST)).json()
    forged = key["key"][:-6] + "AAAAAA"
    seen = await http.post("/v1/introspect", headers=world.customers, data={"token": forged})
    assert seen.json() == {"active": False}
    for _ in range(3):
        assert (
            await http.get("/v1/admin/services", headers=bearer("pkbo_guess"))
        ).status_code == 401
    # The defenders react: an incident on the prober's key.
    opened = await http.post(
        "/v1/admin/incidents",
        headers=bearer(broker.admin),
        json={"title": "forged keys", "severity": "high", "selector": {"jti": key["jti"]}},
    )
    assert opened.status_code == 201, opened.text

    public = await http.get("/metrics")
    assert public.status_code == 200
    samples = _samples(public.text)
    leaked = sorted(n for n in samples if n.startswith(DETECTION_SERIES))
    assert leaked == []
    assert not any(
        labels.get("route", "").startswith(("/v1/admin", "/v1/leaks", "/console"))
        for series in samples.values()
        for labels in series
    )
    assert samples["broker_keys_issued_total"]  # the operational series stay public
    assert any(
        labels.get("route") == "/v1/keys"
        for labels in samples["broker_request_duration_seconds_count"]
    )

    for headers in ({}, bearer("pkbo_guess"), world.billing):
        assert_problem(await http.get("/v1/admin/metrics", headers=headers), 401)
    full = await http.get("/v1/admin/metrics", headers=bearer(broker.served.auditor))
    assert full.status_code == 200, full.text
    assert full.headers["content-type"].startswith("text/plain")
    everything = _samples(full.text)
    assert {"event": "opened", "rule": "manual", "severity": "high"} in everything[
        "broker_incidents_total"
    ]
    assert {"reason": "bad-signature", "where": "introspection"} in everything[
        "broker_verification_failures_total"
    ]
    assert any(
        labels.get("route") == "/v1/admin/incidents"
        for labels in everything["broker_request_duration_seconds_count"]
    )
    assert samples.keys() <= everything.keys()
