"""What ``broker scan`` looks for, and how each candidate is confirmed and masked.

Speed comes from never running an expensive expression over the whole text. Each kind has
a cheap prefilter that CPython's regex engine runs at memchr-like speed because it starts
with a literal: ``pkb`` for our credentials, ``eyJ`` for JWS, ``@`` for emails, and, on a
one-byte-per-byte *class* translation of the text (digits and number separators become
``0``, capitals ``A``), a run of eleven ``0`` for phone numbers, SSNs and cards, and
``AA00`` for IBANs. Only the few places a prefilter finds are matched precisely and then
validated (Luhn, mod-97, SSN ranges, NANP rules, our checksums and key header), so a
random number that merely looks like a card does not stop a build.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from enum import StrEnum
from typing import Any

from broker import credentials


class Kind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    SSN = "ssn"
    IBAN = "iban"
    CARD = "card"
    OPERATOR_TOKEN = "operator_token"  # noqa: S105 (a kind name)
    CLIENT_SECRET = "client_secret"  # noqa: S105 (a kind name)
    ISSUED_KEY = "issued_key"


PII_KINDS = frozenset({Kind.EMAIL, Kind.PHONE, Kind.SSN, Kind.IBAN, Kind.CARD})
CREDENTIAL_KINDS = frozenset({Kind.OPERATOR_TOKEN, Kind.CLIENT_SECRET, Kind.ISSUED_KEY})
ALL_KINDS = PII_KINDS | CREDENTIAL_KINDS

# --- class translation --------------------------------------------------------------------

# Characters a printed number is made of, besides digits. '/' is left out on purpose: with
# it every "2026/03/04" date would need a look, for one rare phone format.
NUMBER_SEPARATORS = b" -.()+"
_DIGITS = b"0123456789"
_NOT_DIGITS = bytes(b for b in range(256) if b not in _DIGITS)


def _class_table() -> bytes:
    """Digits become ``0``, number separators ``-``, capitals ``A``, anything else ``x``."""
    table = bytearray(b"x" * 256)
    for b in _DIGITS:
        table[b] = ord("0")
    for b in NUMBER_SEPARATORS:
        table[b] = ord("-")
    for b in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[b] = ord("A")
    return bytes(table)


CLASS_TABLE = _class_table()

# Prefilters. Each starts with a literal so the engine skips ahead with a fast search.
CREDENTIAL_PREFILTER = re.compile(rb"pkb[os]_[0-9A-Za-z]{49}")
JWS_PREFILTER = re.compile(
    rb"eyJ[A-Za-z0-9_-]{2,4000}\.eyJ[A-Za-z0-9_-]{2,40000}\.[A-Za-z0-9_-]{40,400}"
)
AT_SIGN = re.compile(rb"@")
# On the class string. Almost every number we look for ends in a group of four or more
# digits with at least eleven number characters up to there (the shortest, an SSN, is
# "123-45-6789"); dates, times, IP addresses and version numbers never do, and they are
# most of the numbers in a log. The few that end in pairs ("06 12 34 56 78", "+33 6 12 34
# 56 78") have their own prefilter. Bare runs of 10 or 13 digits are never candidates: in
# logs they are epoch times in seconds and milliseconds (on every line of many JSON logs),
# far more often than a phone number or one of the obsolete 13-digit Visa cards.
NUMBER_END = re.compile(rb"0000(?!0)(?<=[-0]{11})(?<!(?<![-0])0{13})")
NUMBER_PAIRS = re.compile(rb"0-00-00-00-00")
IBAN_RUN = re.compile(rb"AA00[A0-]{11,}")
# How far before its last digit a printed number may start ("+1 (415) 555-2671 ...").
NUMBER_REACH = 32

# --- precise matchers (run only where a prefilter pointed) --------------------------------

_WORD = rb"0-9A-Za-z_"
_START = rb"(?<![" + _WORD + rb"])(?<![0-9][.-])"
_END = rb"(?![" + _WORD + rb"])(?![.-][0-9])"

NUMBER = re.compile(
    _START
    + rb"(?:"
    # Cards: 4-4-4-1..7 (13-19 digits, also unseparated) and Amex 4-6-5.
    + rb"(?P<card>[0-9]{4}(?P<cs>[ -]?)[0-9]{4}(?P=cs)[0-9]{4}(?P=cs)[0-9]{1,7}"
    + rb"|[0-9]{4}(?P<as>[ -]?)[0-9]{6}(?P=as)[0-9]{5})"
    # US SSN, printed with dashes.
    + rb"|(?P<ssn>[0-9]{3}-[0-9]{2}-[0-9]{4})"
    # E.164: a plus, then 8 to 15 digits, optionally grouped.
    + rb"|(?P<e164>\+[1-9][0-9]{0,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6})"
    # North American: (555) 234-5678, 555-234-5678, 555.234.5678, 555 234 5678.
    + rb"|(?P<nanp>\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .-][0-9]{4}"
    + rb"|[2-9][0-9]{2}(?P<ns>[ .-])[2-9][0-9]{2}(?P=ns)[0-9]{4})"
    # National numbers with a trunk 0 and one kind of separator: 020 7946 0958,
    # 030 12345678, 06 12 34 56 78, 06.12.34.56.78.
    + rb"|(?P<trunk>0[1-9][0-9]{0,3}(?P<ts>[ .])[0-9]{2,8}(?:(?P=ts)[0-9]{2,8}){0,3})"
    + rb")"
    + _END
)

EMAIL = re.compile(
    rb"(?<![A-Za-z0-9._%+-])"
    rb"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"
    rb"@"
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    rb"(?P<tld>[A-Za-z]{2,24})"
    rb"(?![A-Za-z0-9-])"
)
# "logo@2x.png" is a file name, not an address.
_FILE_SUFFIXES = frozenset(
    b"png jpg jpeg gif svg webp ico css js mjs map json txt log py rb go java ts tsx".split()
)

IBAN = re.compile(rb"(?<![0-9A-Za-z])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4})*(?: ?[A-Z0-9]{1,4})?")

# IBAN lengths by country (ISO 13616 registry, the countries most often seen).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22,
    "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27,
    "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip

_KID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # an RFC 7638 SHA-256 thumbprint, as we name keys
OUR_ALGS = frozenset({"EdDSA", "ES256"})
_SIGNATURE_CHARS = 86  # 64-byte EdDSA and ES256 signatures, base64url without padding

# --- validators ---------------------------------------------------------------------------


def digits_of(raw: bytes) -> bytes:
    return raw.translate(None, _NOT_DIGITS)


def luhn_ok(digits: bytes) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_network(digits: bytes) -> str | None:
    """The issuer network by IIN range and length; None for numbers no network issues."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[:1] == b"4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if (four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649) and 16 <= n <= 19:
        return "discover"
    if two == 62 and 16 <= n <= 19:
        return "unionpay"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (two in (36, 38) or 300 <= int(digits[:3]) <= 305) and 14 <= n <= 19:
        return "diners"
    return None


