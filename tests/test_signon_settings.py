"""Single sign-on settings stop a start with one line naming the variable, and keep what
the provider compares exactly (its issuer, the redirect URIs) as given."""

from __future__ import annotations

import pytest

from broker.settings import Settings, SettingsError, load_settings

ISSUER = "https://login.example.test/tenant/"


def _start(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in list(env):
        monkeypatch.setenv(f"BROKER_{name}", env[name])
    return load_settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OIDC_ISSUER": ISSUER, "OIDC_ROLE_MAP": "g=admin"},
            "invalid setting BROKER_OIDC_CLIENT_ID: Value error, required when "
            "BROKER_OIDC_ISSUER is set",
        ),
        (
            {"OIDC_ISSUER": ISSUER, "OIDC_CLIENT_ID": "broker"},
            "invalid setting BROKER_OIDC_ROLE_MAP: Value error, required when "
            "BROKER_OIDC_ISSUER is set",
        ),
        (
            {"OIDC_ISSUER": ISSUER, "OIDC_CLIENT_ID": "b", "OIDC_ROLE_MAP": "ops=boss"},
            "unknown role 'boss'; roles: admin, approver, proposer, auditor",
        ),
        (
            {"OIDC_ISSUER": ISSUER, "OIDC_CLIENT_ID": "b", "OIDC_ROLE_MAP": "a=admin,a=auditor"},
            "'a' is mapped to two roles",
        ),
        (
            {"OIDC_ISSUER": ISSUER, "OIDC_CLIENT_ID": "b", "OIDC_ROLE_MAP": "admin"},
            "expected value=role pairs separated by commas",
        ),
        ({"OIDC_ISSUER": "login.example.test"}, "BROKER_OIDC_ISSUER: Value error, must be"),
    ],
)
def test_a_bad_single_sign_on_setting_stops_the_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        _start(monkeypatch, **env)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_issuer_and_redirect_uris_are_kept_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _start(
        monkeypatch,
        OIDC_ISSUER=ISSUER,
        OIDC_CLIENT_ID="broker",
        OIDC_ROLE_MAP=" pii-admins = admin , pii-ci=proposer",
        OIDC_REDIRECT_URI="https://broker.example.test/console/oidc/callback/",
        ISSUER="https://broker.example.test",
    )
    assert settings.oidc_issuer == ISSUER  # a trailing "/" included: compared exactly
    assert settings.oidc_console_redirect_uri == (
        "https://broker.example.test/console/oidc/callback/"
    )
    assert settings.oidc_roles == {"pii-admins": "admin", "pii-ci": "proposer"}


def test_without_an_issuer_single_sign_on_is_off_and_the_console_uri_is_derived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _start(monkeypatch, ISSUER="https://broker.example.test")
    assert not settings.oidc_enabled
    assert settings.oidc_console_redirect_uri == (
        "https://broker.example.test/console/oidc/callback"
    )
