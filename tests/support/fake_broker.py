"""A stand-in broker on real loopback HTTP for the SDK tests.

It serves a JWKS generated with `cryptography`, the metadata document, and issues keys
signed with pyjwt in the documented format, so the SDK is exercised over real sockets
against real signatures without importing any server code. The `test_client_*` modules
import `FakeBroker` from here; tests/test_fake_broker.py tests the stand-in itself.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.client import public_jwk

AUDIENCE = "customers-db"
SERVICE = "billing-api"
SECRET = "s3cret-for-tests"
WORKLOAD_TOKEN = "workload.jwt.token"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        return {**public_jwk(self.private), "kid": self.kid, "alg": self.alg, "use": "sig"}


@dataclass
class Canned:
    """One response to send instead of the normal one."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def new_key(alg: str = "EdDSA", kid: str | None = None) -> SigningKey:
    private: Any = (
        Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    )
    return SigningKey(kid or f"k-{uuid.uuid4().hex[:8]}", alg, private)


def b64(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeBroker:
    """The broker's public surface, on 127.0.0.1 with an OS-chosen port."""

    def __init__(self) -> None:
        self.keys: dict[str, SigningKey] = {}
        self.active: SigningKey = self.add_key()
        self.max_age: int | None = 300
        self.jwks_status = 200
        self.jwks_hits = 0
        self.key_requests: list[dict[str, Any]] = []
        self.key_headers: list[dict[str, str]] = []
        self.key_delay = 0.0
        self.canned: deque[Canned] = deque()
        self.workload_token = WORKLOAD_TOKEN
        self.revoked: set[str] = set()
        self.introspections = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.jwks_url = f"{self.issuer}/.well-known/jwks.json"
        self._thread: threading.Thread | None = None

    # --- keys and tokens ----------------------------------------------------------------

    def add_key(self, alg: str = "EdDSA", *, activate: bool = False) -> SigningKey:
        key = new_key(alg)
        self.keys[key.kid] = key
        if activate:
            self.active = key
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys.values()]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": SERVICE,
            "client_id": SERVICE,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "authorization_details": [
                {
                    "type": "pii_access",
                    "fields": ["customer.email", "customer.name"],
                    "purpose": "billing",
                    "policy": "pol-1@2",
                }
            ],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(
        self,
        claims: dict[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        key = key or self.active
        all_headers = {"typ": "at+jwt", "kid": key.kid, **(headers or {})}
        return jwt.encode(
            claims if claims is not None else self.claims(),
            key.private,
            algorithm=key.alg,
            headers=all_headers,
        )

    # --- HTTP -----------------------------------------------------------------------------

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        basic = "Basic " + base64.b64encode(f"{SERVICE}:{SECRET}".encode()).decode()
        return auth in (basic, f"Bearer {self.workload_token}")

    def _issue(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        ttl = int(body.get("ttl_seconds") or 300)
        clamped = ttl > 600
        ttl = min(ttl, 600)
        now = int(time.time())
        extra: dict[str, Any] = {}
        if body.get("jkt"):
            extra["cnf"] = {"jkt": body["jkt"]}
        if body.get("max_uses"):
            extra["max_uses"] = body["max_uses"]
        claims = self.claims(
            aud=body["audience"],
            iat=now,
            nbf=now,
            exp=now + ttl,
            authorization_details=[
                {
                    "type": "pii_access",
                    "fields": body["fields"],
                    "purpose": body["purpose"],
                    "policy": "pol-1@2",
                }
            ],
            **extra,
        )
        token = self.sign(claims)
        response = {
            "key": token,
            "jti": claims["jti"],
            "kid": self.active.kid,
            "audience": body["audience"],
            "fields": body["fields"],
            "purpose": body["purpose"],
            "expires_at": datetime.fromtimestamp(claims["exp"], UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }
        if clamped:
            response["ttl_clamped"] = True
        return 201, response, {}

    def _introspect(self, token: str) -> dict[str, Any]:
        self.introspections += 1
        try:
            kid = jwt.get_unverified_header(token)["kid"]
            key = self.keys[kid]
            claims = jwt.decode(
                token,
                key.private.public_key(),
                algorithms=[key.alg],
                audience=AUDIENCE,
                issuer=self.issuer,
            )
        except (jwt.PyJWTError, KeyError):
            return {"active": False}
        if claims["jti"] in self.revoked:
            return {"active": False}
        return {"active": True, **claims}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                content_type = "application/json"
                if status >= 400:
                    content_type = "application/problem+json"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _send_oauth_error(
                self, status: int, body: dict[str, Any], headers: dict[str, str]
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/.well-known/jwks.json":
                    with fake._lock:
                        fake.jwks_hits += 1
                    if fake.jwks_status != 200:
                        self._send(fake.jwks_status, {"title": "down"})
                        return
                    headers = {}
                    if fake.max_age is not None:
                        headers["Cache-Control"] = f"public, max-age={fake.max_age}"
                    self._send(200, fake.jwks(), headers)
                elif self.path == "/.well-known/pii-broker":
                    base = fake.issuer
                    self._send(
                        200,
                        {
                            "issuer": base,
                            "jwks_uri": f"{base}/.well-known/jwks.json",
                            "keys_endpoint": f"{base}/v1/keys",
                            "introspection_endpoint": f"{base}/v1/introspect",
                            "revocation_endpoint": f"{base}/v1/revoke",
                        },
                    )
                else:
                    self._send(404, {"type": "about:blank", "title": "Not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if not fake._authorized(headers):
                    problem = {
                        "type": "https://pii-broker.dev/problems/unauthenticated",
                        "title": "Authentication required",
                        "status": 401,
                        "detail": "unknown credentials",
                    }
                    if self.path in ("/v1/introspect", "/v1/revoke", "/v1/token"):
                        # The OAuth endpoints answer an OAuth error (docs/api.md).
                        self._send_oauth_error(
                            401,
                            {"error": "invalid_client", "error_description": problem["detail"]}
                            | problem,
                            {"WWW-Authenticate": 'Basic realm="pii-broker"'},
                        )
                        return
                    self._send(401, problem)
                    return
                if self.path == "/v1/keys":
                    with fake._lock:
                        fake.key_requests.append(json.loads(raw))
                        fake.key_headers.append(headers)
                        canned = fake.canned.popleft() if fake.canned else None
                    if fake.key_delay:
                        time.sleep(fake.key_delay)
                    if canned is not None:
                        self._send(canned.status, canned.body, canned.headers)
                        return
                    self._send(*fake._issue(json.loads(raw)))
                elif self.path in ("/v1/introspect", "/v1/revoke"):
                    token = parse_qs(raw.decode())["token"][0]
                    if self.path == "/v1/revoke":
                        with suppress(jwt.PyJWTError):
                            fake.revoked.add(
                                jwt.decode(token, options={"verify_signature": False})["jti"]
                            )
                        self._send(200, None)
                    else:
                        self._send(200, fake._introspect(token))
                else:
                    self._send(404, {"type": "about:blank", "title": "Not found"})

        return Handler

    def start(self) -> FakeBroker:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: later connections are refused."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@contextmanager
def running_broker() -> Iterator[FakeBroker]:
    fake = FakeBroker().start()
    try:
        yield fake
    finally:
        if fake._thread is not None:
            fake.stop()


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    fake = FakeBroker()
    url = fake.issuer
    fake._server.server_close()
    return url
