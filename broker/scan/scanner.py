"""Scan text for PII and for our credentials: files, directories, or a stream.

Text is read in large blocks cut at line ends (no pattern spans a line), each block is
searched with the literal-led prefilters from ``patterns``, and only their hits are matched
precisely and validated. Line numbers are counted only up to each finding, so clean text
costs no per-line Python work at all.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from broker.scan import patterns
from broker.scan.patterns import Kind

BLOCK_SIZE = 8 * 1024 * 1024
# A block with no line end is cut at the last of these instead (none of them can be inside
# a value we look for), so one enormous line never has to fit in memory whole.
_SAFE_CUTS = (b"\n", b'"', b",", b";", b"\t", b"<", b">", b"{", b"}", b"[", b"]", b"'")
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", ".tox"})
_CARD_FIRST_DIGITS = frozenset(b"23456")
_PLUS = ord("+")


@dataclass(frozen=True)
class Finding:
    """One value found. ``secret`` holds the raw value for credentials only, so it can be
    reported to the broker for revocation; it is never printed and never set for PII."""

    path: str
    line: int
    kind: Kind
    masked: str
    secret: str | None = field(default=None, repr=False, compare=False)

    def render(self) -> str:
        return f"{self.path}:{self.line}: {self.kind.value}: {self.masked}"


@dataclass(frozen=True)
class _Hit:
    offset: int
    kind: Kind
    masked: str
    secret: str | None = None


@dataclass
class ScanStats:
    files: int = 0
    bytes: int = 0
    skipped_binary: list[str] = field(default_factory=list)


class Scanner:
    """Finds the kinds asked for. ``issuer`` narrows issued keys to one broker's."""

    def __init__(self, kinds: Iterable[Kind] = patterns.ALL_KINDS, issuer: str | None = None):
        self.kinds = frozenset(kinds)
        self.issuer = issuer
        self.stats = ScanStats()
        self._numbers = bool(self.kinds & {Kind.PHONE, Kind.SSN, Kind.CARD})

    # --- blocks ---------------------------------------------------------------------------

    def scan_block(self, block: bytes) -> list[_Hit]:
        hits: list[_Hit] = []
        kinds = self.kinds
        if kinds & {Kind.OPERATOR_TOKEN, Kind.CLIENT_SECRET} and b"pkb" in block:
            self._credentials(block, hits)
        if Kind.ISSUED_KEY in kinds and b"eyJ" in block:
            self._keys(block, hits)
        if Kind.EMAIL in kinds and b"@" in block:
            self._emails(block, hits)
        if self._numbers or Kind.IBAN in kinds:
            classes = block.translate(patterns.CLASS_TABLE)
            if self._numbers:
                self._numbers_in(block, classes, hits)
            if Kind.IBAN in kinds:
                self._ibans(block, classes, hits)
        hits.sort(key=lambda h: h.offset)
        return hits

    def _credentials(self, block: bytes, hits: list[_Hit]) -> None:
        # The prefilter holds both boundaries: a hit is a whole token-shaped word.
        for m in patterns.CREDENTIAL_PREFILTER.finditer(block):
            token = m.group().decode("ascii")
            kind = patterns.credential_kind(token)
            if kind is not None and kind in self.kinds:
                hits.append(_Hit(m.start(), kind, patterns.mask_credential(token), token))

    def _keys(self, block: bytes, hits: list[_Hit]) -> None:
        # The prefilter holds both boundaries: a hit is a whole JWS, not part of a longer run.
        for m in patterns.JWS_PREFILTER.finditer(block):
            claims = patterns.our_key_claims(m.group(), self.issuer)
            if claims is not None:
                hits.append(
                    _Hit(m.start(), Kind.ISSUED_KEY, patterns.mask_key(claims), m.group().decode())
                )

    def _emails(self, block: bytes, hits: list[_Hit]) -> None:
        done = 0
        local: bytes | None = None  # the local-part classes, made on the first candidate
        reach = patterns.EMAIL_LOCAL_MAX
        for candidate in patterns.EMAIL_PREFILTER.finditer(block):
            pos = candidate.start()
            if local is None:
                local = block.translate(patterns.LOCAL_TABLE)
            # The local part is the run of local characters before the '@': at most 64.
            floor = max(0, pos - reach - 1)
            start = local.rfind(b" ", floor, pos) + 1
            if start == 0 and floor > 0:
                continue  # a longer run: no address starts within reach
            if start < done:
                continue  # the run began inside the previous address
            m = patterns.EMAIL.match(block, start, pos + patterns.EMAIL_DOMAIN_REACH)
            if m is None:
                continue
            done = m.end()
            if patterns.email_ok(m.group("tld")):
                hits.append(_Hit(m.start(), Kind.EMAIL, patterns.mask_email(m.group())))

    def _numbers_in(self, block: bytes, classes: bytes, hits: list[_Hit]) -> None:
        """Phone numbers, SSNs and cards: each run of number characters holding an anchor
        (four or more digits ending eleven number characters, or five digit pairs) is read
        once, and a number found in it counts only where it ends at such an anchor or
        holds a pair anchor, as a search from each anchor would have found it."""
        n = len(block)
        reach = patterns.NUMBER_REACH
        # (start, end, any kind): a run with only pair anchors can hold only national and
        # E.164 numbers. Regions may overlap by the reach; a number is reported once.
        regions: list[tuple[int, int, bool]] = [
            (max(0, run.start() + 4 - reach), run.end(), True)
            for run in patterns.NUMBER_END_RUN.finditer(classes)
        ]
        regions += [
            (max(0, run.start() - reach), run.end(), False)
            for run in patterns.NUMBER_PAIRS_RUN.finditer(classes)
        ]
        seen: set[int] = set()
        for start, end, every_kind in sorted(regions):
            stop = min(end + 2, n)
            if start == 0:
                first = patterns.NUMBER.match(block, 0, stop)
                if first is not None:
                    self._found_number(block, classes, first, seen, hits)
                    start = first.end()
            else:
                start -= 1  # the patterns below read the character before the number
            numbers = patterns.NUMBER_AFTER if every_kind else patterns.NUMBER_AFTER_PAIRS
            for m in numbers.finditer(block, start, stop):
                self._found_number(block, classes, m, seen, hits)

    def _found_number(
        self, block: bytes, classes: bytes, m: re.Match[bytes], seen: set[int], hits: list[_Hit]
    ) -> None:
        at = m.start("number")
        if at not in seen and self._anchored(block, classes, m):
            seen.add(at)
            self._number(m, hits)

    @staticmethod
    def _anchored(block: bytes, classes: bytes, m: re.Match[bytes]) -> bool:
        start, end = m.span("number")
        if classes.find(b"0-00-00-00-00", start, end + 12) >= 0:
            return True
        if end < 4 or patterns.NUMBER_END.match(classes, end - 4) is None:
            return False
        tail = classes[max(0, end - 20) : end]
        run = len(tail) - len(tail.rstrip(b"0"))
        if run >= 11:
            # Unseparated digits: only a card or, after a '+', an E.164 number can be that
            # long. Epoch times in milliseconds are the usual case, and rejected here.
            first = end - run
            card = 13 <= run <= 19 and block[first] in _CARD_FIRST_DIGITS
            e164 = run <= 15 and first > 0 and block[first - 1] == _PLUS
            return card or e164
        return True

    def _number(self, m: re.Match[bytes], hits: list[_Hit]) -> None:
        kinds, raw, at = self.kinds, m.group("number"), m.start("number")
        if m.group("card") is not None:
            if Kind.CARD in kinds and patterns.card_ok(raw):
                hits.append(_Hit(at, Kind.CARD, patterns.mask_digits(raw, 4)))
        elif m.group("ssn") is not None:
            if Kind.SSN in kinds and patterns.ssn_ok(raw):
                hits.append(_Hit(at, Kind.SSN, patterns.mask_digits(raw, 0)))
        elif Kind.PHONE in kinds:
            if m.group("e164") is not None:
                ok = patterns.e164_ok(raw)
            elif m.group("trunk") is not None:
                ok = patterns.trunk_ok(raw)
            else:
                ok = True  # the NANP expression is itself the whole check
            if ok:
                hits.append(_Hit(at, Kind.PHONE, patterns.mask_digits(raw, 2)))

    def _ibans(self, block: bytes, classes: bytes, hits: list[_Hit]) -> None:
        for run in patterns.IBAN_RUN.finditer(classes):
            m = patterns.IBAN.match(block, run.start())
            if m is None:
                continue
            compact = patterns.iban_candidate(m.group())
            if compact is not None:
                hits.append(_Hit(m.start(), Kind.IBAN, patterns.mask_iban(compact)))

    # --- streams, files, trees ------------------------------------------------------------

    def scan_stream(self, stream: BinaryIO, name: str) -> Iterator[Finding]:
        """Findings in order; reads ``BLOCK_SIZE`` at a time whatever the stream's size."""
        line = 1
        carry = b""
        self.stats.files += 1
        while True:
            data = stream.read(BLOCK_SIZE)
            if not data and not carry:
                return
            buf = carry + data
            if data:
                cut = _cut_point(buf)
                if cut <= 0:
                    carry = buf
                    if len(carry) < 8 * BLOCK_SIZE:
                        continue
                    cut = len(buf)
                block, carry = buf[:cut], buf[cut:]
            else:
                block, carry = buf, b""
            self.stats.bytes += len(block)
            counted = 0
            for hit in self.scan_block(block):
                line += block.count(b"\n", counted, hit.offset)
                counted = hit.offset
                yield Finding(name, line, hit.kind, hit.masked, hit.secret)
            line += block.count(b"\n", counted)

    def scan_file(self, path: Path, name: str | None = None) -> Iterator[Finding]:
        with path.open("rb") as fh:
            head = fh.read(8192)
            if b"\0" in head:
                self.stats.skipped_binary.append(str(path))
                return
            fh.seek(0)
            yield from self.scan_stream(fh, name or str(path))

    def scan_paths(self, paths: Iterable[Path]) -> Iterator[Finding]:
        """Files as given, directories recursively (skipping VCS and dependency folders)."""
        for path in paths:
            if path.is_dir():
                for root, dirs, files in os.walk(path):
                    dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
                    for name in sorted(files):
                        full = Path(root) / name
                        if full.is_file():
                            yield from self.scan_file(full)
            else:
                yield from self.scan_file(path)


def _cut_point(buf: bytes) -> int:
    """Just after the last line end, or after the last byte no value can contain."""
    cut = buf.rfind(b"\n")
    if cut >= 0:
        return cut + 1
    best = max(buf.rfind(sep) for sep in _SAFE_CUTS)
    return best + 1 if best >= 0 else 0


def scan_bytes(
    data: bytes,
    name: str = "-",
    *,
    kinds: Iterable[Kind] = patterns.ALL_KINDS,
    issuer: str | None = None,
) -> list[Finding]:
    """Everything found in ``data`` (for tests and small inputs)."""
    return list(Scanner(kinds, issuer).scan_stream(io.BytesIO(data), name))
