"""A small Flask masking service on Presidio's structured anonymizer: the design of the
API-driven masking article the broker grew from. A route takes a batch of records and the
fields the caller may see, and applies the per-field mask functions of a policy (here the
bench's: bench/peers/workload.py, as Presidio operators, bench/peers/presidio_engine.py).

It checks a static bearer token (``PEER_TOKEN``), as such a service would, and nothing
else: no key, no audit. Served by gunicorn:

    PEER_TOKEN=... bench/.venv-peers/bin/gunicorn -w 1 -b 127.0.0.1:8000 \
        --chdir <repo root> bench.peers.presidio_flask:app

    POST /mask  {"records": [{...}, ...], "granted": ["customer.id", ...]}
             -> {"records": [...]}
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from flask import Flask, abort, jsonify, request

from bench.peers.presidio_engine import PresidioMasker

app = Flask(__name__)
_TOKEN = os.environ.get("PEER_TOKEN", "").encode()
_SALT = os.environ.get("PEER_HASH_SALT", "bench-peer-hash-salt-32-bytes-ok").encode()
# One masker (analysis and operators) per set of granted fields, built on first use.
_MASKERS: dict[frozenset[str], PresidioMasker] = {}


@app.post("/mask")
def mask() -> Any:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
    if not _TOKEN or not hmac.compare_digest(given, _TOKEN):
        abort(401)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        abort(422)
    granted = frozenset(body.get("granted") or ())
    masker = _MASKERS.get(granted)
    if masker is None:
        masker = _MASKERS[granted] = PresidioMasker(granted, _SALT)
    return jsonify({"records": [masker.mask(record) for record in body["records"]]})


@app.get("/healthz")
def healthz() -> Any:
    return {"status": "ok"}
