"""The broker's Token Status Lists read by an independent implementation of the draft.

``tests/interop/node/status_list.mjs`` uses the npm package ``@sd-jwt/jwt-status-list``
(pinned in package.json and package-lock.json) to take each key's ``status.status_list``
entry and to read the list's bits, and Node's ``jose`` to verify the list's signature from
the broker's JWKS (``typ: statuslist+jwt``, the algorithms of the broker's metadata, ``sub``
= the key's uri). Against a served broker (``broker serve``, both databases): keys are
VALID (0) until revoked, then INVALID (1) within a second, for a jti, a service and a
holder's own revocation, and for every signing algorithm the list verifies.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.interop import AUDIENCE, InteropBroker, interop_broker, require_tool, run_json
from tests.support.world import basic, bearer

pytestmark = [pytest.mark.slow]

KEY_REQUEST = {"audience": AUDIENCE, "fields": ["customer.email"], "purpose": "billing"}
DEADLINE = 3.0  # the broker refreshes within a second; bounded looser for busy CI
NODE_DIR = Path(__file__).resolve().parent / "interop" / "node"
READER = NODE_DIR / "node_modules" / "@sd-jwt" / "jwt-status-list" / "package.json"


@pytest.fixture(scope="session")
def node() -> str:
    """Node with the pinned packages; ``make test`` installs them with ``npm ci``."""
    path = require_tool("node")
    if not READER.is_file():
        message = (
            f"the pinned Node packages are not installed: run `make test` (npm ci in {NODE_DIR})"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def broker(tmp_path: Path, database_url: str) -> AsyncIterator[InteropBroker]:
    async with interop_broker(tmp_path, database_url, BROKER_STATUS_LIST_MAX_AGE="1") as served:
        yield served


def statuses(node: str, broker: InteropBroker, tokens: list[str]) -> dict[str, Any]:
    code, out = run_json([node, "status_list.mjs", broker.url, *tokens], cwd=NODE_DIR)
    assert code == 0, out
    assert "error" not in out, out
    return out


async def new_key(client: httpx.AsyncClient, broker: InteropBroker) -> dict[str, Any]:
    response = await client.post(
        "/v1/keys", headers=basic("billing-api", broker.billing_secret), json=KEY_REQUEST
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_invalid(node: str, broker: InteropBroker, token: str) -> float:
    """Seconds until the Node reader sees the key INVALID (fails past ``DEADLINE``)."""
    started = time.monotonic()
    while True:
        [seen] = (await asyncio.to_thread(statuses, node, broker, [token]))["keys"]
        if seen["status"] == 1:
            return time.monotonic() - started
        assert seen["status"] == 0
        assert time.monotonic() - started < DEADLINE, "not INVALID within the deadline"


async def test_node_reads_each_revocation(
    node: str,
    broker: InteropBroker,
) -> None:
    async with httpx.AsyncClient(base_url=broker.url, timeout=30) as client:
        keys = [await new_key(client, broker) for _ in range(4)]
        tokens = [k["key"] for k in keys]
        seen = await asyncio.to_thread(statuses, node, broker, tokens)
        assert [k["status"] for k in seen["keys"]] == [0, 0, 0, 0]
        assert [k["jti"] for k in seen["keys"]] == [k["jti"] for k in keys]
        assert len({(k["uri"], k["idx"]) for k in seen["keys"]}) == 4
        [(uri, listed)] = seen["lists"].items()
        assert uri.startswith(broker.url + "/v1/status-lists/")
        assert listed["contentType"] == "application/statuslist+jwt"
        assert listed["cacheControl"] == "public, max-age=1"
        assert listed["header"]["typ"] == "statuslist+jwt"
        assert listed["payload"]["ttl"] == 1
        assert listed["payload"]["status_list"]["bits"] == 1

        admin = bearer(broker.served.admin)
        revoked = await client.post(
            "/v1/admin/revocations",
            headers=admin,
            json={"selector": {"jti": keys[0]["jti"]}, "reason": "interop"},
        )
        assert revoked.status_code == 201, revoked.text
        await until_invalid(node, broker, tokens[0])

        holder = await client.post(
            "/v1/revoke",
            headers=basic("billing-api", broker.billing_secret),
            data={"token": tokens[1]},
        )
        assert holder.status_code == 200, holder.text
        await until_invalid(node, broker, tokens[1])

        later = await new_key(client, broker)
        revoked = await client.post(
            "/v1/admin/revocations",
            headers=admin,
            json={"selector": {"service": "billing-api"}, "reason": "interop"},
        )
        assert revoked.status_code == 201, revoked.text
        await until_invalid(node, broker, later["key"])
        after = await new_key(client, broker)
        final = await asyncio.to_thread(
            statuses, node, broker, [*tokens, later["key"], after["key"]]
        )
        assert [k["status"] for k in final["keys"]] == [1, 1, 1, 1, 1, 0]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
async def test_each_signing_alg_verifies(
    node: str, tmp_path: Path, database_url: str, alg: str
) -> None:
    """The list verifies with jose whatever BROKER_SIGNING_ALG signs it (SQLite only: the
    database plays no part in a signature)."""
    async with (
        interop_broker(tmp_path, database_url, BROKER_SIGNING_ALG=alg) as broker,
        httpx.AsyncClient(base_url=broker.url, timeout=30) as client,
    ):
        key = await new_key(client, broker)
        seen = await asyncio.to_thread(statuses, node, broker, [key["key"]])
        [listed] = seen["lists"].values()
        assert listed["header"]["alg"] == alg
        assert [k["status"] for k in seen["keys"]] == [0]
