"""History back-ends behind the `Store` protocol. SQLite is the one that ships."""

from ._base import Store, WriteBatch
from .sqlite import SQLiteStore, open_store

__all__ = ("SQLiteStore", "Store", "WriteBatch", "open_store")