def card_ok(raw: bytes) -> bool:
    digits = digits_of(raw)
    return 13 <= len(digits) <= 19 and card_network(digits) is not None and luhn_ok(digits)


def ssn_ok(raw: bytes) -> bool:
    """Numbers the SSA never issues: area 000, 666 or 900-999, group 00, serial 0000."""
    area, group, serial = raw[:3], raw[4:6], raw[7:11]
    return (
        area not in (b"000", b"666") and area[:1] != b"9" and group != b"00" and serial != b"0000"
    )


def e164_ok(raw: bytes) -> bool:
    return 8 <= len(digits_of(raw)) <= 15


def trunk_ok(raw: bytes) -> bool:
    return 10 <= len(digits_of(raw)) <= 12


def iban_candidate(raw: bytes) -> str | None:
    """The compact IBAN if the printed text holds a valid one (length and mod-97)."""
    compact = raw.replace(b" ", b"").decode("ascii")
    length = IBAN_LENGTHS.get(compact[:2])
    if length is None or len(compact) < length:
        return None
    if len(compact) > length:
        # A longer run is a different thing (an IBAN is never followed by more of itself).
        return None
    return compact if iban_mod97_ok(compact) else None


def iban_mod97_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def email_ok(tld: bytes) -> bool:
    return tld.lower() not in _FILE_SUFFIXES


def credential_kind(token: str) -> Kind | None:
    if credentials.well_formed(token, credentials.OPERATOR_TOKEN_PREFIX):
        return Kind.OPERATOR_TOKEN
    if credentials.well_formed(token, credentials.CLIENT_SECRET_PREFIX):
        return Kind.CLIENT_SECRET
    return None


def _b64json(segment: bytes) -> Any:
    padded = segment + b"=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def our_key_claims(token: bytes, issuer: str | None = None) -> dict[str, Any] | None:
    """The claims of a JWS that looks like a key we issued, else None.

    Ours means: header exactly ``{alg, typ: at+jwt, kid}`` with one of our algorithms and a
    thumbprint-shaped kid, a signature of the length our algorithms make, and claims with
    ``iss``, ``jti`` and a ``pii_access`` authorization detail. The signature is not checked:
    a scanner has no keys, and a leaked key is worth reporting whoever signed it.
    """
    head, _, rest = token.partition(b".")
    body, _, signature = rest.partition(b".")
    if len(signature) != _SIGNATURE_CHARS:
        return None
    try:
        header = _b64json(head)
        claims = _b64json(body)
    except (ValueError, binascii.Error):
        return None
    if not isinstance(header, dict) or set(header) != {"alg", "typ", "kid"}:
        return None
    kid = header.get("kid")
    if (
        header.get("typ") != "at+jwt"
        or header.get("alg") not in OUR_ALGS
        or not isinstance(kid, str)
        or not _KID.match(kid)
    ):
        return None
    if not isinstance(claims, dict):
        return None
    iss, jti, details = claims.get("iss"), claims.get("jti"), claims.get("authorization_details")
    if not isinstance(iss, str) or not iss.startswith(("https://", "http://")):
        return None
    if issuer is not None and iss.rstrip("/") != issuer.rstrip("/"):
        return None
    if not isinstance(jti, str) or not isinstance(details, list):
        return None
    if not any(isinstance(d, dict) and d.get("type") == "pii_access" for d in details):
        return None
    claims["_kid"] = kid
    return claims


# --- masking ------------------------------------------------------------------------------


def mask_digits(raw: bytes, keep_last: int) -> str:
    """Every digit but the last ``keep_last`` becomes ``*``; the layout stays readable."""
    text = raw.decode("ascii")
    total = sum(c.isdigit() for c in text)
    out, seen = [], 0
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - keep_last else "*")
        else:
            out.append(c)
    return "".join(out)


def mask_email(raw: bytes) -> str:
    local, _, domain = raw.decode("ascii").partition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}"


def mask_iban(compact: str) -> str:
    return compact[:2] + "*" * (len(compact) - 6) + compact[-4:]


def mask_credential(token: str) -> str:
    return f"{token[:5]}…(fingerprint {credentials.fingerprint(token)})"


def mask_key(claims: dict[str, Any]) -> str:
    return f"at+jwt…(jti {claims.get('jti')}, kid {str(claims.get('_kid'))[:12]}…)"
