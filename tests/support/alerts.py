"""Settings with an alert webhook, for the tests of jobs whose reminders queue an alert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HOOK = "https://alerts.example/hook"


def settings_with_webhook(database_url: str, broker_home: Path) -> Any:
    """The suite's settings, with an alert webhook: reminders queue their alert."""
    from broker.settings import Settings

    return Settings(
        database_url=database_url,
        home=broker_home,
        issuer="https://broker.test",
        alert_webhook_url=HOOK,
        alert_webhook_secret="webhook-shared-secret-for-tests",
    )
