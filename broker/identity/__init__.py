"""Services, their identity bindings, and how a calling service is authenticated."""

from broker.identity.authenticate import ServiceIdentity, authenticate_service, jwks_cache
from broker.identity.jwks_cache import JwksCache

__all__ = ["JwksCache", "ServiceIdentity", "authenticate_service", "jwks_cache"]
