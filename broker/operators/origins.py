"""Where an operator comes from and how it signed in, in the words every surface uses: the
API's operator answers (a machine's binding, summarised), the console's pages and header,
the CLI's tables, and the audit trail's actor column.

One module so the console, ``broker operator`` and ``broker audit`` say the same thing:
``alice (oidc)``, ``ci-policies (machine: org/repo@refs/heads/main run 123)``. What is
shown of a machine's binding is public: issuer, audience, subject, bound claims, a JWKS
URL and each inline key by kid and RFC 7638 thumbprint, never a key's material.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.custody.jwk import thumbprint

# How each origin signs in, as a sentence's end ("alice signs in through Okta").
MACHINE_SIGN_IN = "machine: exchanges its workload JWT"


def signs_in(origin: str, display_name: str) -> str:
    """How an operator of this origin signs in, for the places a token would be shown."""
    if origin == "oidc":
        return f"signs in through {display_name}"
    if origin == "machine":
        return MACHINE_SIGN_IN
    return "pasted token"


def session_how(session_via: str, display_name: str) -> str:
    """How a console session was opened: ``pasted token`` or the provider's name."""
    return display_name if session_via == "oidc" else "pasted token"


def _thumbprint(jwk: Any) -> str | None:
    try:
        return thumbprint(jwk) if isinstance(jwk, dict) else None
    except (KeyError, TypeError, ValueError):
        return None  # a key type we do not fingerprint: named by its kid only


def binding_summary(binding: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A machine's binding as it may be shown to any operator: no key material."""
    if not binding:
        return None
    jwks = binding.get("jwks")
    keys = jwks.get("keys", []) if isinstance(jwks, dict) else []
    claims = binding.get("claims")
    return {
        "kind": binding.get("kind", "jwt"),
        "issuer": binding.get("issuer"),
        "audience": binding.get("audience"),
        "subject": binding.get("subject"),
        "claims": dict(claims) if isinstance(claims, dict) else {},
        "algorithms": list(binding.get("algorithms") or []),
        "jwks_url": binding.get("jwks_url"),
        "keys": [
            {"kid": k.get("kid"), "thumbprint": _thumbprint(k)} for k in keys if isinstance(k, dict)
        ],
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def machine_label(via: Mapping[str, Any]) -> str:
    """What identified a machine in one line: ``org/repo@refs/heads/main run 123`` for a
    GitHub- or GitLab-shaped token, else its subject (a Kubernetes service account)."""
    repository = _text(via.get("repository") or via.get("project_path"))
    ref = _text(via.get("ref"))
    run = _text(via.get("run_id") or via.get("pipeline_id"))
    if repository:
        label = repository + (f"@{ref}" if ref else "")
    else:
        label = _text(via.get("sub") or via.get("subject"))
    if run:
        label = f"{label} run {run}" if label else f"run {run}"
    return label


def via_label(via: Any) -> str | None:
    """An audit event's ``details.via`` in a few words (``oidc``, ``token``, ``machine:
    org/repo@ref run 123``); ``None`` when the event has none (a job, the host's CLI)."""
    if not isinstance(via, Mapping):
        return None
    origin = _text(via.get("origin"))
    if origin == "machine":
        label = machine_label(via)
        return f"machine: {label}" if label else "machine"
    return origin or None
