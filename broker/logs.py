"""Structured JSON logs. Nothing secret is passed to a logger; this module adds a last net.

Loggers receive key ids and fingerprints, never tokens. As a second line of defence the
redaction processor masks anything shaped like one of our credentials or a JWT.

A record logged on every request (the access log) goes through ``HotEvent`` instead: the
same JSON line, redacted the same way, rendered directly and handed to the same handler.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

import structlog

from broker.credentials import CREDENTIAL_PATTERN

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
# Each pattern above starts with one of these literals: text without any has nothing to
# mask, and most text (paths, event names, ids) is told so by one scan instead of three.
_MAYBE_SECRET = re.compile(r"pkb|eyJ|(?i:bearer|basic)")


def redact(text: str) -> str:
    if _MAYBE_SECRET.search(text) is None:
        return text
    text = CREDENTIAL_PATTERN.sub("[credential]", text)
    text = _JWT.sub("[jwt]", text)
    return _BEARER.sub(r"\1 [redacted]", text)


def _redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def configure_logging(level: str = "INFO") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_processor,
            structlog.processors.JSONRenderer(),
        ],
    )
    global _handler
    handler = _JsonLines(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _handler = handler
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Database drivers log statements with their parameters at DEBUG: audit details, key
    # ids, hashes. Never below WARNING, whatever the broker's own level.
    for name in ("sqlalchemy.engine", "sqlalchemy.pool", "aiosqlite", "asyncpg"):
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


# --- hot events ---------------------------------------------------------------------------


class _JsonLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure_logging`` installs: structlog's records, and the lines
    hot events render themselves, in order, on one stream under one lock.

    Hot lines written on an event loop are gathered and written together once the loop has
    run the callbacks that were ready: under load one ``write`` per turn of the loop instead
    of one per request. A write is a system call that lets go of the GIL, and with the SQLite
    writer thread waiting for it the loop's thread then waited to get it back: one more
    context switch per issued key, most of what an access line still cost. A line waits at
    most that turn (a process killed outright loses the lines of the turn it was in, as it
    loses the requests of that turn); any other record, and ``flush`` (``logging.shutdown``
    at exit), writes what is gathered first.
    """

    MAX_GATHERED = 256

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._gathered: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def write_line(self, line: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.acquire()
        try:
            self._gathered.append(line)
            if loop is None or len(self._gathered) >= self.MAX_GATHERED:
                self._write_gathered()
            elif self._flush_on is not loop:
                self._flush_on = loop
                loop.call_soon(self._turn_ended)
        finally:
            self.release()

    def _turn_ended(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            self._write_gathered()
        finally:
            self.release()

    def _write_gathered(self) -> None:
        """Write what is gathered (the handler's lock held)."""
        if not self._gathered:
            return
        lines, self._gathered = "".join(self._gathered), []
        try:
            self.stream.write(lines)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: never fail a request
            pass

    def emit(self, record: logging.LogRecord) -> None:
        self._write_gathered()  # the handler's lock is held by ``handle``
        super().emit(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_gathered()
        finally:
            self.release()
        super().flush()


_handler: _JsonLines | None = None
_root = logging.getLogger()


def _json_string(value: str) -> str:
    # What the JSON renderer writes for a string value once the redaction processor has
    # run: json.dumps escapes with this same function (ensure_ascii, the default).
    return encode_basestring_ascii(redact(value))  # type: ignore[no-any-return]


def _json_value(value: object) -> str:
    if isinstance(value, str):
        return _json_string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)  # as json.dumps: 1.5, 1e-05, NaN
    return _json_string(repr(value))  # the renderer's fallback is repr() too


class _Clock:
    """``TimeStamper(fmt="iso", utc=True)``'s text, with the date and time of day formatted
    once per second rather than through a datetime on every line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = int((now - second) * 1_000_000)
        # isoformat() leaves out a zero fraction, and so does this
        return f"{self._prefix}.{micros:06d}Z" if micros else self._prefix + "Z"


_clock = _Clock()


class HotEvent:
    """One event logged on every request, always with the same keys (the access log).

    Through structlog and the standard library such a line cost about 60 us of CPU, as much
    as a fifth of an issued key: two LogRecords, the caller's frame looked up, every string
    value (the constant ones too) run through the three redaction patterns, a JSON encoder
    set up per line. ``log`` writes the line such a record would have been, rendered from a
    template made once: the ``fields`` in their order, then ``event``, ``level``, ``logger``
    and ``timestamp``; every string value redacted by the same ``redact`` before it is
    encoded; and it hands the line to the root handler in one call, under its lock.

    It takes that path only while the broker's own configuration is in place (the root
    handler ``configure_logging`` installed, alone, and nothing attached to this logger).
    Otherwise, as when a test captures records or an application embeds the broker, the
    event goes through structlog like any other, so a configured handler still sees it.
    Hot events carry no bound context variables; the broker binds none.
    """

    def __init__(
        self, logger: str, event: str, fields: tuple[str, ...], level: int = logging.INFO
    ) -> None:
        self._logger = logging.getLogger(logger)
        self._structured = get_logger(logger)
        self._level = level
        self._event = event
        self._fields = fields
        # A %-template: its literal parts escaped, one %s per value and one for the time.
        keys = "".join(encode_basestring_ascii(key).replace("%", "%%") + ": %s, " for key in fields)
        constant = (
            f'"event": {_json_string(event)}'
            f', "level": {_json_string(logging.getLevelName(level).lower())}'
            f', "logger": {_json_string(logger)}'
        )
        self._template = "{" + keys + constant.replace("%", "%%") + ', "timestamp": "%s"}\n'

    def enabled(self) -> bool:
        """Whether a line would be written: asked first, so a quiet broker builds none."""
        return self._logger.isEnabledFor(self._level)

    def log(self, *values: str | int | float | None) -> None:
        """Log the event with ``values`` for its ``fields``, in their order."""
        handler = _handler
        handlers = _root.handlers
        if (
            handler is None
            or len(handlers) != 1
            or handlers[0] is not handler
            or self._logger.handlers
            or self._logger.filters
            or not self._logger.propagate
        ):
            fields = dict(zip(self._fields, values, strict=True))
            self._structured.log(self._level, self._event, **fields)
            return
        handler.write_line(self._template % (*map(_json_value, values), _clock.now()))
