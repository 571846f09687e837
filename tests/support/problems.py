"""The RFC 9457 problem shape every refusal has, asserted the same way by every test."""

from __future__ import annotations

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
