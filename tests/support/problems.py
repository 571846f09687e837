"""The RFC 9457 problem shape every refusal has, asserted the same way by every test, and
the OAuth error shape the OAuth endpoints give instead (``broker.http.oauth_errors``)."""

from __future__ import annotations

import re
from typing import Any

PROBLEM = "application/problem+json"


def assert_problem(resp: Any, status: int, type_suffix: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    if type_suffix:
        assert body["type"].endswith("/" + type_suffix), body["type"]
    return body


OAUTH = "application/json"
# RFC 6749 §5.2: the characters an error_description may hold.
_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


def assert_oauth_error(
    resp: Any, status: int, error: str, *, challenge: str | None = None
) -> dict[str, Any]:
    """An OAuth error answer of /v1/token, /v1/introspect or /v1/revoke (RFC 6749 §5.2):
    JSON with ``error`` and ``error_description`` and the problem members beside them, never
    cached; a 401 challenges in ``challenge``'s scheme (``"Basic"`` or ``"Bearer"``)."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].split(";")[0].strip() == OAUTH, resp.headers
    assert resp.headers["cache-control"] == "no-store"
    body: dict[str, Any] = resp.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str)
    assert _DESCRIPTION.fullmatch(body["error_description"]), body["error_description"]
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    if status == 401:
        expected = {
            "Basic": 'Basic realm="pii-broker"',
            "Bearer": 'Bearer realm="pii-broker", error="invalid_token"',
        }[challenge or "Basic"]
        assert resp.headers["www-authenticate"] == expected
    else:
        assert "www-authenticate" not in resp.headers
    if status in (429, 503):
        assert int(resp.headers["retry-after"]) >= 1
    return body


def assert_oauth_refusal(resp: Any, *statuses: int) -> dict[str, Any]:
    """Some OAuth error among ``statuses``, whichever code: for requests that may be refused
    for more than one reason (hostile input)."""
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    body: dict[str, Any] = resp.json()
    assert isinstance(body.get("error"), str), body
    return assert_oauth_error(
        resp, resp.status_code, body["error"], challenge=_scheme(resp.request.headers)
    )


def _scheme(headers: Any) -> str:
    sent = str(headers.get("authorization", "")).partition(" ")[0].lower()
    return "Bearer" if sent == "bearer" else "Basic"
