"""Key and issuer helpers the identity tests share.

``Signer`` holds a real key pair and signs real tokens; ``JwksServer`` serves a key set on
loopback over real HTTP, counting fetches so the cache's behaviour can be asserted.
"""

from __future__ import annotations

import json
import threading
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

_ALG = {"ed25519": "EdDSA", "rsa": "RS256", "ec": "ES256"}


@lru_cache(maxsize=16)
def _private_key(kind: str, slot: str) -> Any:
    """Key generation (RSA especially) is slow: one key per (kind, slot) per test run."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (must be refused)
    return ec.generate_private_key(ec.SECP256R1())


class Signer:
    def __init__(self, kind: str = "ed25519", kid: str = "k1", slot: str | None = None) -> None:
        self.kind = kind
        self.kid = kid
        self.alg = _ALG.get(kind, "RS256")
        self.private = _private_key(kind, slot or kid)
        algo = jwt.get_algorithm_by_name(self.alg)
        self.jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        self.jwk["kid"] = kid

    def private_jwk(self) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algo.to_jwk(self.private))
        data["kid"] = self.kid
        return data

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self.jwk)]}

    def token(
        self,
        *,
        iss: str,
        aud: str | list[str],
        sub: str,
        exp_in: int = 300,
        nbf_in: int = -5,
        extra: dict[str, Any] | None = None,
        omit: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        alg: str | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": iss,
            "aud": aud,
            "sub": sub,
            "iat": now,
            "nbf": now + nbf_in,
            "exp": now + exp_in,
            **(extra or {}),
        }
        for name in omit:
            claims.pop(name, None)
        head = {"kid": self.kid, **(headers or {})}
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=head)


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving ``doc``; ``hits`` counts GETs."""

    def __init__(self, doc: dict[str, Any], cache_control: str | None = "max-age=600") -> None:
        self.doc = doc
        self.cache_control = cache_control
        self.status = 200
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                body = json.dumps(server.doc).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if server.cache_control:
                    self.send_header("Cache-Control", server.cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
