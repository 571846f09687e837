"""A webhook receiver as an operator would write one, on 127.0.0.1, for the alert tests.

It checks every attempt's signature and its freshness, and keeps each alert once by its
idempotency key: an attempt for an ``id`` it already accepted is answered ``200`` and
dropped, as a receiver must when the broker retries after an answer it did not get in
time. It can refuse (``down``: ``503``), answer slowly after accepting (``slow``), or not
listen at all (``stop``, then ``start`` again on the same port), and it records what it
saw: every attempt, the accepted alerts in the order it accepted them, and any attempt
that arrived while another attempt of the same alert was still being answered.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from broker.incidents.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature

# A signed alert older than this (by its own ``sent_at``) is a replay to the receiver.
REPLAY_WINDOW = 300.0


@dataclass(frozen=True)
class Seen:
    """One attempt as it arrived."""

    at: float  # time.monotonic() on arrival
    alert_id: str
    idempotency_key: str
    signed: bool  # the signature verified and ``sent_at`` was fresh
    document: dict[str, Any]
    answer: int


@dataclass
class Receiver:
    secret: str
    down: bool = False  # refuse with 503
    slow: float = 0.0  # accept, then answer after this many seconds
    work: float = 0.0  # every answer takes this long (to widen races between replicas)
    port: int = 0
    attempts: list[Seen] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    accepted_at: dict[str, float] = field(default_factory=dict)
    overlapping: list[str] = field(default_factory=list)
    _in_flight: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [d["id"] for d in self.accepted]

    def attempts_of(self, alert_id: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.attempts if s.alert_id == alert_id]

    def _handle(self, headers: dict[str, str], body: bytes) -> int:
        signed = verify_signature(
            self.secret, body, headers.get(SIGNATURE_HEADER.lower(), ""), max_age=REPLAY_WINDOW
        )
        document = json.loads(body) if signed else {}
        alert_id = str(document.get("id", ""))
        with self._lock:
            overlapping = alert_id in self._in_flight
            if overlapping:
                self.overlapping.append(alert_id)
            self._in_flight.add(alert_id)
        try:
            time.sleep(self.work)
            with self._lock:
                fresh = False
                if not signed:
                    answer = 401
                elif alert_id in self.accepted_at:
                    answer = 200  # a retry of one already accepted: dropped
                elif self.down:
                    answer = 503
                else:
                    answer, fresh = 200, True
                    self.accepted.append(document)
                    self.accepted_at[alert_id] = time.monotonic()
                self.attempts.append(
                    Seen(
                        at=time.monotonic(),
                        alert_id=alert_id,
                        idempotency_key=headers.get(IDEMPOTENCY_HEADER.lower(), ""),
                        signed=signed,
                        document=document,
                        answer=answer,
                    )
                )
                # Only a fresh acceptance is slow: a retry of it is dropped at once.
                slow = self.slow if fresh else 0.0
        finally:
            with self._lock:
                if not overlapping:
                    self._in_flight.discard(alert_id)
        time.sleep(slow)
        return answer

    def start(self) -> None:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = state._handle(headers, body)
                try:
                    self.send_response(answer)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the broker stopped waiting (a slow answer)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until ``start``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def running_receiver(secret: str, **options: Any) -> Iterator[Receiver]:
    receiver = Receiver(secret, **options)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
