"""Done means, for operator credentials: a leaked admin token disabled on one replica is
refused on another at once, and its console session there ends too.

Two ``broker serve`` processes share one database (PostgreSQL; on SQLite two processes on
one file, which works here because nothing about an operator is cached: every request
re-reads the operator's row and the console session's). An admin disables the leaked
operator on replica A; the test polls replica B, with a generous deadline, until B refuses
the token and the session (no timed assertion: the bench measures the time). Then the same
for a token's expiry set on A, and the bootstrap admin's printed expiry.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.console import csrf_of
from tests.support.served import served_broker
from tests.support.world import bearer

pytestmark = [pytest.mark.slow]

DEADLINE = 10.0  # seconds an effect may take before the test fails (it takes far less)


def eventually(check: Callable[[], bool], what: str) -> None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > DEADLINE:
            raise AssertionError(f"{what}: not within {DEADLINE} s")
        time.sleep(0.05)


def console_session(url: str, token: str) -> httpx.Client:
    """A browser-like client signed in to the console at ``url`` (plain http on loopback)."""
    c = httpx.Client(base_url=url, timeout=10)
    form = c.get("/console/login")
    assert form.status_code == 200, form.text
    done = c.post("/console/login", data={"csrf": csrf_of(form), "token": token})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console"
    return c


def test_a_leaked_admin_token_disabled_on_one_replica_is_refused_on_another(
    database_url: str, tmp_path: Path
) -> None:
    with served_broker(tmp_path, database_url, replicas=2) as served:
        a, b = (httpx.Client(base_url=r.url, timeout=10) for r in served.replicas)
        output = served.broker.output
        assert "It expires at" in output
        assert "BROKER_BOOTSTRAP_TOKEN_TTL" in output
        made = subprocess.run(
            [sys.executable, "-m", "broker", "operator", "create", "ops-admin", "--role", "admin"],
            env=served.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        assert "It expires at" in made.stderr
        assert "BROKER_OPERATOR_TOKEN_TTL, 90 days" in made.stderr
        leaked = made.stdout.strip()
        me = b.get("/v1/admin/operators/me", headers=bearer(leaked))
        assert me.status_code == 200, me.text
        operator_id = me.json()["id"]
        browser = console_session(served.replicas[1].url, leaked)
        assert browser.get("/console/operators").status_code == 200

        disabled = a.patch(
            f"/v1/admin/operators/{operator_id}",
            json={"disabled": True, "reason": "token found in a public paste"},
            headers=bearer(served.admin),
        )
        assert disabled.status_code == 200, disabled.text
        assert disabled.json()["status"] == "disabled"

        def refused_on_b() -> bool:
            resp = b.get("/v1/admin/services", headers=bearer(leaked))
            return resp.status_code == 401

        eventually(refused_on_b, "the disabled operator's token refused on replica B")
        refusal = b.get("/v1/admin/operators/me", headers=bearer(leaked))
        assert refusal.json()["detail"] == "operator is disabled"

        def signed_out_on_b() -> bool:
            page = browser.get("/console/operators")
            return page.status_code == 303 and page.headers["location"] == "/console/login"

        eventually(signed_out_on_b, "the disabled operator's console session ended on B")

        # The audit trail says who and why, read on B.
        trail = b.get(
            "/v1/admin/audit",
            params={"action": "operator:operator:disabled"},
            headers=bearer(served.auditor),
        )
        assert trail.status_code == 200, trail.text
        [event] = [e for e in trail.json()["events"] if e["subject"] == "operator:ops-admin"]
        assert event["actor"] == "operator:bootstrap-admin"
        assert event["details"]["reason"] == "token found in a public paste"
        assert leaked not in trail.text

        # A token ended by its expiry on A is refused on B, with when it ended.
        auditor_id = b.get("/v1/admin/operators/me", headers=bearer(served.auditor)).json()["id"]
        ended = a.patch(
            f"/v1/admin/operators/{auditor_id}",
            json={"token_expires_at": "2020-01-01T00:00:00Z"},
            headers=bearer(served.admin),
        )
        assert ended.status_code == 200, ended.text
        eventually(
            lambda: (
                b.get("/v1/admin/operators/me", headers=bearer(served.auditor)).status_code == 401
            ),
            "the ended token refused on replica B",
        )
        expired = b.get("/v1/admin/operators/me", headers=bearer(served.auditor)).json()
        assert expired["type"].endswith("/token-expired")
        assert "expired at 2020-01-01T00:00:00Z" in expired["detail"]
        for c in (a, b, browser):
            c.close()
