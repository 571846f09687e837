"""What ``broker scan`` looks for, and how each candidate is confirmed and masked.

Speed comes from never running an expensive expression over the whole text. Each kind has
a cheap prefilter that CPython's regex engine runs at memchr-like speed because it starts
with a literal: ``pkb`` for our credentials, ``eyJ`` for JWS, ``@`` for emails, and, on a
one-byte-per-byte *class* translation of the text (digits and number separators become
``0``, capitals ``A``), a run of eleven ``0`` for phone numbers, SSNs and cards, and
``AA00`` for IBANs. Only the few places a prefilter finds are matched precisely and then
validated (Luhn, mod-97, SSN ranges, NANP rules, our checksums and key header), so a
random number that merely looks like a card does not stop a build.

Speed must also hold on text written to be slow (a log line is often attacker-controlled: a
path, a user agent). So no expression is tried again at positions an earlier attempt
already read, and none backtracks over an unbounded run:

* a prefilter checks its left boundary right after its literal (a look-behind) and takes
  its runs possessively (``*+``, ``{m,n}+``), so in a run of ``eyJeyJ...`` or
  ``pkbo_pkbo_...`` only the first position is attempted and each byte is read once;
* the email prefilter demands ``x@label.tld`` itself, so a run of ``@`` or ``a@a@a`` costs
  no Python work; where it holds, the local part is found with one ``rfind`` on a class
  string, not by a search retrying every start within 64 bytes;
* numbers are matched once per *run* of number characters (one ``finditer`` over it), not
  once per group of digits in it, so ``1234 1234 1234 ...`` is one pass, not one search of
  34 bytes per group;
* repetitions that only a longer, invalid value could fill are bounded (an IBAN has at
  most 34 characters), so a run of ``DE89DE89...`` is not matched whole.

``bench/scan.py`` measures ordinary logs and each of these shapes side by side.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from enum import StrEnum
from typing import Any

from broker import credentials
from broker.claims import MalformedClaims, pii_access


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

# Prefilters. Each starts with a literal so the engine skips ahead with a fast search, then
# checks the character before that literal (a look-behind), so it is attempted only where a
# value could start, never again inside a run it already read.
CREDENTIAL_PREFILTER = re.compile(rb"pkb(?<![0-9A-Za-z]pkb)[os]_[0-9A-Za-z]{49}(?![0-9A-Za-z])")
# A JWS shaped like our keys, with lengths below which our_key_claims refuses anyway: the
# shortest header it accepts, {"alg":"ES256","typ":"at+jwt","kid":"<43>"}, is 82 bytes (110
# characters), the claims it accepts are longer than iss, jti and a bare pii_access detail,
# 74 bytes (99 characters), and our signatures are 86 characters (ES256, Ed25519) or 342
# (RS256). Segments hold no dot, so taking them possessively loses nothing.
JWS_PREFILTER = re.compile(
    rb"eyJ(?<![A-Za-z0-9_.-]eyJ)[A-Za-z0-9_-]{100,4000}+"
    rb"\.eyJ[A-Za-z0-9_-]{77,40000}+"
    rb"\.(?:[A-Za-z0-9_-]{342}|[A-Za-z0-9_-]{86})(?![A-Za-z0-9_.-])"
)
# An '@' after a local-part character, then labels and at least two letters of a top-level
# domain: a run of '@', 'a@a@a' or '@.@.' never leaves the regex engine.
# The first label is spelled out rather than folded into the repeated group: the same
# language, and about 15% faster on runs of 'a.@' where every '@' is an attempt.
EMAIL_PREFILTER = re.compile(
    rb"@(?<=[A-Za-z0-9._%+-]@)[A-Za-z0-9-]++\.(?:[A-Za-z0-9-]++\.)*+[A-Za-z]{2}"
)
# On the class string. Almost every number we look for ends in a group of four or more
# digits with at least eleven number characters up to there (the shortest, an SSN, is
# "123-45-6789"); dates, times, IP addresses and version numbers never do, and they are
# most of the numbers in a log. The few that end in pairs ("06 12 34 56 78", "+33 6 12 34
# 56 78") have their own prefilter. Bare runs of 10 or 13 digits are never candidates: in
# logs they are epoch times in seconds and milliseconds (on every line of many JSON logs),
# far more often than a phone number or one of the obsolete 13-digit Visa cards.
NUMBER_END = re.compile(rb"0000(?!0)(?<=[-0]{11})(?<!(?<![-0])0{13})")
NUMBER_PAIRS = re.compile(rb"0-00-00-00-00")
# The same, taking the rest of the run of number characters: one hit per run, however many
# groups of digits it holds.
NUMBER_END_RUN = re.compile(NUMBER_END.pattern + rb"[-0]*+")
NUMBER_PAIRS_RUN = re.compile(NUMBER_PAIRS.pattern + rb"[-0]*+")
IBAN_RUN = re.compile(rb"AA00[A0-]{11,}+")
# How far before its last digit a printed number may start ("+1 (415) 555-2671 ...").
NUMBER_REACH = 32

# --- precise matchers (run only where a prefilter pointed) --------------------------------

_WORD = rb"0-9A-Za-z_"
_START = rb"(?<![" + _WORD + rb"])(?<![0-9][.-])"
_END = rb"(?![" + _WORD + rb"])(?![.-][0-9])"

_NUMBER_BODY = (
    rb"(?P<number>"
    # Cards: 4-4-4-1..7 (13-19 digits, also unseparated) and Amex 4-6-5. Every network's
    # numbers start with 2 to 6 (card_network), so no other digit starts a candidate.
    + rb"(?P<card>(?=[2-6])(?:[0-9]{4}(?P<cs>[ -]?)[0-9]{4}(?P=cs)[0-9]{4}(?P=cs)[0-9]{1,7}"
    + rb"|[0-9]{4}(?P<as>[ -]?)[0-9]{6}(?P=as)[0-9]{5}))"
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
)
# A number at the very start of the text.
NUMBER = re.compile(_START + _NUMBER_BODY + _END)
# A number anywhere else, led by the character before it: that character is never a digit
# or letter, so the engine skips through runs of digits at memchr-like speed and tries a
# number only after a separator, not at every digit of ``1234 1234 1234 ...``. The
# look-aheads are what every alternative needs to begin (a card's first four digits, three
# digits and a separator, a plus, a parenthesis, a trunk 0; four digits from 1, 7, 8 or 9
# begin nothing): most groups of a long run of numbers fail them at once, for about a third
# of the cost of trying each alternative.
NUMBER_AFTER = re.compile(
    rb"[^" + _WORD + rb"]"
    rb"(?![1789][0-9]{3})(?=[2-6][0-9]{3}|[0-9]{3}[ .-]|\+[1-9]|\([2-9]|0[1-9])"
    rb"(?<![0-9][.-].)" + _NUMBER_BODY + _END
)
# Only national (trunk 0) and E.164 numbers are printed in pairs: in a run that holds pairs
# and no group of four, nothing else is tried.
NUMBER_AFTER_PAIRS = re.compile(
    rb"[^" + _WORD + rb"](?=0[1-9]|\+[1-9])(?<![0-9][.-].)" + _NUMBER_BODY + _END
)

EMAIL = re.compile(
    rb"(?<![A-Za-z0-9._%+-])"
    rb"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"
    rb"@"
    # A label ends at its dot, so there is one way to read it: atomic.
    rb"(?:(?>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)\.)+"
    rb"(?P<tld>[A-Za-z]{2,24})"
    rb"(?![A-Za-z0-9-])"
)
# How far an address reaches: 64 characters before its '@', 256 after.
EMAIL_LOCAL_MAX = 64
EMAIL_DOMAIN_REACH = 256
# Local-part characters become 'l', everything else ' ': where a local part starts is one
# rfind of ' ' on this translation.
_LOCAL_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
LOCAL_TABLE = bytes(ord("l") if b in _LOCAL_CHARS else ord(" ") for b in range(256))
# "logo@2x.png" is a file name, not an address.
_FILE_SUFFIXES = frozenset(
    b"png jpg jpeg gif svg webp ico css js mjs map json txt log py rb go java ts tsx".split()
)

# At most 34 characters (ISO 13616): nine groups of four already make a longer run, which
# iban_candidate refuses, so reading further would only cost time.
IBAN = re.compile(rb"(?<![0-9A-Za-z])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){0,9}+(?: ?[A-Z0-9]{1,4})?")

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

_KID = re.compile(r"[A-Za-z0-9_-]{43}")  # an RFC 7638 SHA-256 thumbprint, as we name keys
# The algorithms the broker signs with (broker/custody/base.py, which this layer cannot
# import) and the length of each one's signature, base64url without padding: 64 bytes for
# ES256 and Ed25519 (under either name), 256 for RS256 with its 2048-bit keys.
_SIGNATURE_CHARS = {"ES256": 86, "RS256": 342, "Ed25519": 86, "EdDSA": 86}
OUR_ALGS = frozenset(_SIGNATURE_CHARS)
_ANY_SIGNATURE_CHARS = frozenset(_SIGNATURE_CHARS.values())

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
    ``iss``, ``jti`` and the ``pii_access`` authorization detail ``broker.claims`` accepts
    (what the broker's leak report and every verifier accept too). The signature is not
    checked: a scanner has no keys, and a leaked key is worth reporting whoever signed it.
    """
    head, _, rest = token.partition(b".")
    body, _, signature = rest.partition(b".")
    if len(signature) not in _ANY_SIGNATURE_CHARS:
        return None
    try:
        header = _b64json(head)
        claims = _b64json(body)
    except (ValueError, binascii.Error, RecursionError):  # nested too deep: not ours either
        return None
    if not isinstance(header, dict) or set(header) != {"alg", "typ", "kid"}:
        return None
    kid, alg = header.get("kid"), header.get("alg")
    if (
        header.get("typ") != "at+jwt"
        or not isinstance(alg, str)
        or len(signature) != _SIGNATURE_CHARS.get(alg)
        or not isinstance(kid, str)
        or not _KID.fullmatch(kid)
    ):
        return None
    if not isinstance(claims, dict):
        return None
    iss, jti = claims.get("iss"), claims.get("jti")
    if not isinstance(iss, str) or not iss.startswith(("https://", "http://")):
        return None
    if issuer is not None and iss.rstrip("/") != issuer.rstrip("/"):
        return None
    if not isinstance(jti, str):
        return None
    try:
        pii_access(claims.get("authorization_details"))
    except MalformedClaims:
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
