"""Authlib, an independent and widely used Python OAuth library, against a served broker.

It does what a service team's code would do, with Authlib unchanged and no broker-specific
option: discover the broker (RFC 8414) through Authlib's own metadata fetch, get a key with
``client_credentials`` and RFC 9396 ``authorization_details`` under each client
authentication the metadata advertises, exchange a workload JWT (RFC 8693), check the key
with Authlib's RFC 9068 resource-server validator, introspect it (RFC 7662), revoke it
(RFC 7009), and see every refusal as Authlib's own ``OAuthError`` with the RFC's code.
Plain http is allowed because Authlib itself allows it on loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.base_client import BaseApp, OAuthError
from authlib.integrations.base_client.async_app import AsyncOAuth2Mixin
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator

from tests.support.interop import (
    AUDIENCE,
    DETAILS,
    JWT_TOKEN_TYPE,
    REFUSED_DETAILS,
    TOKEN_EXCHANGE,
    UNKNOWN_AUDIENCE,
    InteropBroker,
    client_key_pem,
    interop_broker,
)

pytestmark = [pytest.mark.slow]

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class BrokerApp(AsyncOAuth2Mixin, BaseApp):  # type: ignore[misc]
    """Authlib's own async OAuth 2 client app (what its Starlette integration is made of,
    without the web framework): it loads the server metadata from ``server_metadata_url``
    and takes the token endpoint from it."""

    client_cls = AsyncOAuth2Client


def app(
    broker: InteropBroker,
    client_id: str,
    secret: str | bytes | None,
    method: str,
    auth_methods: list[Any] | None = None,
) -> BrokerApp:
    return BrokerApp(
        None,
        client_id=client_id,
        client_secret=secret,
        server_metadata_url=broker.metadata_url,
        client_kwargs={
            "token_endpoint_auth_method": method,
            "revocation_endpoint_auth_method": method,
            "timeout": 30,
        },
        client_auth_methods=auth_methods,
    )


async def billing(broker: InteropBroker, method: str) -> BrokerApp:
    """billing-api's client app. For private_key_jwt, Authlib's PrivateKeyJWT with its
    defaults, which signs each endpoint's own URL as ``aud``; ``private_key_jwt_token``
    below uses the form its docs show, the token endpoint from discovery at every endpoint.
    RFC 7523 §3 allows both, and the broker accepts both."""
    if method == "private_key_jwt":
        return app(broker, "billing-api", client_key_pem(), method, [PrivateKeyJWT()])
    if method == "private_key_jwt_token":
        metadata = await app(broker, "billing-api", None, "none").load_server_metadata()
        signer = PrivateKeyJWT(metadata["token_endpoint"])
        return app(broker, "billing-api", client_key_pem(), "private_key_jwt", [signer])
    return app(broker, "billing-api", broker.billing_secret, method)


def customers(broker: InteropBroker) -> BrokerApp:
    return app(broker, AUDIENCE, broker.customers_secret, "client_secret_basic")


def session(client_app: BrokerApp) -> AsyncOAuth2Client:
    """A plain Authlib client with the app's credentials and client authentication, for the
    calls the app has no method for (introspection, revocation, other grants)."""
    method = client_app.client_kwargs["token_endpoint_auth_method"]
    client = AsyncOAuth2Client(
        client_id=client_app.client_id,
        client_secret=client_app.client_secret,
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        timeout=30,
    )
    for auth in client_app.client_auth_methods or ():
        client.register_client_auth_method(auth)
    return client


class BrokerKeyValidator(JWTBearerTokenValidator):  # type: ignore[misc]
    """Authlib's RFC 9068 validator with the one method it leaves to the resource server:
    the key set, fetched from the jwks_uri that discovery gave."""

    def __init__(self, jwks_uri: str, issuer: str, resource_server: str) -> None:
        super().__init__(issuer=issuer, resource_server=resource_server)
        self.jwks_uri = jwks_uri

    def get_jwks(self) -> dict[str, Any]:
        resp = httpx.get(self.jwks_uri, timeout=10)
        resp.raise_for_status()
        keys: dict[str, Any] = resp.json()
        return keys


def validate(metadata: dict[str, Any], token: str) -> Any:
    """The key as a resource server (customers-db) running Authlib's validator sees it."""
    validator = BrokerKeyValidator(metadata["jwks_uri"], metadata["issuer"], AUDIENCE)
    claims = validator.authenticate_token(token)
    validator.validate_token(claims, scopes=None, request=None)
    return claims


