"""CLI configuration and pure helpers: precedence, refusals before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import credentials
from broker.ops_cli import config
from broker.ops_cli.common import read_document
from broker.ops_cli.errors import ConfigError
from broker.ops_cli.policies import diff_lines

TOKEN_A = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
TOKEN_B = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("BROKER_ADDR", "BROKER_TOKEN", "BROKER_CONFIG", "BROKER_CACERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path / "pii-broker" / "config.toml"


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def test_flags_beat_environment_beat_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(home, f'addr = "https://file.example"\ntoken = "{TOKEN_A}"\ntimeout = 5\n')
    cfg = config.resolve()
    assert (cfg.addr, cfg.token, cfg.timeout) == ("https://file.example", TOKEN_A, 5.0)
    monkeypatch.setenv("BROKER_ADDR", "https://env.example/")
    monkeypatch.setenv("BROKER_TOKEN", TOKEN_B)
    cfg = config.resolve()
    assert (cfg.addr, cfg.token) == ("https://env.example", TOKEN_B)
    cfg = config.resolve("https://flag.example", TOKEN_A)
    assert (cfg.addr, cfg.token) == ("https://flag.example", TOKEN_A)
    assert TOKEN_A not in repr(cfg)
    assert config.configured_addr(None) == "https://env.example/"


def test_refusals_name_the_problem_and_never_the_token(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="no broker address"):
        config.resolve()
    with pytest.raises(ConfigError, match="no operator token"):
        config.resolve("https://b.example")
    assert config.resolve("https://b.example", need_token=False).token is None
    with pytest.raises(ConfigError, match="http\\(s\\) URL"):
        config.resolve("b.example", TOKEN_A)
    typo = TOKEN_A[:-1] + ("x" if TOKEN_A[-1] != "x" else "y")
    with pytest.raises(ConfigError, match="malformed") as caught:
        config.resolve("https://b.example", typo)
    assert typo not in str(caught.value)
    monkeypatch.setenv("BROKER_CACERT", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="CA certificate"):
        config.resolve("https://b.example", TOKEN_A)


def test_config_file_checks(home: Path, tmp_path: Path) -> None:
    _write(home, f'addr = "https://b.example"\ntoken = "{TOKEN_A}"\n', mode=0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.resolve()
    _write(home, 'addr = "https://b.example"\ntoken_file = "~/nowhere/token"\n')
    with pytest.raises(ConfigError, match="does not exist"):
        config.resolve()
    token_file = tmp_path / "token"
    _write(token_file, TOKEN_B + "\n", mode=0o604)
    _write(home, f'addr = "https://b.example"\ntoken_file = "{token_file}"\n')
    with pytest.raises(ConfigError, match="chmod 600"):
        config.resolve()
    token_file.chmod(0o600)
    assert config.resolve().token == TOKEN_B
    _write(home, "addr = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.resolve()
    _write(home, 'addr = "https://b.example"\ntimeout = "soon"\n')
    with pytest.raises(ConfigError, match="timeout"):
        config.resolve(need_token=False)


def test_plain_http_to_a_remote_host_warns(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config.resolve("http://127.0.0.1:8080", TOKEN_A)
    config.resolve("http://localhost:8080", TOKEN_A)
    assert capsys.readouterr().err == ""
    config.resolve("http://broker.internal:8080", TOKEN_A)
    err = capsys.readouterr().err
    assert "without TLS" in err
    assert TOKEN_A not in err


def test_documents_yaml_json_and_their_errors(tmp_path: Path) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text("service: a\nvalid_until: 2027-01-01T00:00:00Z\nfields: [x]\n")
    assert read_document(str(spec)) == {
        "service": "a",
        "valid_until": "2027-01-01T00:00:00+00:00",
        "fields": ["x"],
    }
    as_json = tmp_path / "p.json"
    as_json.write_text('{"service": "a",}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_document(str(as_json))
    listed = tmp_path / "l.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_document(str(listed))
    with pytest.raises(ConfigError, match="does not exist"):
        read_document(str(tmp_path / "missing.yaml"))


def test_policy_diff_lists_each_change() -> None:
    """The CLI reads the broker's diff (against the version in force); it computes none."""
    diff = {
        "against": "in-force",
        "from_version": 1,
        "to_version": 2,
        "fields_added": ["customer.ssn"],
        "fields_removed": ["customer.name"],
        "purposes_added": [],
        "purposes_removed": [],
        "source_cidrs_added": ["10.0.0.0/8"],
        "source_cidrs_removed": [],
        "changed": [{"name": "max_ttl_seconds", "before": 300, "after": 600}],
    }
    assert diff_lines(diff) == [
        ("+", "field", "customer.ssn"),
        ("-", "field", "customer.name"),
        ("+", "source_cidr", "10.0.0.0/8"),
        ("~", "max_ttl_seconds", "300 -> 600"),
    ]
    empty = {k: [] if isinstance(v, list) else v for k, v in diff.items()}
    assert diff_lines(empty) == []
