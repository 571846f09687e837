"""The example resource services in examples/ (Node with jose, Go with go-jose v2) against a
served broker, on both databases.

Each example runs as a team would run it: a subprocess on a loopback port, configured by its
environment as customers-db. The suite holds it to what issue 21 promises: a valid key gets
the record masked exactly as the Python SDK's ``mask_records`` masks it with the rules from
``GET /v1/mask/rules``; a revoked key is refused within a second, by the example itself
reading the broker's Token Status List; a key for another audience and a tampered key are
refused before the broker is asked. Keys and record values never reach the example's log.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.client import KeyVerifier
from broker.client.dpop import jwk_thumbprint, make_dpop_proof, public_jwk
from broker.client.mask import mask_records
from broker.client.masking_rules import MaskingRules
from tests.support.databases import DatabaseTemplates
from tests.support.examples import (
    OTHER_RESOURCE,
    PATHS,
    RECORD,
    RESOURCE,
    example_service,
    go_command,
    node_command,
    set_up,
    status_list_fetches,
    tampered,
    write_data,
)
from tests.support.served import served_broker

pytestmark = [pytest.mark.slow]

REVOCATION_DEADLINE = 1.0  # seconds: issue 21, "Done means"
MAX_AGE = 1.0  # BROKER_STATUS_LIST_MAX_AGE's default
BROKER_REFRESH = 1.0  # a revocation is in the broker's lists within a second
BURST = 20


@pytest.fixture(scope="session", params=["node", "go"])
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that starts one example (the Go one built once per session)."""
    if request.param == "node":
        return node_command()
    return go_command(tmp_path_factory.mktemp("go-example"))


def test_example_masks_as_the_sdk_and_follows_the_status_list(
    example: list[str], tmp_path: Path, database_url: str
) -> None:
    # Lists not cached (max-age=0): the bound is then the broker's own refresh, which the
    # deadline holds to "within a second"; caching is the next test's.
    with served_broker(tmp_path, database_url, BROKER_STATUS_LIST_MAX_AGE="0") as served:
        world = set_up(served)
        data = write_data(tmp_path / "records.json", {"c-1": RECORD})
        with example_service(example, world, data) as service:
            key = world.key()
            answer = service.get(key)
            assert answer.status == 200, answer.body

            # Exactly what the SDK makes of the same record with the broker's rules.
            wire = world.mask_rules()
            rules = MaskingRules.from_wire(wire)
            verifier = KeyVerifier(
                issuer=world.url,
                audience=RESOURCE,
                jwks_url=world.url + "/.well-known/jwks.json",
            )
            grant = verifier.verify_sync(key)
            expected = mask_records([RECORD], PATHS, grant, rules, default="mask")
            assert answer.body == expected.records[0]
            assert list(answer.body) == list(expected.records[0])  # member order kept
            assert answer.headers["x-masking-rules-version"] == wire["version"]
            # And what the central rules say, read independently of the SDK.
            masked = answer.body
            assert masked["id"] == "c-1"
            assert "address" not in masked
            assert masked["email"] == RECORD["email"]  # granted
            assert masked["phones"] == RECORD["phones"]  # granted
            assert masked["ssn"] == "*******1120"  # last:4
            assert masked["name"].startswith("hmac:")  # hash, joinable:
            assert masked["contacts"][0]["name"] != masked["name"]
            assert masked["contacts"][0]["email"] == "rui@example.org"
            assert masked["notes"] == "[redacted]"  # unmapped, default "mask"

            # A DPoP-bound key: presented with its proof, the broker checks the proof and
            # masks as for a bearer key; as a bearer key, or with a proof for another
            # request, it is refused (by the example, resp. by the broker: "not-active").
            holder = Ed25519PrivateKey.generate()
            bound = world.key(jkt=jwk_thumbprint(public_jwk(holder)))
            url = f"{service.url}/records/c-1"
            proof = make_dpop_proof(holder, "GET", url, bound)
            answer = service.get(bound, scheme="DPoP", dpop=proof)
            assert answer.status == 200, answer.body
            assert answer.body == expected.records[0]
            assert service.get(bound).body["reason"] == "dpop-required"
            elsewhere = make_dpop_proof(holder, "GET", url + "/other", bound)
            refused = service.get(bound, scheme="DPoP", dpop=elsewhere)
            assert (refused.status, refused.body["reason"]) == (401, "not-active"), refused.body

            # A key for another service, or one whose claims were changed, is refused by
            # the example's own checks.
            other = service.get(world.key(OTHER_RESOURCE))
            assert (other.status, other.body["reason"]) == (401, "audience"), other.body
            assert other.headers["www-authenticate"].startswith("Bearer error=")
            forged = service.get(tampered(key))
            assert (forged.status, forged.body["reason"]) == (401, "signature"), forged.body
            assert service.get(key[: key.rindex(".")] + ".AAAA").body["reason"] == "signature"
            missing = service.get(None)
            assert (missing.status, missing.body["reason"]) == (401, "missing"), missing.body

            # A revoked key: refused within a second by the example's own reading of the
            # status list (reason "revoked"; the broker's refusal would be "not-active").
            second = world.key()
            assert service.get(second).status == 200
            asked = time.monotonic()  # the moment the holder asks (revocation is its commit)
            world.revoke(second)
            elapsed = service.revoked_within(second, REVOCATION_DEADLINE, since=asked)
            assert elapsed < REVOCATION_DEADLINE
            assert service.get(key).status == 200  # the other key is untouched

        log = "".join(service.errors)
        assert key not in log
        assert second not in log
        for value in ("ana.silva", "Ana Silva", "078-05-1120", "Lisboa"):
            assert value not in log
        assert json.loads(log.splitlines()[0])["path"] == "/records/c-1"


def test_example_caches_the_status_list_for_its_max_age(
    example: list[str], tmp_path: Path, templates: DatabaseTemplates
) -> None:
    """With the broker's defaults (lists cached for max-age=1): the example fetches a list
    at most once per max-age however many requests it serves, still refuses a revoked key
    within max-age plus the broker's refresh (a second each), and refuses every key once no
    fresh list can be had. SQLite only: the database plays no part in a client's cache."""
    database_url = templates.fresh("sqlite", tmp_path)
    with served_broker(tmp_path, database_url) as served:
        world = set_up(served)
        data = write_data(tmp_path / "records.json", {"c-1": RECORD})
        with example_service(example, world, data) as service:
            key = world.key()
            unfetched = status_list_fetches(world)
            assert service.get(key).status == 200
            before = status_list_fetches(world)
            assert before > unfetched  # its first request fetched the list
            started = time.monotonic()
            for _ in range(BURST):
                assert service.get(key).status == 200
            took = time.monotonic() - started
            fetched = status_list_fetches(world) - before
            assert fetched <= math.ceil(took / MAX_AGE) + 1, (fetched, took)
            assert fetched < BURST

            spare = world.key()
            asked = time.monotonic()
            world.revoke(key)
            service.revoked_within(key, MAX_AGE + BROKER_REFRESH, since=asked)

            # No fresh list to be had (the broker is gone): once its copy is outdated the
            # example refuses a valid key for that reason (until then, masking fails: 502).
            assert service.get(spare).status == 200
            served.broker.stop()
            deadline = time.monotonic() + MAX_AGE + BROKER_REFRESH
            while (answer := service.get(spare)).status != 503:
                assert answer.status == 502, answer.body
                assert time.monotonic() < deadline, "still trusting an outdated status list"
                time.sleep(0.02)
            assert (answer.status, answer.body["reason"]) == (503, "status-list-unavailable")
