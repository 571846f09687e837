"""The real client address behind a reverse proxy, taken only from proxies we trust.

Source CIDRs in policies, usage reports, rule windows and source blocks all key on the
client address, so a forwarded address is a security decision: ``X-Forwarded-For`` is read
only when the connection comes from an address in ``BROKER_FORWARDED_ALLOW_IPS`` (empty by
default: trust no one). The header is walked from the right, skipping trusted proxies; the
first address that is not one of them is the client, since everything to its left was
written by the client itself and proves nothing. An entry that is not an IP address leaves
the request without a client address, which no source CIDR admits.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """Addresses whose forwarding headers are believed; ``everyone`` for ``*``."""

    networks: tuple[Network, ...] = ()
    everyone: bool = False

    @classmethod
    def parse(cls, spec: str) -> TrustedProxies:
        """``"10.0.0.0/8, 192.168.1.7"`` or ``"*"``; ``ValueError`` names a bad entry."""
        entries = [part.strip() for part in spec.split(",") if part.strip()]
        if "*" in entries:
            return cls(everyone=True)
        networks: list[Network] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def trusts(self, host: str) -> bool:
        if self.everyone:
            return True
        address = _address(host)
        if address is None:
            return False
        return any(address.version == n.version and address in n for n in self.networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_client(values: Iterable[str], trusted: TrustedProxies) -> str | None:
    """The client named by ``X-Forwarded-For`` header values (in order of arrival)."""
    hops = [hop.strip() for value in values for hop in value.split(",") if hop.strip()]
    if not hops:
        return None
    chosen = hops[0]
    for hop in reversed(hops):
        if not trusted.trusts(hop):
            chosen = hop
            break
    address = _address(chosen)
    return None if address is None else str(address)


def _header(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]


def proxy_headers_middleware(app: ASGIApp, trusted: TrustedProxies) -> ASGIApp:
    """Rewrite ``client`` (and ``scheme``) from the forwarding headers of trusted peers."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != ScopeType.HTTP or not client or not trusted.trusts(client[0]):
            await app(scope, receive, send)
            return
        updated: dict[str, Any] = dict(scope)
        forwarded_for = _header(scope, b"x-forwarded-for")
        if forwarded_for:
            host = forwarded_client(forwarded_for, trusted)
            updated["client"] = (host, 0) if host is not None else None
        proto = _header(scope, b"x-forwarded-proto")
        if proto:
            value = proto[-1].split(",")[-1].strip().lower()
            if value in ("http", "https"):
                updated["scheme"] = value
        await app(cast(Scope, updated), receive, send)

    return middleware