@pytest.fixture(params=[None, "RS256"], ids=["default-alg", "RS256"])
async def broker(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> AsyncIterator[InteropBroker]:
    env = {"BROKER_SIGNING_ALG": request.param} if request.param else {}
    async with interop_broker(tmp_path, database_url, **env) as served:
        yield served


@pytest.fixture
async def default_broker(tmp_path: Path, database_url: str) -> AsyncIterator[InteropBroker]:
    async with interop_broker(tmp_path, database_url) as served:
        yield served


async def test_discovery_validates_with_authlib(default_broker: InteropBroker) -> None:
    """Authlib's client fetches the metadata at the RFC 8414 path, and Authlib's own model
    of that document accepts every member it checks."""
    metadata = await (await billing(default_broker, "client_secret_basic")).load_server_metadata()
    document = {k: v for k, v in metadata.items() if k != "_loaded_at"}
    model = AuthorizationServerMetadata(document)
    for member in model.REGISTRY_KEYS:
        if member != "response_types_supported":
            getattr(model, f"validate_{member}")()
    # RFC 8414 §2 requires the member as a JSON array; with no authorization endpoint there
    # is no response type to list, so it is empty. Authlib's check tests it for truth and
    # takes the empty array for a missing member.
    with pytest.raises(ValueError, match="response_types_supported"):
        model.validate_response_types_supported()
    url = default_broker.url
    assert document["issuer"] == url
    assert document["token_endpoint"] == url + "/v1/token"
    assert document["introspection_endpoint"] == url + "/v1/introspect"
    assert document["revocation_endpoint"] == url + "/v1/revoke"
    assert document["jwks_uri"].startswith(url + "/")
    assert document["response_types_supported"] == []
    assert set(document["grant_types_supported"]) == {"client_credentials", TOKEN_EXCHANGE}
    methods = {"client_secret_basic", "client_secret_post", "private_key_jwt"}
    for endpoint in ("token", "introspection", "revocation"):
        assert set(document[f"{endpoint}_endpoint_auth_methods_supported"]) == methods
    assert document["authorization_details_types_supported"] == ["pii_access"]
    assert document["access_token_signing_alg_values_supported"] == ["ES256"]
    assert "none" not in document["token_endpoint_auth_signing_alg_values_supported"]
    old = httpx.get(url + "/.well-known/pii-broker", timeout=10)
    assert old.status_code == 200
    assert old.json() == document


async def test_client_credentials_key_is_validated_introspected_and_revoked(
    broker: InteropBroker,
) -> None:
    """A key from ``client_credentials`` + authorization_details, under each client
    authentication the metadata advertises, passes Authlib's RFC 9068 validator, introspects
    active for its audience and inactive once its own service revoked it."""
    for method in (
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "private_key_jwt_token",
    ):
        await _key_lifecycle(broker, method)


async def _key_lifecycle(broker: InteropBroker, method: str) -> None:
    client_app = await billing(broker, method)
    metadata = await client_app.load_server_metadata()
    token = await client_app.fetch_access_token(
        grant_type="client_credentials",
        audience=AUDIENCE,
        authorization_details=json.dumps(DETAILS),
    )
    assert token["token_type"] == "Bearer", method
    assert 0 < token["expires_in"] <= 300, method
    assert "refresh_token" not in token, method
    details = token["authorization_details"]
    assert [(d["type"], d["fields"], d["purpose"]) for d in details] == [
        ("pii_access", ["customer.email"], "billing")
    ], method
    key = token["access_token"]

    claims = validate(metadata, key)
    assert claims["client_id"] == "billing-api", method
    assert claims["aud"] in (AUDIENCE, [AUDIENCE]), method
    assert claims.header["typ"].lower() in ("at+jwt", "application/at+jwt"), method
    assert claims.header["alg"] in metadata["access_token_signing_alg_values_supported"]

    async with session(customers(broker)) as reader:
        seen = await reader.introspect_token(metadata["introspection_endpoint"], token=key)
        assert seen.status_code == 200, (method, seen.text)
        assert seen.json()["active"] is True, method
        assert seen.json()["client_id"] == "billing-api", method
    async with session(client_app) as owner:
        revoked = await owner.revoke_token(
            metadata["revocation_endpoint"], token=key, token_type_hint="access_token"
        )
        assert revoked.status_code == 200, (method, revoked.text)
    async with session(customers(broker)) as reader:
        seen = await reader.introspect_token(metadata["introspection_endpoint"], token=key)
        assert seen.status_code == 200, (method, seen.text)
        assert seen.json() == {"active": False}, method


async def test_token_exchange_of_a_workload_jwt(default_broker: InteropBroker) -> None:
    """RFC 8693 through Authlib's generic ``fetch_token``: the service's Kubernetes token as
    subject_token, the key validated by Authlib's RFC 9068 validator."""
    broker = default_broker
    client_app = await billing(broker, "client_secret_basic")
    metadata = await client_app.load_server_metadata()
    async with session(client_app) as client:
        token = await client.fetch_token(
            metadata["token_endpoint"],
            grant_type=TOKEN_EXCHANGE,
            subject_token=broker.workload.token(),
            subject_token_type=JWT_TOKEN_TYPE,
            audience=AUDIENCE,
            authorization_details=json.dumps(DETAILS),
        )
    assert token["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert token["token_type"] == "Bearer"
    claims = validate(metadata, token["access_token"])
    assert claims["client_id"] == "billing-api"
    assert claims["authorization_details"][0]["fields"] == ["customer.email"]


async def test_refusals_are_authlib_oauth_errors(default_broker: InteropBroker) -> None:
    """Each refusal reaches the caller as Authlib's ``OAuthError`` carrying the RFC's code,
    never as a token-shaped problem document."""
    broker = default_broker
    good = await billing(broker, "client_secret_post")
    metadata = await good.load_server_metadata()

    async def refused(client_app: BrokerApp, **params: Any) -> OAuthError:
        with pytest.raises(OAuthError) as caught:
            await client_app.fetch_access_token(
                **{
                    "grant_type": "client_credentials",
                    "audience": AUDIENCE,
                    "authorization_details": json.dumps(DETAILS),
                    **params,
                }
            )
        return caught.value

    for method in ("client_secret_basic", "client_secret_post"):
        wrong = app(broker, "billing-api", "pkbs_wrong-secret", method)
        assert (await refused(wrong)).error == "invalid_client", method
    assert (await refused(good, audience=UNKNOWN_AUDIENCE)).error == "invalid_target"
    details = json.dumps(REFUSED_DETAILS)
    assert (await refused(good, authorization_details=details)).error == (
        "invalid_authorization_details"
    )
    assert (await refused(good, authorization_details="[{")).error == (
        "invalid_authorization_details"
    )
    async with session(good) as client:
        with pytest.raises(OAuthError) as caught:
            await client.refresh_token(metadata["token_endpoint"], refresh_token="no-such-grant")
        assert caught.value.error == "unsupported_grant_type"
        with pytest.raises(OAuthError) as caught:
            await client.fetch_token(
                metadata["token_endpoint"],
                grant_type=TOKEN_EXCHANGE,
                subject_token="not-a-jwt",
                subject_token_type=JWT_TOKEN_TYPE,
                audience=AUDIENCE,
                authorization_details=json.dumps(DETAILS),
            )
        assert caught.value.error == "invalid_request"

    # Introspection and revocation hand Authlib's caller the response (RFC 7662 §2.3 and
    # RFC 7009 §2.2.1 errors are the token endpoint's): an OAuth error body, Basic challenge.
    async with session(app(broker, AUDIENCE, "pkbs_wrong", "client_secret_basic")) as bad:
        for endpoint, call in (
            ("introspection_endpoint", bad.introspect_token),
            ("revocation_endpoint", bad.revoke_token),
        ):
            resp = await call(metadata[endpoint], token="x.y.z")
            assert resp.status_code == 401, (endpoint, resp.text)
            assert resp.headers["content-type"].startswith("application/json"), endpoint
            assert resp.json()["error"] == "invalid_client", endpoint
            assert resp.headers["www-authenticate"].startswith("Basic"), endpoint
