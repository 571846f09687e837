"""The SDK's side of central masking: `KeyClient.mask_rules()` (fetched as the service,
cached for max-age, revalidated with If-None-Match), `MaskingRules` from the wire, and
`mask_records`' refusals (bad paths, no hash key, unknown fields) and its plan cache.

What `mask_records` answers for each case is in the shared table
(tests/test_masking_agreement.py); here, the behaviour around it, against a broker played
by an `httpx.MockTransport`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from broker.client import (
    BrokerUnavailable,
    HashKeyUnavailable,
    KeyClient,
    KeyDenied,
    MaskingRules,
    mask_records,
)
from broker.client.mask import mask_plan
from tests.support.masking_table import H_SSN_1, HASH_KEY, HASH_KEY_ID

BROKER = "https://broker.test"


def wire(version: str = "0123456789abcdef", *, key: bytes | None = HASH_KEY) -> dict[str, Any]:
    return {
        "version": version,
        "default": "redact",
        "fields": {
            "customer.email": "email-domain",
            "customer.ssn": "hash",
            "customer.name": "last:2",
        },
        "hash_key": None if key is None else base64.urlsafe_b64encode(key).decode().rstrip("="),
        "hash_key_id": "mk-" + hashlib.sha256(key or b"").hexdigest()[:12],
    }


class FakeBroker:
    """`GET /v1/mask/rules` as the broker answers it; records what it was asked."""

    def __init__(self, body: dict[str, Any], cache_control: str = "private, max-age=60") -> None:
        self.body = body
        self.cache_control = cache_control
        self.requests: list[httpx.Request] = []
        self.status: int | None = None  # force an answer (an outage, a refusal)
        self.delay = 0.0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        assert request.url.path == "/v1/mask/rules"
        if self.status is not None:
            problem = {"type": "https://pii-broker.dev/problems/forbidden", "title": "no"}
            return httpx.Response(self.status, json=problem)
        etag = f'"{self.body["version"]}"'
        headers = {"ETag": etag, "Cache-Control": self.cache_control}
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers=headers)
        return httpx.Response(200, json=self.body, headers=headers)


def client_for(fake: FakeBroker) -> KeyClient:
    http = httpx.AsyncClient(base_url=BROKER, transport=httpx.MockTransport(fake.handle))
    return KeyClient(
        BROKER, client_id="customers-db", client_secret="s3cret", http_client=http, retries=0
    )


def run(test: Callable[[], Any]) -> Any:
    return asyncio.run(test())


# --- fetching and caching ---------------------------------------------------------------------


def test_rules_are_fetched_as_the_service_and_parsed() -> None:
    fake = FakeBroker(wire())

    async def go() -> MaskingRules:
        async with client_for(fake) as client:
            return await client.mask_rules()

    rules = run(go)
    assert rules.version == "0123456789abcdef"
    assert rules.hash_key == HASH_KEY
    assert rules.hash_key_id == HASH_KEY_ID
    assert dict(rules.fields) == wire()["fields"]
    assert rules.complete
    request = fake.requests[0]
    assert request.headers["authorization"].startswith("Basic ")
    assert "if-none-match" not in request.headers
    # The hash key never shows in a repr (logs, tracebacks).
    assert base64.urlsafe_b64encode(HASH_KEY).decode().rstrip("=") not in repr(rules)
    assert str(HASH_KEY) not in repr(rules)


def test_cached_for_max_age_then_revalidated_with_the_etag() -> None:
    fake = FakeBroker(wire())

    async def go() -> None:
        async with client_for(fake) as client:
            first = await client.mask_rules()
            assert await client.mask_rules() is first  # max-age=60: no request
            assert len(fake.requests) == 1
            again = await client.mask_rules(refresh=True)  # asks, with the ETag
            assert again is first  # 304: the same object, and its compiled plans
            assert fake.requests[1].headers["if-none-match"] == '"0123456789abcdef"'
            fake.body = wire("fedcba9876543210")
            changed = await client.mask_rules(refresh=True)
            assert changed is not first
            assert changed.version == "fedcba9876543210"

    run(go)
    assert len(fake.requests) == 3


@pytest.mark.parametrize("cache_control", ["private, max-age=0", "no-store", "no-cache"])
def test_no_max_age_means_asking_every_time(cache_control: str) -> None:
    fake = FakeBroker(wire(), cache_control=cache_control)

    async def go() -> None:
        async with client_for(fake) as client:
            first = await client.mask_rules()
            for _ in range(3):
                assert await client.mask_rules() is first

    run(go)
    assert len(fake.requests) == 4
    assert all(r.headers.get("if-none-match") for r in fake.requests[1:])


def test_concurrent_callers_share_one_fetch() -> None:
    fake = FakeBroker(wire())
    fake.delay = 0.05

    async def go() -> list[MaskingRules]:
        async with client_for(fake) as client:
            return list(await asyncio.gather(*(client.mask_rules() for _ in range(8))))

    got = run(go)
    assert len(fake.requests) == 1
    assert all(rules is got[0] for rules in got)


def test_an_outage_serves_the_copy_up_to_max_stale_then_refuses() -> None:
    fake = FakeBroker(wire(), cache_control="private, max-age=0")

    async def go() -> None:
        async with client_for(fake) as client:
            first = await client.mask_rules()
            fake.status = 503
            assert await client.mask_rules() is first  # stale, within max_stale
            client._mask_rules.max_stale = 0.0  # the stale allowance is used up
            client._mask_rules.invalidate()
            with pytest.raises(BrokerUnavailable, match="masking rules"):
                await client.mask_rules()

    run(go)


def test_no_copy_and_no_broker_is_unavailable() -> None:
    fake = FakeBroker(wire())
    fake.status = 503

    async def go() -> None:
        async with client_for(fake) as client:
            with pytest.raises(BrokerUnavailable):
                await client.mask_rules()

    run(go)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_is_key_denied(status: int) -> None:
    fake = FakeBroker(wire())
    fake.status = status

    async def go() -> None:
        async with client_for(fake) as client:
            with pytest.raises(KeyDenied) as refused:
                await client.mask_rules()
            assert refused.value.status == status

    run(go)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"version": "v"},
        {"version": "", "fields": {}},
        {"version": "v", "fields": {"a": "scramble"}},
        {"version": "v", "fields": {}, "default": "last:65"},
        {"version": "v", "fields": {}, "hash_key": "not base64!"},
        {"version": "v", "fields": {}, "hash_key": "AAAA"},  # too short to be a key
        {**wire(), "hash_key_id": "mk-000000000000"},  # does not name the key given
    ],
)
def test_a_malformed_answer_is_unavailable(body: Any) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps(body), headers={"ETag": '"x"'})

    http = httpx.AsyncClient(base_url=BROKER, transport=httpx.MockTransport(handle))

    async def go() -> None:
        async with KeyClient(
            BROKER, client_id="c", client_secret="s", http_client=http, retries=0
        ) as client:
            with pytest.raises(BrokerUnavailable, match="malformed"):
                await client.mask_rules()

    run(go)


def test_rules_without_a_hash_key_from_the_wire() -> None:
    rules = MaskingRules.from_wire(wire(key=None) | {"hash_key_id": "mk-x"})
    assert rules.hash_key is None


# --- mask_records' refusals ------------------------------------------------------------------

RULES = MaskingRules.from_wire(wire())
NO_KEY = MaskingRules.from_wire(wire(key=None) | {"hash_key_id": None})


def test_no_hash_key_is_a_clear_error_naming_the_field() -> None:
    with pytest.raises(HashKeyUnavailable, match=r"customer\.ssn.*POST /v1/mask") as refused:
        mask_records([{"ssn": "123-45-6789"}], {"$.ssn": "customer.ssn"}, (), NO_KEY)
    assert isinstance(refused.value, ValueError)
    # Granted raw, the field needs no hash: the same rules work.
    done = mask_records(
        [{"ssn": "123-45-6789"}], {"$.ssn": "customer.ssn"}, ("customer.ssn",), NO_KEY
    )
    assert done.records == [{"ssn": "123-45-6789"}]
    # With the key, it is hashed as on the broker.
    done = mask_records([{"ssn": "123-45-6789"}], {"$.ssn": "customer.ssn"}, (), RULES)
    assert done.records == [{"ssn": H_SSN_1}]


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ({"$..email": "customer.email"}, r"\$\.\.email"),
        ({"email": "customer.email"}, "must start with"),
        ({"$.a": "customer.email", "$['a']": None}, "same location"),
        ({f"$.p{i}": None for i in range(201)}, "at most 200"),
        ({"$.a": 5}, "field name or null"),
        ({"$.a": "customer.unknown"}, "not a catalogued field"),
    ],
)
def test_bad_paths_are_value_errors_naming_them(paths: dict[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mask_records([{"a": 1}], paths, (), RULES)


def test_hand_made_rules_give_an_unlisted_field_the_default() -> None:
    local = MaskingRules(fields={"customer.email": "email-domain"}, default="last:1")
    done = mask_records([{"a": "xyz"}], {"$.a": "customer.unknown"}, (), local)
    assert done.records == [{"a": "**z"}]
    assert not local.complete
    assert local.version == "local"


def test_records_and_grant_shapes() -> None:
    with pytest.raises(ValueError, match="list of JSON objects"):
        mask_records({"a": 1}, {"$.a": None}, (), RULES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON object"):
        mask_records([{"a": 1}, [1]], {"$.a": None}, (), RULES)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one string"):
        mask_records([{"a": 1}], {"$.a": None}, "customer.email", RULES)
    with pytest.raises(ValueError, match="'mask' or 'pass'"):
        mask_records([{"a": 1}], {"$.a": None}, (), RULES, "keep")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": {"a": "scramble"}}, "unknown mask rule"),
        ({"fields": {"a": "last:65"}}, "at most 64"),
        ({"fields": {"": "redact"}}, "not a field name"),
        ({"fields": {}, "default": "keep"}, "unknown mask rule"),
        ({"fields": {}, "hash_key": b"short"}, "at least 16 bytes"),
    ],
)
def test_rules_are_checked_when_made(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskingRules(**kwargs)


# --- the plan cache --------------------------------------------------------------------------


def test_a_plan_is_compiled_once_per_paths_grant_and_default() -> None:
    rules = MaskingRules.from_wire(wire())
    paths = {"$.email": "customer.email", "$.ssn": "customer.ssn"}
    first = mask_plan(paths, ("customer.email",), rules)
    assert mask_plan(dict(paths), frozenset({"customer.email"}), rules) is first
    assert mask_plan(paths, ("customer.ssn",), rules) is not first
    assert mask_plan(paths, ("customer.email",), rules, "pass") is not first
    # Other rules (another version) never reuse it.
    assert mask_plan(paths, ("customer.email",), MaskingRules.from_wire(wire())) is not first


def test_untouched_values_are_shared_and_the_input_is_left_alone() -> None:
    address = {"city": "London", "lines": ["1 Analytical Way"]}
    record = {"address": address, "email": "ada@example.com", "other": {"x": 1}}
    rules = MaskingRules(fields={"customer.address": "redact", "customer.email": "redact"})
    done = mask_records(
        [record],
        {"$.address": "customer.address", "$.email": "customer.email"},
        ("customer.address",),
        rules,
        "pass",
    )
    out = done.records[0]
    assert out is not record
    assert out["address"] is address  # granted: not copied
    assert out == {"address": address, "email": "[redacted]", "other": {"x": 1}}
    assert record["email"] == "ada@example.com"


def test_records_of_many_shapes_in_one_batch_count_right() -> None:
    """Records of one shape share their operations; shapes alternate and outnumber the
    shape cache, and the counts are still per location."""
    rules = MaskingRules(fields={"customer.email": "email-domain"})
    records: list[dict[str, Any]] = []
    for i in range(70):
        records.append({f"k{i}": i, "email": "ada@example.com"})
        records.append({"email": "bob@example.org"})
    done = mask_records(records, {"$.email": "customer.email"}, (), rules)
    assert done.masked == {"customer.email": 140}
    assert done.unmapped == {"masked": 70, "passed": 0}
    assert done.records[0] == {"k0": "[redacted]", "email": "[redacted]@example.com"}
    assert done.records[1] == {"email": "[redacted]@example.org"}
    assert list(done.records[138]) == ["k69", "email"]
