"""``broker scan``: what it finds, what it refuses to call a leak, how it masks, exit codes."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.scan import fake_issued_key, generate_logs
from broker import credentials
from broker.cli import main
from broker.scan import Kind, Scanner, scan_bytes
from broker.scan import scanner as scanner_module
from broker.scan.patterns import card_network, iban_mod97_ok, luhn_ok

OPERATOR_TOKEN = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
CLIENT_SECRET = credentials.generate(credentials.CLIENT_SECRET_PREFIX)


def _flip_last(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if luhn_ok((body + check).encode()):
            return body + check
    raise AssertionError("unreachable")


VALID = {
    Kind.EMAIL: ["jane.doe+billing@example.co.uk", "x@mail.example.org"],
    Kind.PHONE: [
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "+1 415 555 2671",
        "+14155552671",
        "+44 20 7946 0958",
        "020 7946 0958",
        "07700 900123",
        "06 12 34 56 78",
        "06.12.34.56.78",
        "+33 6 12 34 56 78",
        "030 12345678",
    ],
    Kind.SSN: ["123-45-6789", "665-01-0001"],
    Kind.CARD: [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",
        "6011111111111117",
    ],
    Kind.IBAN: [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
    ],
    Kind.OPERATOR_TOKEN: [OPERATOR_TOKEN],
    Kind.CLIENT_SECRET: [CLIENT_SECRET],
}

NOT_LEAKS = [
    "4111 1111 1111 1112",  # Luhn fails
    "1234 5678 9012 3452",  # Luhn holds, but no network issues numbers starting with 1
    "DE89 3704 0044 0532 0130 01",  # mod-97 fails
    "000-12-3456",  # SSN area 000 is never issued
    "666-12-3456",
    "912-34-5678",
    "123-00-4567",
    "415-155-2671",  # NANP exchanges never start with 1
    "5552671234",  # a bare 10-digit number: an epoch time far more often than a phone
    "1767225600123",  # an epoch time in milliseconds
    "2026-03-16 12:34:56,789",
    "192.168.100.200",
    "version 1.22.333.4444",
    "logo@2x.png",
    "user@localhost",
    "06.03.2026 12:00",
    _flip_last(OPERATOR_TOKEN),
    _flip_last(CLIENT_SECRET),
    "pkbs_tooshort",
    "order 12345678901234567890123",
]


_VALID_CASES = [(k, v) for k, values in VALID.items() for v in values]


# Ids by position: some values are generated per run, and pytest-xdist workers must collect
# the same test names.
@pytest.mark.parametrize(
    ("kind", "value"), _VALID_CASES, ids=[f"{k.value}-{i}" for i, (k, _) in enumerate(_VALID_CASES)]
)
def test_finds_each_kind_masked(kind: Kind, value: str) -> None:
    for line in (f"{value}", f"user={value} ok", f'{{"v":"{value}"}}', f"({value}),"):
        found = scan_bytes(f"first line\n{line}\n".encode(), "app.log")
        assert [(f.kind, f.line) for f in found] == [(kind, 2)], line
        rendered = found[0].render()
        assert rendered.startswith(f"app.log:2: {kind.value}: ")
        assert value not in rendered
        if kind in (Kind.OPERATOR_TOKEN, Kind.CLIENT_SECRET):
            assert found[0].secret == value
            assert value[5:15] not in rendered
            assert credentials.fingerprint(value) in rendered
        else:
            assert found[0].secret is None


@pytest.mark.parametrize("value", NOT_LEAKS, ids=[f"case-{i}" for i in range(len(NOT_LEAKS))])
def test_lookalikes_are_not_leaks(value: str) -> None:
    assert scan_bytes(f"x {value} y\n".encode()) == []


def test_masks_keep_only_what_helps_find_the_line() -> None:
    text = (
        "card 4111 1111 1111 1111 ssn 123-45-6789 tel +1 415 555 2671 "
        "mail jane@example.com iban DE89 3704 0044 0532 0130 00\n"
    )
    masked = {f.kind: f.masked for f in scan_bytes(text.encode())}
    assert masked == {
        Kind.CARD: "**** **** **** 1111",
        Kind.SSN: "***-**-****",
        Kind.PHONE: "+* *** *** **71",
        Kind.EMAIL: "j***@e***.com",
        Kind.IBAN: "DE****************3000",
    }


def test_glued_to_words_is_not_a_number() -> None:
    assert scan_bytes(b"id=x4111111111111111 abc123-45-6789 v4111-1111-1111-1111z\n") == []


# --- issued keys ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reshape(token: str, header: dict[str, object] | None = None, **claims: object) -> str:
    head, body, sig = token.split(".")
    h = json.loads(base64.urlsafe_b64decode(head + "=="))
    c = json.loads(base64.urlsafe_b64decode(body + "=="))
    if header is not None:
        h = header
    c.update(claims)
    return ".".join([_b64(json.dumps(h).encode()), _b64(json.dumps(c).encode()), sig])


def test_issued_keys_are_recognised_by_shape() -> None:
    rng = random.Random(7)
    key = fake_issued_key(rng, issuer="https://broker.example")
    claims = json.loads(base64.urlsafe_b64decode(key.split(".")[1] + "=="))
    found = scan_bytes(f"Authorization: Bearer {key}\n".encode())
    assert [f.kind for f in found] == [Kind.ISSUED_KEY]
    assert claims["jti"] in found[0].masked
    assert key not in found[0].render()
    assert key.split(".")[2] not in found[0].render()
    assert found[0].secret == key
    # Narrowed to one broker's issuer.
    assert scan_bytes(key.encode(), issuer="https://broker.example/")
    assert scan_bytes(key.encode(), issuer="https://other.example") == []


def test_other_jws_are_not_our_keys() -> None:
    rng = random.Random(8)
    key = fake_issued_key(rng)
    head = json.loads(base64.urlsafe_b64decode(key.split(".")[0] + "=="))
    lookalikes = [
        _reshape(key, {**head, "typ": "JWT"}),
        _reshape(key, {**head, "alg": "RS256"}),
        _reshape(key, {**head, "jku": "https://evil.example"}),
        _reshape(key, {**head, "kid": "k8s-1"}),
        _reshape(key, authorization_details=[{"type": "other"}]),
        _reshape(key, iss="not-a-url"),
        key[:-2],  # a signature of the wrong length
    ]
    for token in lookalikes:
        assert scan_bytes(f"token={token}\n".encode()) == [], token


# --- checks the validators against independent truths --------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["4", "51", "55", "2221", "34", "37", "6011", "65"]),
    digits=st.lists(st.integers(0, 9), min_size=20, max_size=20),
    sep=st.sampled_from(["", " ", "-"]),
)
def test_any_valid_card_is_found(prefix: str, digits: list[int], sep: str) -> None:
    length = 15 if prefix in ("34", "37") else 16
    number = _luhn_complete(prefix + "".join(map(str, digits))[: length - len(prefix) - 1])
    if length == 15:
        printed = sep.join([number[:4], number[4:10], number[10:]])
    else:
        printed = sep.join(number[i : i + 4] for i in range(0, 16, 4))
    found = scan_bytes(f"paid with {printed} today\n".encode())
    assert [f.kind for f in found] == [Kind.CARD]
    assert found[0].masked.endswith(number[-4:])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789", min_size=16, max_size=16))
def test_a_bare_16_digit_number_is_a_card_only_when_it_could_be_one(number: str) -> None:
    expected = luhn_ok(number.encode()) and card_network(number.encode()) is not None
    found = scan_bytes(f"n={number}\n".encode(), kinds=[Kind.CARD])
    assert bool(found) == expected


def test_iban_check_digits() -> None:
    assert iban_mod97_ok("GB82WEST12345698765432")
    assert not iban_mod97_ok("GB83WEST12345698765432")


# --- streams, blocks, files ----------------------------------------------------------------


def test_generated_logs_have_no_false_positives_and_every_plant_is_found() -> None:
    clean, _ = generate_logs(2_000_000, seed=3)
    assert scan_bytes(clean) == []
    dirty, planted = generate_logs(2_000_000, seed=4, plant_every=40)
    found = scan_bytes(dirty)
    assert sum(planted.values()) > 100
    assert {k: v for k, v in planted.items()} == {k.value: n for k, n in _count(found).items()}


def _count(findings: list[scanner_module.Finding]) -> dict[Kind, int]:
    counts: dict[Kind, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return counts


def test_block_boundaries_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    dirty, _ = generate_logs(200_000, seed=5, plant_every=20)
    whole = [(f.line, f.kind, f.masked) for f in scan_bytes(dirty)]
    monkeypatch.setattr(scanner_module, "BLOCK_SIZE", 997)
    small = [(f.line, f.kind, f.masked) for f in scan_bytes(dirty)]
    assert small == whole
    assert len(whole) > 10
    # One enormous line (minified JSON): cut at safe bytes, values stay whole.
    line = ",".join(
        f'"a{i}":"{v}"' for i, v in enumerate([CLIENT_SECRET, "4111 1111 1111 1111"] * 50)
    )
    found = scan_bytes((line + "\nnext\n").encode())
    assert len(found) == 100
    assert {f.line for f in found} == {1}


def test_cli_exit_codes_output_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    clean = tmp_path / "clean.log"
    clean.write_text("2026-03-16 12:00:00 INFO all quiet\n")
    leaky = tmp_path / "leaky.log"
    leaky.write_text(f"ok\nsecret={CLIENT_SECRET}\ncontact jane@example.com\n")

    ok = runner.invoke(main, ["scan", str(clean)])
    assert ok.exit_code == 0, ok.output
    assert "0 finding(s)" in ok.stderr

    bad = runner.invoke(main, ["scan", str(clean), str(leaky)])
    assert bad.exit_code == 1
    assert bad.stdout.splitlines() == [
        f"{leaky}:2: client_secret: pkbs_…(fingerprint {credentials.fingerprint(CLIENT_SECRET)})",
        f"{leaky}:3: email: j***@e***.com",
    ]
    assert CLIENT_SECRET not in bad.output
    assert "jane@example.com" not in bad.output

    as_json = runner.invoke(main, ["scan", "--json", str(leaky)])
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert [(f["line"], f["kind"]) for f in report["findings"]] == [
        (2, "client_secret"),
        (3, "email"),
    ]
    assert report["files"] == 1
    assert CLIENT_SECRET not in as_json.output

    only = runner.invoke(main, ["scan", "--kind", "email", str(leaky)])
    assert only.exit_code == 1
    assert [line.split(": ")[1] for line in only.stdout.splitlines()] == ["email"]

    quiet = runner.invoke(main, ["scan", "-q", str(leaky)])
    assert quiet.exit_code == 1
    assert quiet.stdout == ""
    assert "2 finding(s)" in quiet.stderr

    stdin = runner.invoke(main, ["scan", "-"], input="call 415-555-2671\n")
    assert stdin.exit_code == 1
    assert stdin.stdout.startswith("-:1: phone: ")

    for args in (
        ["scan"],
        ["scan", str(tmp_path / "missing.log")],
        ["scan", "--kind", "dna", str(clean)],
    ):
        usage = runner.invoke(main, args)
        assert usage.exit_code == 2, (args, usage.output)


def test_cli_walks_directories_and_skips_binaries_and_vcs(tmp_path: Path) -> None:
    (tmp_path / "logs" / "deep").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "logs" / "deep" / "a.log").write_text("ssn 123-45-6789\n")
    (tmp_path / ".git" / "packed").write_text("ssn 123-45-6789\n")
    (tmp_path / "logs" / "blob.bin").write_bytes(b"\x00\x01 ssn 123-45-6789\n")
    result = CliRunner().invoke(main, ["scan", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'logs' / 'deep' / 'a.log'}:1: ssn: ***-**-****"
    ]
    assert "1 binary file(s) skipped" in result.stderr


def test_report_to_needs_a_token_before_scanning(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.log"
    leaky.write_text(f"secret={CLIENT_SECRET}\n")
    env = {"BROKER_TOKEN": None, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "BROKER_CONFIG": None}
    result = CliRunner().invoke(
        main, ["scan", "--report-to", "http://127.0.0.1:9", str(leaky)], env=env
    )
    assert result.exit_code == 2
    assert "no operator token" in result.stderr
    assert CLIENT_SECRET not in result.output


def test_scanner_counts_bytes_and_files(tmp_path: Path) -> None:
    (tmp_path / "one.log").write_text("a\n" * 10)
    (tmp_path / "two.log").write_text("b\n" * 5)
    scanner = Scanner()
    assert list(scanner.scan_paths([tmp_path])) == []
    assert scanner.stats.files == 2
    assert scanner.stats.bytes == 30


# --- text written to be slow -------------------------------------------------------------
# Correctness on the shapes bench/scan.py times: long runs of what starts a candidate and
# never finishes one, with one real value in the middle. (No timing here; the attack test
# in tests/test_attacks_small.py bounds the CLI on such a log, and the bench measures.)

ADVERSARIAL_UNITS = [
    b"@",
    b"a@",
    b"a.@",
    b"@.",
    b"eyJ",
    b"eyJa.",
    b"pkbo_",
    b"-----BEGIN ",
    b"AbCd0123_-xYz",
    b"0123456789",
    b"1234 ",
    b"723 7234 ",
    b"0 1",
    b"12-",
    b"DE89",
    b"AB12 ",
]


@pytest.mark.parametrize("unit", ADVERSARIAL_UNITS, ids=[u.decode() for u in ADVERSARIAL_UNITS])
def test_values_amid_adversarial_runs_are_found_and_nothing_else(unit: bytes) -> None:
    run = unit * (16_000 // len(unit))
    key = fake_issued_key(random.Random(9))
    for kind, value in (
        (Kind.EMAIL, "jane.doe@example.org"),
        (Kind.CARD, "4111 1111 1111 1111"),
        (Kind.PHONE, "+44 20 7946 0958"),
        (Kind.IBAN, "DE89 3704 0044 0532 0130 00"),
        (Kind.CLIENT_SECRET, CLIENT_SECRET),
        (Kind.ISSUED_KEY, key),
    ):
        text = run + f" x {value} x ".encode() + run + b"\n" + run + b"\n"
        found = scan_bytes(text)
        assert [(f.kind, f.line) for f in found] == [(kind, 1)], (unit, kind)


def test_a_key_shaped_jws_with_deeply_nested_claims_is_not_a_crash() -> None:
    """Claims nested deeper than the JSON decoder recurses raise RecursionError, not a
    ValueError: the scanner takes it for what it is, not one of our keys."""
    key = fake_issued_key(random.Random(10))
    head, _, sig = key.split(".")
    nested = _b64(('{"iss":"https://b.example","x":' + "[" * 5000 + "]" * 5000 + "}").encode())
    assert scan_bytes(f"token={head}.{nested}.{sig}\n".encode()) == []


def test_a_kid_with_a_trailing_newline_is_not_a_thumbprint() -> None:
    key = fake_issued_key(random.Random(11))
    head = json.loads(base64.urlsafe_b64decode(key.split(".")[0] + "=="))
    assert scan_bytes(f"{_reshape(key, {**head, 'kid': head['kid'] + chr(10)})}\n".encode()) == []
