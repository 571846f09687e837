from broker.db.engine import (
    advisory_xact_lock,
    make_engine,
    make_sessionmaker,
    ping,
    transaction,
)
from broker.db.types import UTCDateTime, utcnow

__all__ = [
    "UTCDateTime",
    "advisory_xact_lock",
    "make_engine",
    "make_sessionmaker",
    "ping",
    "transaction",
    "utcnow",
]
