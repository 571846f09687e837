"""The CLI's HTTP client: one place that turns transport failures and RFC 9457 problems
into one-line errors with the right exit code, and never lets the token reach output."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import TYPE_CHECKING, Any

import broker
from broker.ops_cli.config import RemoteConfig
from broker.ops_cli.errors import ConfigError, Refused, Unavailable

if TYPE_CHECKING:
    # Imported when the first request is made: every ``broker`` command, ``serve`` and
    # ``scan`` included, would otherwise pay for it at start.
    import httpx

_HINTS = {
    401: (
        "check BROKER_TOKEN (or --token / the config file): the broker does not accept it "
        "(mistyped, replaced or expired, or its operator disabled)"
    ),
    403: None,
}
# The token is the one ``broker login`` stored: it ended early (signed out elsewhere, the
# provider no longer grants a role, the operator disabled).
_LOGIN_HINTS: dict[int, str | None] = {401: "your sign-in has ended; run broker login"}


def _problem_message(
    resp: httpx.Response, hints: dict[int, str | None] = _HINTS
) -> tuple[str, str | None]:
    """``title (status): detail`` and each listed error, or the status line for non-problems."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"{resp.status_code} {resp.reason_phrase}", None
    title = body.get("title") or resp.reason_phrase
    detail = body.get("detail") or ""
    lines = [f"{title} ({resp.status_code}): {detail}".rstrip(": ")]
    errors = body.get("errors")
    if isinstance(errors, list):
        for item in errors:
            if isinstance(item, dict):
                where = item.get("key") or item.get("field") or item.get("source") or ""
                what = item.get("message") or item.get("detail") or ""
                if f"{where}: {what}" not in detail:
                    lines.append(f"  - {where}: {what}".rstrip(": "))
            elif isinstance(item, str) and item not in detail:
                lines.append(f"  - {item}")
    hint = hints.get(resp.status_code)
    if hint:
        lines.append(f"hint: {hint}")
    problem_type = body.get("type")
    return "\n".join(lines), problem_type if isinstance(problem_type, str) else None


class BrokerHTTP:
    """A synchronous client for the operator API. ``transport`` is for tests only."""

    def __init__(self, config: RemoteConfig, transport: httpx.BaseTransport | None = None):
        import httpx

        self.config = config
        headers = {"User-Agent": f"pii-broker-cli/{broker.__version__}"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        verify: ssl.SSLContext | bool = True
        if config.ca_cert is not None:
            try:
                verify = ssl.create_default_context(cafile=str(config.ca_cert))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load CA certificate {config.ca_cert}: {type(exc).__name__}"
                ) from None
        self._client = httpx.Client(
            base_url=config.addr,
            headers=headers,
            timeout=config.timeout,
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> BrokerHTTP:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        answers: frozenset[int] = frozenset(),
    ) -> Any:
        """The JSON answer; ``answers``: error statuses whose JSON body the caller reads
        itself (an OAuth error such as ``authorization_pending``, a problem it words its own
        way) instead of having them raised."""
        import httpx

        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._client.request(method, path, params=clean, json=json)
        except httpx.TimeoutException:
            raise Unavailable(
                f"the broker at {self.config.addr} did not answer within {self.config.timeout:g}s"
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc).split("\n")[0] or type(exc).__name__
            raise Unavailable(f"cannot reach the broker at {self.config.addr}: {reason}") from None
        if resp.status_code in answers:
            try:
                return resp.json()
            except ValueError:
                raise Unavailable("the broker answered with something other than JSON") from None
        if resp.status_code >= 500:
            message, _ = _problem_message(resp)
            raise Unavailable(f"the broker failed: {message}")
        if resp.status_code >= 400:
            hints = _LOGIN_HINTS if self.config.from_login else _HINTS
            message, problem_type = _problem_message(resp, hints)
            raise Refused(message, resp.status_code, problem_type)
        if 300 <= resp.status_code < 400:
            raise ConfigError(
                f"the broker answered {resp.status_code} redirecting to "
                f"{resp.headers.get('location', '?')}; check the address"
            )
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise Unavailable("the broker answered with something other than JSON") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None, *, answers: frozenset[int] = frozenset()) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, answers=answers)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)
