"""Approving as operators do now that an approval is bound to what was read.

An approval names the pending version and its ``terms_digest``; ``approval`` builds that
body from a policy as the API returned it (a proposal's answer, or a GET).

The approver must also be independent of the proposer: an operator an admin made through
the API counts as that admin until another admin confirms it. A test that needs a second
person next to a served broker's bootstrap admin makes it as a team with one admin does,
with ``broker operator create`` on the host (``tests.support.served.cli_operator``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


def pending_of(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The version waiting for a decision in a policy document."""
    found = [v for v in policy["versions"] if v["status"] == "proposed"]
    assert found, f"no pending version in {policy['id']}"
    pending: dict[str, Any] = found[0]
    return pending


def approval(policy: Mapping[str, Any], comment: str = "ok") -> dict[str, Any]:
    """The body approving the pending version of ``policy`` as read."""
    pending = pending_of(policy)
    return {
        "comment": comment,
        "version": pending["version"],
        "terms_digest": pending["terms_digest"],
    }


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def approve(
    client: httpx.AsyncClient, policy_id: str, token: str, comment: str = "ok"
) -> httpx.Response:
    """Read the policy, then approve its pending version as read."""
    read = await client.get(f"/v1/admin/policies/{policy_id}", headers=_bearer(token))
    assert read.status_code == 200, read.text
    return await client.post(
        f"/v1/admin/policies/{policy_id}/approve",
        headers=_bearer(token),
        json=approval(read.json(), comment),
    )


def approve_sync(
    client: httpx.Client, policy_id: str, token: str, comment: str = "ok"
) -> httpx.Response:
    read = client.get(f"/v1/admin/policies/{policy_id}", headers=_bearer(token))
    assert read.status_code == 200, read.text
    return client.post(
        f"/v1/admin/policies/{policy_id}/approve",
        headers=_bearer(token),
        json=approval(read.json(), comment),
    )
