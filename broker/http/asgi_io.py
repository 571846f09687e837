"""Reading a request and writing a JSON answer straight from ASGI, for the two hot routes.

``POST /v1/keys`` and ``POST /v1/introspect`` are what every service and every resource
service calls on every key and every check. Litestar's request object, dependency injection
and response pipeline cost about 60 µs a request there (measured: a bare ``@post`` handler
answers about 10,800 requests/s on this project's bench machine, a bare ``@asgi`` one
29,000), more than the rest of an introspection. So those two routes are bare ASGI handlers
that read only what they use (three headers, the client address, a bounded body) and write
their answer with one encode. ``broker.http.hot_routes`` serves them ahead of the router,
inside the app's access log and with its exception handlers (every error is the same RFC
9457 problem as elsewhere); ``broker.http.openapi_raw_routes`` documents them.

Form bodies follow RFC 6749 §3.1: a parameter given twice is refused, not silently picked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
from litestar.exceptions import (
    ClientException,
    MethodNotAllowedException,
    SerializationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from broker.errors import InvalidInput
from broker.http.strict_bodies import invalid_body

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 16
# RFC 6749 §5.1: an answer carrying a key must not be cached by anything on the way.
_JSON_HEADERS = [(b"content-type", JSON.encode()), (b"cache-control", b"no-store")]
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


class RawRequest:
    """The parts of an HTTP request the hot routes read, taken from the ASGI scope."""

    __slots__ = ("authorization", "client", "content_type", "method")

    def __init__(self, scope: Scope) -> None:
        self.method = str(scope.get("method", "GET"))
        self.authorization: str | None = None
        self.content_type = ""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                self.authorization = value.decode("latin-1")
            elif name == b"content-type":
                self.content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
        client = scope.get("client")
        self.client: str | None = client[0] if client else None

    def require_post(self) -> None:
        if self.method != "POST":
            raise MethodNotAllowedException(headers={"Allow": "POST"})


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, or 413 as soon as it grows past ``limit`` bytes (never buffered)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise ClientException("the client went away before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_json(body: bytes, type_: type[Any] = object) -> Any:
    """Decode and shape-check a JSON body: a malformed one is the app's usual 400
    ``malformed-body``, a wrongly shaped one its usual 400 ``invalid-request``."""

    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None
    except msgspec.DecodeError as exc:
        raise ClientException("the body is not valid JSON") from SerializationException(
            type(exc).__name__
        )


def shape_form(form: dict[str, str], type_: type[T]) -> T:
    """Hold form parameters to the struct the OpenAPI document publishes for them, so the
    limits it states (a key's length, say) are the limits enforced. Parameters the struct
    does not name are ignored, as RFC 6749 §3.1 asks."""
    try:
        return msgspec.convert(form, type_)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None


# ASCII digits only, and few enough that ``int`` never sees a long string.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


def whole_number(raw: str, *, low: int, high: int) -> int | None:
    """A whole number written on the wire (a form parameter, a header), or None.

    The one parser for numbers that arrive as text. ``str.isdigit`` and ``int`` are not a
    check: ``"²".isdigit()`` holds and ``int("²")`` raises (a 500 where it was trusted), and
    ``int`` quietly takes Arabic-Indic and full-width digits, ``" 3 "``, ``"+3"`` and
    ``"1_000"``. Only ``[0-9]{1,18}`` within ``[low, high]`` is a number here; anything else
    is the caller's 400.
    """
    if not _WHOLE_NUMBER.fullmatch(raw):
        return None
    value = int(raw)
    return value if low <= value <= high else None


def _strings(items: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    form: dict[str, str] = {}
    for key, value in items:
        if not isinstance(value, str):
            raise InvalidInput(f"parameter {str(key)[:40]!r} must be a string")
        name = str(key)
        if name in form:
            raise InvalidInput(f"parameter {name[:40]!r} is given more than once")
        form[name] = value
    return form


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """Parameters of an OAuth-style request: ``application/x-www-form-urlencoded`` (the
    RFCs' form) or a JSON object of strings."""
    if content_type == JSON:
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise InvalidInput("the body is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise InvalidInput("the body must be a JSON object")
        return _strings(decoded.items())
    if content_type in (FORM, ""):
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(
                text,
                keep_blank_values=True,
                strict_parsing=False,
                errors="strict",
                max_num_fields=MAX_FORM_FIELDS,
            )
        except UnicodeDecodeError:
            raise InvalidInput("the form is not valid UTF-8") from None
        except ValueError:
            raise InvalidInput(f"a form holds at most {MAX_FORM_FIELDS} parameters") from None
        return _strings(pairs)
    raise ClientException(
        f"send the parameters as {FORM} or {JSON}",
        status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    )


async def send_json(send: Send, status: int, payload: Any) -> None:
    encoded = _encoder.encode(payload)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*_JSON_HEADERS, (b"content-length", str(len(encoded)).encode())],
    }
    await send(start)
    body: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": encoded,
        "more_body": False,
    }
    await send(body)
