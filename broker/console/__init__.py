"""The operator web console at ``/console``: server-rendered pages over the domain services."""

from broker.console.rendering import template_config
from broker.console.router import console_router

__all__ = ["console_router", "template_config"]
