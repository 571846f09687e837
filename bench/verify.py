"""Offline key verification speed: KeyVerifier.verify_sync against raw pyjwt decode.

Both verify the same EdDSA key with the same public key, on one core, in alternating
rounds (so CPU frequency drift hits both alike); the whole run is bounded to ~5 s.
KeyVerifier does strictly more (typ, header allowlist, authorization details, stats), and
gets its key from a JWKS served on loopback, fetched once before timing starts.

    .venv/bin/python bench/verify.py [--seconds 5] [--json PATH]

Target: at least 0.85 times raw pyjwt's rate.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._report import Row, write_rows
from broker.client import KeyVerifier, public_jwk

AUDIENCE = "customers-db"
KID = "bench-1"


def serve_jwks(jwks: dict[str, Any]) -> ThreadingHTTPServer:
    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=300")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def rate(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="total time budget")
    parser.add_argument("--json", default=None, help="also write the rows here (bench/all.py)")
    args = parser.parse_args()

    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    server = serve_jwks(
        {"keys": [{**public_jwk(public), "kid": KID, "alg": "EdDSA", "use": "sig"}]}
    )
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "billing-api",
        "client_id": "billing-api",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
        "authorization_details": [
            {
                "type": "pii_access",
                "fields": ["customer.email", "customer.name"],
                "purpose": "billing",
                "policy": "pol-1@1",
            }
        ],
    }
    token = jwt.encode(claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": KID})
    verifier = KeyVerifier(issuer, AUDIENCE)
    verifier.verify_sync(token)  # fetch the JWKS once, outside the timing

    def sdk() -> object:
        return verifier.verify_sync(token)

    require = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]

    def raw() -> object:
        return jwt.decode(
            token,
            public,
            algorithms=["EdDSA"],
            audience=AUDIENCE,
            issuer=issuer,
            options={"require": require},
        )

    rounds = 4
    slice_ = max(args.seconds, 0.4) / (2 * rounds)
    totals = {"sdk": [0, 0.0], "raw": [0, 0.0]}
    for _ in range(rounds):
        for name, fn in (("sdk", sdk), ("raw", raw)):
            n, dt = rate(fn, slice_)
            totals[name][0] += n
            totals[name][1] += dt
    server.shutdown()
    verifier.close()

    sdk_rate = totals["sdk"][0] / totals["sdk"][1]
    raw_rate = totals["raw"][0] / totals["raw"][1]
    print(f"{'verifier':<34}{'verifications/s':>16}")
    print(f"{'KeyVerifier.verify_sync':<34}{sdk_rate:>16,.0f}")
    print(f"{'pyjwt.decode (same key, raw)':<34}{raw_rate:>16,.0f}")
    print(f"{'ratio (target >= 0.85)':<34}{sdk_rate / raw_rate:>16.2f}")
    write_rows(
        args.json,
        [
            Row(
                "offline verification, one core (KeyVerifier vs raw pyjwt decode)",
                sdk_rate,
                raw_rate,
                "verifications/s",
                higher_is_better=True,
                target=">= 0.85x",
            )
        ],
    )


if __name__ == "__main__":
    main()
