"""The access log of a served broker: one JSON line per request, hot routes and the rest
alike, with the same keys in the same order, its request id in the answer's
``X-Request-Id``, and nothing from the query string or a credential-shaped path."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import logs
from broker.credentials import CREDENTIAL_PATTERN
from tests.support.processes import BrokerProcess, broker_env

KEYS = [
    "method",
    "path",
    "status",
    "duration_ms",
    "request_id",
    "event",
    "level",
    "logger",
    "timestamp",
]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJiaWxsaW5nLWFwaSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def _access_lines(broker: BrokerProcess) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in broker.output.splitlines()
        if line.startswith("{") and '"logger": "broker.access"' in line
    ]


def _line_for(broker: BrokerProcess, request_id: str) -> dict[str, Any]:
    """The access line of one request, once the broker's output has it (bounded wait)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [r for r in _access_lines(broker) if r.get("request_id") == request_id]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}:\n{broker.output[-3000:]}")


def test_every_request_has_one_access_line_with_the_same_keys(
    database_url: str, tmp_path: Any
) -> None:
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="INFO")
    with BrokerProcess(env) as broker:
        admin = broker.bootstrap_token
        assert admin is not None
        admin_auth = {"Authorization": f"Bearer {admin}"}
        # (method, URL, headers, what the log must say the path was)
        cases: list[tuple[str, str, dict[str, str], str]] = [
            # the two hot routes, served ahead of the router
            ("POST", "/v1/keys", {}, "/v1/keys"),
            ("POST", f"/v1/introspect?token={JWT}", {}, "/v1/introspect"),
            # routes through Litestar
            ("GET", "/healthz?probe=1", {}, "/healthz"),
            ("GET", "/v1/admin/services", admin_auth, "/v1/admin/services"),
            # a credential, a JWT and an Authorization value pasted into a path: masked
            ("GET", f"/v1/admin/services/{admin}", admin_auth, "/v1/admin/services/[credential]"),
            ("GET", f"/v1/admin/services/{JWT}", admin_auth, "/v1/admin/services/[jwt]"),
            (
                "GET",
                "/v1/admin/services/Bearer%20abcdefghijklmnop",
                admin_auth,
                "/v1/admin/services/Bearer [redacted]",
            ),
        ]
        with httpx.Client(base_url=broker.url, timeout=20) as http:
            for method, url, headers, logged_path in cases:
                resp = http.request(method, url, headers=headers)
                request_id = resp.headers["x-request-id"]
                line = _line_for(broker, request_id)
                assert list(line) == KEYS, line
                assert line["method"] == method
                assert line["path"] == logged_path, (url, line)
                assert line["status"] == resp.status_code
                assert isinstance(line["duration_ms"], int | float)
                assert line["duration_ms"] >= 0
                assert (line["event"], line["level"]) == ("request", "info")
                assert TIMESTAMP.match(line["timestamp"]), line["timestamp"]
        output = broker.output
    ids = [line["request_id"] for line in _access_lines(broker)]
    assert len(ids) == len(set(ids)) >= len(cases)
    # The token is printed once at start, by design; the access log never repeats it, nor
    # any query string.
    assert output.count(admin) == 1
    assert JWT not in output
    assert "probe=1" not in output


def test_a_quiet_broker_writes_no_access_line(database_url: str, tmp_path: Any) -> None:
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING")
    with BrokerProcess(env) as broker, httpx.Client(base_url=broker.url, timeout=20) as http:
        for _ in range(3):
            resp = http.post("/v1/keys")
            assert resp.status_code == 401
            assert resp.headers["x-request-id"]
    assert _access_lines(broker) == []


# Text made of the pieces the masks look for, so that most draws hold something to mask.
_PIECES = st.sampled_from(
    [
        *("pkbo_", "pkbs_", "pkb", "eyJ", "eyJhbGciOi", "Bearer ", "basic ", "BEARER\t"),
        *("a", "Z9", ".", "-", "_", " ", "%20", "/v1/keys/", "x" * 49, "AbC123" * 9),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_the_redaction_prefilter_never_lets_anything_through(text: str) -> None:
    """``redact`` skips its three patterns when none of their leading literals is in the
    text; whatever the text, it masks exactly what the patterns alone would."""
    expected = CREDENTIAL_PATTERN.sub("[credential]", text)
    expected = logs._JWT.sub("[jwt]", expected)
    expected = logs._BEARER.sub(r"\1 [redacted]", expected)
    assert logs.redact(text) == expected
