"""The database: engines and sessions, column types, and how writers are serialised."""

from broker.db.engine import make_engine, make_sessionmaker, ping, transaction
from broker.db.locks import advisory_xact_lock, serialise, sqlite_write_lock, try_serialise
from broker.db.types import UTCDateTime, utcnow

__all__ = [
    "UTCDateTime",
    "advisory_xact_lock",
    "make_engine",
    "make_sessionmaker",
    "ping",
    "serialise",
    "sqlite_write_lock",
    "transaction",
    "try_serialise",
    "utcnow",
]
